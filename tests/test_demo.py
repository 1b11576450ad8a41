"""`pal demo --preset smoke` end to end (dataset, SSLAM pre-training, features, three-stage curriculum, evaluation,
report) in a few minutes, run the way a new user runs it: the `pal` console script in a fresh working directory, the
default (relative) output folder, the default number of ranks and an empty `$PAL_HOME`. The report's numbers are
read back and compared with the run's own `pal eval` output, the `pal infer` line it prints at its end is run
verbatim, and a rerun resumes instead of redoing the work."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fill_with_users_files

from pal.cli.main import main

PAL = Path(sys.executable).parent / "pal"  # the console script `make setup` installs beside the interpreter
# What a launcher, a test run or an earlier command may have set, and a new user's shell has not.
NOT_A_NEWCOMERS = ("PAL_HOME", "PYTHONPATH", "OMP_NUM_THREADS", "DS_ACCELERATOR", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                   "MASTER_ADDR", "MASTER_PORT", "PAL_PRECISION")


def as_a_newcomer(args: list[str], cwd: Path, home: Path, timeout: int) -> subprocess.CompletedProcess:
    """`pal ARGS` as a new user types it: the console script, from `cwd`, with `home` as `$PAL_HOME`."""
    assert PAL.is_file(), f"{PAL} is missing: install the project (make setup) before running the suite"
    env = {k: v for k, v in os.environ.items() if k not in NOT_A_NEWCOMERS}
    if "PAL_PRECISION" in os.environ:  # the suite's forced numeric path (README, Testing) holds here too
        env["PAL_PRECISION"] = os.environ["PAL_PRECISION"]
    return subprocess.run([str(PAL), *args], cwd=cwd, env={**env, "PAL_HOME": str(home)}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """`pal demo --preset smoke` in a folder holding only the user's own `eval.py`, `common/` and `data/`, with an
    empty `$PAL_HOME`: its working directory, its home and what it printed."""
    cwd, home = fill_with_users_files(tmp_path_factory.mktemp("newcomer")), tmp_path_factory.mktemp("pal-home")
    done = as_a_newcomer(["demo", "--preset", "smoke"], cwd, home, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return cwd, home, done.stdout


@pytest.fixture(scope="module")
def smoke(newcomer):
    cwd, _, _ = newcomer
    return cwd / "runs" / "demo-smoke"  # the default output folder of the smoke preset, relative to where it ran


def test_a_newcomer_runs_the_demo_from_an_empty_folder_and_home(newcomer):
    """Two ranks (the default on 2 cores) read the run's config back from a file and convert the default LLM and
    Whisper-base at once: both once failed on a fresh machine, and neither shows in a warm home with absolute paths."""
    cwd, home, said = newcomer
    assert "[6/6] report: " in said and (cwd / "runs" / "demo-smoke" / "report.md").is_file()
    for folder in (home / "llm" / "SmolLM2-135M-Instruct", home / "whisper" / "base"):
        assert (folder / "config.json").is_file()
        assert stat.S_IMODE(folder.stat().st_mode) & 0o055 == 0o055, folder  # other users can read it
    assert not [p.name for p in home.rglob(".*-new-*")]  # no half-written conversion left behind


def test_the_demo_exports_its_model_with_its_encoders_and_scores(newcomer):
    cwd, _, said = newcomer
    model, results = cwd / "runs" / "demo-smoke" / "model", cwd / "runs" / "demo-smoke" / "eval" / "results.json"
    assert "The model, to take away: runs/demo-smoke/model " in said
    record = json.loads((model / "encoders.json").read_text())
    paths = {name: spec["path"] for name, spec in record["config"]["encoders"].items()}
    assert paths == {"sslam": "encoders/sslam", "whisper": "encoders/whisper"}  # inside the folder, nothing outside
    assert all((model / path / "model.safetensors").is_file() for path in paths.values())
    scores = json.loads(results.read_text())
    assert json.loads((model / "eval_results.json").read_text()) == scores
    caption = scores["tasks"]["caption"]
    row = f"| caption | {caption['n']} | CIDEr-D | {caption['metrics']['CIDEr-D']['value']:.3f} ["
    assert row in (model / "README.md").read_text()


def test_the_infer_line_the_demo_prints_runs_verbatim(newcomer):
    cwd, home, said = newcomer
    line = said.split("Ask the model: ", 1)[1].splitlines()[0]
    args = shlex.split(line)
    assert args[0] == "pal"
    done = as_a_newcomer(args[1:], cwd, home, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    # An answer, or the notice that the model answered nothing (the smoke model often does); what it says is the
    # evaluation's business, not this test's.
    empty = "pal: the model's answer is empty" in done.stderr
    assert bool(done.stdout.strip()) != empty, (done.stdout, done.stderr[-2000:])


def test_demo_smoke_writes_a_report_with_the_evaluations_numbers(smoke, capsys):
    from pal.eval.report import metric_cell

    result = json.loads((smoke / "eval" / "results.json").read_text())
    report = (smoke / "report.md").read_text()
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] in result["tasks"]:
            rows[cells[0], cells[1]] = cells
    assert {("qa", "accuracy"), ("classify", "accuracy"), ("caption", "CIDEr-D")} <= set(rows)
    for (task, name), cells in rows.items():
        metrics = result["tasks"][task]
        assert cells[3] == metric_cell(metrics["metrics"][name]), (task, name)
        # the controls: another clip's audio, the text-only trained model, audio removed
        assert cells[4] == metric_cell(metrics["mismatched_audio"].get(name)), (task, name)
        assert cells[5] == metric_cell(metrics["text_only_trained"].get(name)) != "–", (task, name)
        assert cells[6] == metric_cell(metrics.get("no_audio", {}).get(name)), (task, name)
        if "value" in metrics["metrics"][name]:
            assert re.fullmatch(r"-?\d+\.\d{3} \[-?\d+\.\d{3}, -?\d+\.\d{3}\]", cells[3])
    assert "audio-reliance gap" in report and "nats per answer token over the stages" in report
    # The encoders' probe, fitted on the training scenes and tested on the test split, and the classification's
    # fraction of its ceiling in the report (or why not).
    from pal.workflows.demo import probe_sentence

    probe = json.loads((smoke / "eval" / "probe.json").read_text())
    assert probe["test_clips"] == len({r["audio"] for r in map(json.loads, (smoke / "data" / "test.jsonl").read_text()
                                                               .splitlines()) if r["task"] == "classify"})
    assert probe_sentence(result) in report
    assert "presence with another clip's audio (control)" in report  # the goals, met or missed, controls included
    page = (smoke / "report.html").read_text()
    assert "data:image/png;base64," in page and page.count("<table>") >= 3  # self-contained: curves embedded
    for stage in ("stage1-connector", "stage2-closed-qa", "stage3-all"):
        assert (smoke / "curriculum" / stage / "final" / "encoders.json").is_file()
    assert (smoke / "sslam" / "encoder" / "model.safetensors").is_file()
    # The text-only baseline: the same stages on the same questions, none of them with audio (the connector-only
    # stage, which cannot change a model without audio, left out).
    text_only = json.loads((smoke / "curriculum-text-only.json").read_text())
    audio = json.loads((smoke / "curriculum.json").read_text())
    assert [(s["name"], s["steps"], s["batch_size"]) for s in text_only["stages"]] == \
        [(s["name"], s["steps"], s["batch_size"]) for s in audio["stages"] if s["trainable"] != ["connector"]]
    # Where the hearing stops: the validation hearing mAP after each stage, at the stages' cumulative steps.
    curve = json.loads((smoke / "eval" / "curve.json").read_text())
    assert [c["stage"] for c in curve] == ["stage1-connector", "stage2-closed-qa", "stage3-all"]
    assert [c["steps"] for c in curve] == list(np.cumsum([s["steps"] for s in audio["stages"]]))
    assert all(0 <= c["chance"] <= 1 and 0 <= c["hearing_mAP"] <= 1 for c in curve)
    assert "validation hearing mAP [95% CI]" in report
    # Where the time went: each step timed as it ran, in the report and in timings.json.
    times = json.loads((smoke / "timings.json").read_text())
    assert list(times) == ["dataset", "SSLAM pre-training", "features", "curriculum", "text-only baseline", "probe",
                           "evaluation", "fit check", "stage curve", "export", "total"]
    assert all(t >= 0 for t in times.values()) and sum(times.values()) - times["total"] <= times["total"]
    assert "## Where the time went" in report
    for stage in text_only["stages"]:
        for source in stage["data"]:
            assert all("audio" not in json.loads(line) and "<audio>" not in line
                       for line in open(source["manifest"]).read().splitlines())
    assert (smoke / "curriculum-text-only" / "stage2-all" / "final" / "config.json").is_file()


def test_the_fit_check_asks_training_scenes_and_the_report_sets_it_beside_the_test(smoke):
    from pal.eval.report import metric_cell

    rows = [json.loads(line) for line in (smoke / "data" / "fit.jsonl").read_text().splitlines()]
    tested = [json.loads(line) for line in (smoke / "data" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == sum(r["task"] == "classify" for r in tested) > 0
    assert all(r["split"] == "train" and r["task"] == "classify" for r in rows)
    trained = json.loads((smoke / "eval" / "fit.json").read_text())["tasks"]["classify"]["metrics"]["exact_set"]
    held_out = json.loads((smoke / "eval" / "results.json").read_text())["tasks"]["classify"]["metrics"]["exact_set"]
    assert trained["n"] == len(rows)
    assert (f"the exact label set of {len(rows)} training scenes {metric_cell(trained)}, of the held-out test scenes "
            f"{metric_cell(held_out)}") in (smoke / "report.md").read_text()


def test_the_report_gives_the_test_splits_reliance_gap_per_task(smoke):
    from pal.eval.report import metric_cell

    reliance = json.loads((smoke / "eval" / "results.json").read_text())["reliance"]
    section = (smoke / "report.md").read_text().split("## Which answers use the audio")[1].split("\n## ")[0]
    rows = {cells[0]: cells for line in section.splitlines() if line.startswith("|")
            for cells in [[c.strip() for c in line.strip("|").split("|")]] if len(cells) == 5}
    expected = {"all": reliance, **reliance["by_task"]}
    assert set(expected) <= set(rows) and len(expected) >= 3  # overall and the smoke test split's tasks
    for task, part in expected.items():
        assert rows[task] == [task, str(part["n"]), f"{part['answer_loss']:.3f}",
                              f"{part['answer_loss_mismatched']:.3f}", metric_cell(part["gap"])], task
        # the gap is the mean of the paired differences; the losses are float32 means
        assert abs(part["answer_loss_mismatched"] - part["answer_loss"] - part["gap"]["value"]) < 1e-4, task
    assert sum(reliance["by_task"][t]["n"] for t in reliance["by_task"]) == reliance["n"]


def test_the_long_preset_trains_every_stage_twice_as_long_with_its_text_only_baseline(smoke, tmp_path, monkeypatch):
    from pal.curriculum import command
    from pal.workflows.demo import PRESETS, step_curriculum

    data = tmp_path / "data"  # the smoke run's manifests (the text-only baseline writes its own beside them)
    data.mkdir()
    for manifest in (smoke / "data").glob("*.jsonl"):
        shutil.copy(manifest, data)
    trained = {}

    def record(config, nproc, yaml, resolved, advice, on_stage):
        trained[Path(config.out).name] = [(s.name, s.steps, s.epochs) for s in config.stages]
        return Path(config.out)

    monkeypatch.setattr(command, "train_in_ranks", record)
    for preset in ("full", "long"):
        out = tmp_path / preset
        for text_only in (False, True):
            step_curriculum(out, data, PRESETS[preset], None, tmp_path / "features", text_only)
        trained[preset] = trained.pop("curriculum"), trained.pop("curriculum-text-only")
    for full, long in zip(trained["full"], trained["long"]):  # the model's curriculum, then its text-only baseline
        assert [(name, 2 * steps, epochs) for name, steps, epochs in full] == long
    assert [s[1] for s in trained["full"][0]] == [128, 64, 64]  # the shipped recipe, for the README's numbers


def test_the_fit_sentence_tells_underfitting_from_not_generalising():
    from pal.workflows.demo import fit_sentence

    def result(accuracy: float) -> dict:
        return {"tasks": {"classify": {"metrics": {"exact_set": {"value": accuracy, "ci95": [0.0, 1.0], "n": 80}}}}}

    assert "underfits" in fit_sentence(result(0.475), result(0.438))
    assert "never heard" in fit_sentence(result(0.95), result(0.44))


def test_a_rerun_resumes_every_step(smoke, capsys):
    before = json.loads((smoke / "timings.json").read_text())
    assert main(["demo", "--preset", "smoke", "--out", str(smoke)]) == 0
    said = capsys.readouterr().out
    # The time each step's work took stays recorded: a rerun that finds it done adds about none (it once overwrote
    # the record with those near-zero times).
    after = json.loads((smoke / "timings.json").read_text())
    assert list(after) == list(before) and all(after[k] >= before[k] for k in before)
    assert after["curriculum"] - before["curriculum"] < 0.5 * before["curriculum"]
    assert "[1/6] dataset: " in said and "is there" in said
    assert "SSLAM: " in said and "evaluation: " in said and said.count("is there") >= 3
    assert "already finished with this config" in said


def test_a_folder_trained_by_another_recipe_says_what_to_do(smoke):
    """The smoke run's folder was trained with 4 clips a step in 1 or 2 ranks; asked again in 4 ranks (1 clip each),
    the stage hash differs, and the error names `pal demo`'s way out (it has no --restart) before anything trains."""
    from pal.workflows.demo import PRESETS, ensemble_config, step_curriculum

    with pytest.raises(ValueError, match=r"was trained with a different config.*For `pal demo`: delete"):
        step_curriculum(smoke, smoke / "data", PRESETS["smoke"], ensemble_config(smoke / "sslam" / "encoder"),
                        smoke / "features", nproc=4)
