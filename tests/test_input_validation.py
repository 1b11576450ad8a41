"""Bad input found before training, each with its file, line or key path and what to do: manifest rules, lengths
against the LLM's context, config types and bounds, YAML syntax, relative paths resolved against the YAML."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import ROOT, curriculum_dict, train_in_process, write_yaml


def _turns(answer="Yes.", prompt="<audio>\nIs there a bell?"):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


@pytest.fixture
def clips(tmp_path):
    soundfile.write(tmp_path / "ok.wav", np.zeros(8000, dtype=np.float32), 16000)
    soundfile.write(tmp_path / "blip.wav", np.zeros(100, dtype=np.float32), 16000)  # 6.25 ms < one 25 ms frame
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "garbage.wav").write_bytes(b"not audio")
    return tmp_path


# Every manifest rule: (line content, the message expected for it). Line numbers follow the list order.
CASES = [
    ({"id": "good", "audio": "ok.wav", "task": "qa", "messages": _turns()}, None),
    ({"id": "a", "audio": "ok.wav", "messages": [{"role": "assistant", "content": "x"},
                                                  {"role": "user", "content": "<audio>"}]}, "roles"),
    ({"id": "b", "audio": "ok.wav", "messages": [{"role": "user", "content": "<audio>"},
                                                  {"role": "user", "content": "again"},
                                                  {"role": "assistant", "content": "x"}]}, "alternating"),
    ({"id": "c", "audio": "ok.wav", "messages": _turns(answer="  ")}, "are empty: there is no answer"),
    ({"id": "d", "audio": "ok.wav", "task": "translate", "messages": _turns()}, "task 'translate': expected one of"),
    ({"id": "good", "audio": "ok.wav", "messages": _turns()}, "duplicate id 'good' (first on line 1)"),
    ({"id": "e", "messages": _turns()}, "holds <audio> but the line has no \"audio\" file"),
    ({"id": "f", "audio": 7, "messages": _turns()}, "\"audio\" = 7: expected a path string"),
    ({"id": "g", "audio": "folder.wav", "messages": _turns()}, "is a folder, not an audio file"),
    ({"id": "h", "audio": "ok.wav", "messages": _turns(prompt="<audio> then <audio>")}, "holds 2 `<audio>`"),
    ({"id": "i", "audio": "blip.wav", "messages": _turns()}, "6.2 ms long, shorter than the 25 ms"),
    ({"id": "j", "audio": "garbage.wav", "messages": _turns()}, "not a readable audio file"),
    ({"id": "k", "audio": "missing.wav", "messages": _turns()}, "missing.wav does not exist"),
    ({"id": "l", "audio": "ok.wav", "messages": _turns(prompt="no placeholder")}, "no `<audio>` placeholder"),
    ({"id": "m", "messages": [{"role": "user", "content": "hi"}]}, "must be the assistant's answer"),
    (b'{"id": "n", "audio": "ok.wav", "messages": [{"role": "user", "content": "caf\xe9 <audio>"}]}',
     "not UTF-8 (byte 0xe9 at column"),
]


def test_every_manifest_rule_is_reported_with_its_line(clips):
    from pal.data.manifest import ManifestError, validate_manifest

    path = clips / "m.jsonl"
    with open(path, "wb") as f:
        for row, _ in CASES:
            f.write((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n")
    with pytest.raises(ManifestError) as err:
        validate_manifest(path, min_seconds=0.025)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{len(CASES) - 1} problem(s) in manifest {path}:"
    for number, (_, expected) in enumerate(CASES, start=1):
        found = [line for line in lines if line.startswith(f"{path}:{number}: ")]
        assert bool(found) == (expected is not None), (number, found)
        if expected:
            assert expected in found[0], (number, found[0])


def test_text_longer_than_the_context_is_rejected_or_truncated_with_its_line(curriculum_env, tmp_path):
    from transformers import AutoConfig

    from pal import PALConfig, PALProcessor
    from pal.data.manifest import ManifestError, check_lengths, validate_manifest
    from pal.llm import load_tokenizer

    long_answer = "word " * 300
    rows = [{"id": "short", "messages": _turns("Yes.", "Hi?")},
            {"id": "long-answer", "messages": _turns(long_answer, "Hi?")},
            {"id": "long-prompt", "messages": _turns("Yes.", long_answer)}]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    processor = PALProcessor(load_tokenizer(curriculum_env / "llm"), PALConfig(
        text_config=AutoConfig.from_pretrained(curriculum_env / "llm").to_dict(), encoder_dims={"sslam": 8}))
    examples = validate_manifest(path)
    with pytest.raises(ManifestError, match=r"2 example\(s\) longer than max_length = 100") as err:
        check_lengths(examples, processor, 100, "reject")
    assert f"{path}:2: " in str(err.value) and f"{path}:3: " in str(err.value)
    kept, notes = check_lengths(validate_manifest(path), processor, 100, "truncate")
    assert [e.id for e in kept] == ["short", "long-answer"]
    assert f"will be cut at the end: {path}:2" in notes[0] and f"prompt alone reaches max_length = 100: {path}:3" in notes[1]


def test_a_prompt_over_the_llm_context_stops_pal_train_before_training(curriculum_env, tmp_path):
    rows = [{"id": "long", "messages": _turns("Yes.", "word " * 1200)}]  # the tiny LLM has 1024 positions
    (tmp_path / "m.jsonl").write_text(json.dumps(rows[0]))
    config = curriculum_dict(curriculum_env, stages=1, val_manifest=None)
    config["stages"][0]["data"] = [{"manifest": str(tmp_path / "m.jsonl")}]
    with pytest.raises(ValueError, match=r"m.jsonl:1: \d+ tokens of text, over max_length 1024"):
        train_in_process(write_yaml(tmp_path / "c.yaml", config), tmp_path / "run")


# ----------------------------------------------------------------------------------------------------------------------
# Configs: types, bounds, YAML syntax, cross-checks against the LLM
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where,value,expected", [
    (("stages", 0, "optim", "lr"), "fast", r"stages\[0\].optim.lr = 'fast': expected a number"),
    (("stages", 0, "steps"), "ten", r"stages\[0\].steps = 'ten': expected an integer or null"),
    (("stages", 0, "batch_size"), 2.5, r"stages\[0\].batch_size = 2.5: expected an integer"),
    (("stages", 0, "batch_size"), 0, r"stages\[0\].batch_size = 0: expected an integer >= 1"),
    (("stages", 0, "checkpoint_every"), 0, r"stages\[0\].checkpoint_every = 0: expected an integer >= 1"),
    (("stages", 0, "steps"), -3, r"stages\[0\].steps = -3: expected an integer >= 1"),
    (("stages", 0, "optim", "lr"), -0.1, r"stages\[0\].optim.lr = -0.1: expected a number > 0"),
    (("seed",), "zero", r"seed = 'zero': expected an integer"),
    (("stages", 0, "data"), "train.jsonl", r"stages\[0\].data = 'train.jsonl': expected a list \(each a mapping\)"),
    (("stages", 0, "precision"), "fp16", r"stages\[0\].precision = 'fp16': expected one of \['auto', 'bf16', 'fp32'\]"),
    (("stages", 0, "zero_stage"), 4, r"stages\[0\].zero_stage = 4: expected one of \[0, 1, 2, 3\] or null"),
])
def test_bad_config_values_name_the_file_key_and_expectation(curriculum_env, tmp_path, where, value, expected):
    from pal.curriculum.config import CurriculumConfig

    config = curriculum_dict(curriculum_env, stages=1)
    node = config
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    path = write_yaml(tmp_path / "c.yaml", config)
    with pytest.raises(ValueError, match=f"{path}: {expected}" if where == ("seed",) else expected) as err:
        CurriculumConfig.from_yaml(path)
    assert str(path) in str(err.value)


def test_yaml_11_exponents_are_numbers_and_syntax_errors_name_the_line(curriculum_env, tmp_path):
    from pal.curriculum.config import CurriculumConfig

    config = curriculum_dict(curriculum_env, stages=1)
    config["stages"][0]["optim"]["lr"] = "1e-4"  # what YAML 1.1 hands us for an unquoted 1e-4
    assert CurriculumConfig.from_yaml(write_yaml(tmp_path / "c.yaml", config)).stages[0].optim.lr == 1e-4
    (tmp_path / "broken.yaml").write_text("model:\n  llm: x\n stages: [\n")
    with pytest.raises(ValueError, match=r"broken.yaml:3:\d+: not valid YAML"):
        CurriculumConfig.from_yaml(tmp_path / "broken.yaml")


@pytest.mark.parametrize("connector,expected", [
    ({"connector": "lal", "lal_config": {"start_layer": 5}},
     r"model.connector: lal_config.start_layer = 5: the LLM has 2 layers"),
    ({"connector": "lal", "lal_config": {"start_layer": 2}},
     r"no LLM layer receives LAL audio .* encoders \['sslam'\]"),
    ({"connector": "lal", "lal_config": {"layers": [1, 50]}}, r"model.connector: lal_config.layers = \[1, 50\]"),
    ({"connector": "lal", "lal_config": {"start": 1}},
     r"model.connector: lal_config: unknown key\(s\) \['start'\]; known keys: \[.*'start_layer'"),
    ({"connector": "lal", "lal_start_layer": 5}, r"model.connector: .*unknown PALConfig key\(s\) \['lal_start_layer'\]"),
])
def test_connector_settings_are_checked_against_the_llm_before_training(curriculum_env, tmp_path, connector,
                                                                        expected):
    config = curriculum_dict(curriculum_env, stages=1, val_manifest=None)
    config["model"]["connector"] = connector
    with pytest.raises(ValueError, match=expected):
        train_in_process(write_yaml(tmp_path / "c.yaml", config), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------------
# The shipped configs (pal:NAME) name their sibling configs inside the package and the user's files from the working
# directory; a user's own YAML resolves against its own folder
# ----------------------------------------------------------------------------------------------------------------------


def test_shipped_configs_name_the_users_files_from_the_working_directory(tmp_path, monkeypatch):
    from pal.common.typed_config import packaged_configs
    from pal.curriculum.config import CurriculumConfig
    from pal.encoders.ensemble import EnsembleConfig
    from pal.pretraining.config import PretrainConfig

    shipped = packaged_configs()
    monkeypatch.chdir(tmp_path)
    for path in sorted((shipped / "curriculum").glob("*.yaml")):
        config = CurriculumConfig.from_yaml(f"pal:curriculum/{path.name}")
        ensemble = config.model.ensemble_config()
        assert ensemble.encoders
        for stage in config.stages:
            assert stage.deepspeed is None or Path(stage.deepspeed).parent == shipped / "deepspeed", stage.deepspeed
            for source in stage.data:
                assert Path(source.manifest).is_relative_to(tmp_path), (path.name, source.manifest)
        assert config.model.llm == "default" or Path(config.model.llm).parent == tmp_path / "models"
    for path in sorted((shipped / "sslam").glob("*.yaml")):
        assert Path(PretrainConfig.from_yaml(f"pal:sslam/{path.name}").deepspeed.config).is_file()
    ensemble = EnsembleConfig.from_yaml("pal:encoders/pal-ensemble.yaml")
    assert ensemble.encoders["sslam"].path == os.path.join(tmp_path, "models", "SSLAM_pretrain", "checkpoint_last.pt")
    # A copy of one (`pal configs cp`) reads the user's files from its own folder, and still finds pal:deepspeed/...
    from pal.cli.main import main

    copy = tmp_path / "mine"
    copy.mkdir()
    assert main(["configs", "cp", "curriculum/llama3.2-1b-pal.yaml", str(copy / "run.yaml")]) == 0
    assert (copy / "llama3.2-1b-lal.yaml").is_file()  # its `base:`, which the copy needs beside it
    assert main(["configs", "cp", "curriculum/llama3.2-1b-pal.yaml", str(copy / "run.yaml")]) == 2  # never overwrites
    monkeypatch.chdir(ROOT)
    config = CurriculumConfig.from_yaml(copy / "run.yaml")
    assert Path(config.model.llm) == copy / "models" / "Llama-3.2-1B" and config.model.connector["connector"] == "pal"
    assert Path(config.stages[0].deepspeed) == shipped / "deepspeed" / "zero2.json"
    with pytest.raises(FileNotFoundError, match=r"curriculum/demo-full.yaml does not exist \(a config shipped with pal "
                                                r"is named pal:curriculum/demo-full.yaml\)"):
        CurriculumConfig.from_yaml("curriculum/demo-full.yaml")
    with pytest.raises(FileNotFoundError, match=r"pal:curriculum/nope.yaml: no config of that name ships with pal"):
        CurriculumConfig.from_yaml("pal:curriculum/nope.yaml")


def test_sslam_pretraining_runs_from_another_directory(tmp_path):
    """The shipped tiny.yaml names `pal:deepspeed/zero2.json`: it runs from any working directory."""
    from conftest import run_pal, tone

    rows = [{"audio": str(tone(tmp_path / f"c{i}.wav", 300 + 100 * i, seconds=2.6))} for i in range(4)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_pal("sslam", "pretrain", "--config", "pal:sslam/tiny.yaml", "--out", "run",
            "--manifest", str(tmp_path / "m.jsonl"), "--max-steps", "2", cwd=elsewhere)
    assert (elsewhere / "run" / "checkpoints" / "latest").read_text() == "step-00000002"
