"""The README's and docs' commands and code, run as printed: an example that no longer runs fails the suite.

Every fenced block of README.md and docs/*.md is either checked here or named in NOT_RUN with the reason and the test
that does its work instead, so a new block needs a decision. Of the command blocks, every `pal ...` line's command
must exist and take every option the line names (`pal CMD --help`), every `make` target must exist, every shipped
config a line names must exist; JSON blocks parse as manifest lines; the README's Python blocks run verbatim in an
empty working directory. The demo and the `pal infer` line it prints run verbatim in test_demo.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from pal.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]

# A block no test runs verbatim, found by a line of it: why, and what covers it.
NOT_RUN = {
    'load_sslam("checkpoint_last.pt"': "needs a released SSLAM checkpoint and the user's clips, which cannot be "
                                       "downloaded here; test_sslam_checkpoint.py and test_ensemble.py make the "
                                       "same calls on official fixtures and generated clips",
    'AudioLLM.from_pretrained("runs/x/stage3-all/final")': "placeholders for a trained model, clips and questions; "
                                                           "test_inference_and_eval.py makes the same calls",
    'client = OpenAI(base_url="http://127.0.0.1:8000/v1"': "needs a running `pal serve`; test_serve.py makes this "
                                                           "call with the official client against one",
    "curl -s http://127.0.0.1:8000/v1/chat/completions": "needs a running `pal serve` on the full demo's model; "
                                                         "test_serve.py posts the same request over HTTP",
    "runs/demo/data/          clips": "a listing of what `make demo` writes; test_demo.py checks the smoke demo's",
    "python MMAU/evaluation.py --input": "the benchmark's own script, in its repository (not installable, not "
                                         "reachable here); test_benchmarks.py scores the exported file with its rule "
                                         "re-implemented",
    "my-model/config.json, model.safetensors": "a listing of what `pal export` writes; test_export.py checks an "
                                               "export's files and loads it",
    "torchrun --nnodes 2 --node_rank 0": "needs several machines; test_curriculum.py trains under torchrun with "
                                         "`-m pal train` in two local ranks",
}


def readme_blocks(documents: list[Path] = DOCUMENTS) -> list[tuple[str, str, str]]:
    """(language, "FILE:LINE", text) of every fenced block of the documents."""
    blocks = []
    for document in documents:
        language, start, lines = None, 0, []
        for number, line in enumerate(document.read_text().splitlines(), 1):
            if line.startswith("```"):
                if language is None:
                    language, start, lines = line[3:].strip() or "text", number, []
                else:
                    blocks.append((language, f"{document.relative_to(ROOT)}:{start}", "\n".join(lines)))
                    language = None
            elif language is not None:
                lines.append(line)
        assert language is None, f"{document.relative_to(ROOT)}:{start}: a block is never closed"
    return blocks


def reason_not_run(text: str) -> str | None:
    return next((why for key, why in NOT_RUN.items() if key in text), None)


def shell_commands() -> list[tuple[str, str]]:
    """Every command line of the documents' shell blocks (an indented line continues the command above it; comments
    dropped), with its block's "FILE:LINE"."""
    commands = []
    for language, start, text in readme_blocks():
        if language not in ("bash", "sh", "shell") or reason_not_run(text):
            continue
        for line in text.splitlines():
            code = line.split("  #")[0].rstrip().removesuffix("\\").rstrip()
            if line[:1].isspace() and commands:
                commands[-1] = (commands[-1][0], f"{commands[-1][1]} {code.strip()}")
            elif code:
                commands.append((start, code))
    return commands


def test_every_readme_block_is_run_or_says_why_not():
    blocks = readme_blocks()
    assert blocks, "the documents have no code blocks"
    for key in NOT_RUN:  # a stale entry is an error too
        assert sum(key in text for _, _, text in blocks) == 1, f"NOT_RUN names {key!r}, which no single block holds"
    for language, where, text in blocks:
        assert language in ("bash", "python", "json") or reason_not_run(text), \
            f"{where}: a ```{language} block: check it in this test or say in NOT_RUN why not"
        assert language != "python" or where.startswith("README.md") or reason_not_run(text), \
            f"{where}: a Python block outside the README: run it in this test or say in NOT_RUN why not"


def test_every_json_block_is_a_manifest_line():
    """The manifest lines the documents show parse and carry the fields a manifest needs."""
    from pal.data.manifest import TASKS

    lines = [(where, line) for language, where, text in readme_blocks() if language == "json"
             for line in text.splitlines() if line.strip()]
    assert lines
    for where, line in lines:
        row = json.loads(line)
        assert {"id", "audio", "task", "messages"} <= set(row) and row["task"] in TASKS, where
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"], where
        assert row["messages"][0]["content"].count("<audio>") == 1, where


def pal_words(command: str) -> tuple[list[str], list[str]]:
    """`pal data convert audiocaps|... INPUT --out M [--audio-dir D]` → (["data", "convert"], ["--out", ...])."""
    words = command.split()
    sub = []
    for word in words[1:]:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
            break
        sub.append(word)
    return sub, re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", command)


def test_every_pal_command_the_readme_prints_exists_with_every_option_it_names(capsys):
    lines = [(start, c) for start, c in shell_commands() if c.startswith("pal ")]
    assert lines, "the README prints no `pal` command"
    for start, command in lines:
        sub, options = pal_words(command)
        with pytest.raises(SystemExit) as done:
            main([*sub, "--help"])
        printed = capsys.readouterr()
        assert done.value.code == 0, f"{start}: `pal {' '.join(sub)} --help` failed: {printed.err[-500:]}"
        missing = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", printed.out)]
        assert not missing, f"{start}: `pal {' '.join(sub)}` takes no {missing} (`{command}`)"


def test_every_make_target_the_readme_names_exists():
    lines = [(start, c) for start, c in shell_commands() if re.match(r"(\w+=\S+ )*make ", c)]
    assert lines
    for start, command in lines:
        target = command.split("make ", 1)[1].split()[0]
        done = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True)
        assert done.returncode == 0, f"{start}: `make {target}`: {done.stderr}"


def test_every_other_command_is_known():
    """A command that is neither `pal` nor `make` has a test of its own; this keeps the list honest."""
    others = [c for _, c in shell_commands() if not c.startswith("pal ") and not re.match(r"(\w+=\S+ )*make ", c)]
    for command in others:
        assert command.startswith("torchrun --nproc_per_node 4 -m pal train --config "), command  # test_curriculum.py


def test_every_shipped_config_a_command_names_exists():
    from pal.common.typed_config import config_path

    named = [(where, name) for where, command in shell_commands() for name in re.findall(r"pal:[\w./-]+", command)]
    assert named
    for where, name in named:
        assert config_path(name).is_file(), f"{where}: {name}"


@pytest.mark.slow
def test_the_python_blocks_run_verbatim(tmp_path, monkeypatch):
    """Each Python block not in NOT_RUN, run as printed in an empty working directory (SmolLM2 loads for real)."""
    monkeypatch.chdir(tmp_path)
    ran = 0
    for language, where, text in readme_blocks([README]):
        if language != "python" or reason_not_run(text):
            continue
        namespace = {"__name__": where}
        exec(compile(text, where, "exec"), namespace)  # the README's own code
        ran += 1
    assert ran >= 1
