"""`report_to: [tensorboard, wandb, mlflow]`: a curriculum stage and an SSLAM run copy their JSONL log's numbers to
each tracker, read back here offline from what each library wrote (TensorBoard's event files through TensorBoard's
own reader, W&B's offline run file, MLflow's local store through its client); `pal eval` logs its scores to the run
that trained the model; an unknown tracker is an error that lists the choices."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml
from conftest import curriculum_dict, run_pal, train_in_process, write_jsonl, write_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode with its settings and caches in the test's folder: files written, nothing sent."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tensorboard(logdir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the event files, through TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def _wandb_history(run_file: Path) -> list[dict]:
    """The history rows of a W&B offline run file. Its layout: a 7-byte header (":W&B", magic 0xBEE1, version 0),
    then LevelDB's log format (32 KiB blocks; each piece behind a 7-byte header of crc32c, little-endian length and
    type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4) holding wandb_internal_pb2.Record messages. wandb 0.31 no longer
    ships a Python reader (its writer is the Go wandb-core), so the test reads the format itself."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", run_file
    pos, pieces, rows = 7, b"", []
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if room >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at a block's end
            pos += room
            continue
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def _mlflow(tracking_uri: str, run_id: str, key: str) -> dict[int, float]:
    from mlflow import MlflowClient

    return {m.step: m.value for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)}


def test_a_stage_reports_to_tensorboard_wandb_and_mlflow_and_eval_joins_its_run(curriculum_env, tmp_path,
                                                                                 offline_wandb):
    from pal.cli.main import main

    config = curriculum_dict(curriculum_env, stages=1, steps=6, log_every=2, eval_every=3)
    config["report_to"] = ["tensorboard", "wandb", "mlflow"]
    train_in_process(write_yaml(tmp_path / "c.yaml", config), tmp_path / "run")
    stage = tmp_path / "run" / "stage1-connector"
    log = _jsonl(stage / "log.jsonl")
    steps = [r for r in log if "loss" in r and "event" not in r]
    assert [r["step"] for r in steps] == [2, 4, 6]
    assert all(r["rank_examples_per_s"] > 0 and r["host_mb"] > 0 for r in steps)
    assert [r["step"] for r in log if "reliance_gap" in r and "event" not in r] == [3, 6]  # validation, with the gap
    record = json.loads((stage / "trackers.json").read_text())
    assert record["step"] == 6 and record["project"] == "run" and record["run_name"] == "run/stage1-connector"

    # TensorBoard: every number of every stepped JSONL record, at its step (float32 in the event file).
    board = _tensorboard(stage / "tensorboard")
    for row in log:
        if "step" not in row:
            continue
        for key, value in row.items():
            if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                assert board[key][row["step"]] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert {"loss", "lr", "rank_examples_per_s", "host_mb", "examples_per_s"} <= set(board)

    # W&B offline: the run's file holds the same losses at the same steps.
    (run_file,) = (stage / "wandb").glob(f"offline-run-*-{record['wandb']['id']}/run-{record['wandb']['id']}.wandb")
    history = {row["_step"]: row for row in _wandb_history(run_file)}
    for row in steps:
        assert history[row["step"]]["loss"] == pytest.approx(row["loss"], rel=1e-12)
        assert history[row["step"]]["lr"] == pytest.approx(row["lr"], rel=1e-12)

    # MLflow: the local store beside the stage folders (MLFLOW_TRACKING_URI unset).
    assert record["mlflow"]["tracking_uri"] == f"sqlite:///{(tmp_path / 'run' / 'mlflow.db').resolve()}"
    losses = _mlflow(record["mlflow"]["tracking_uri"], record["mlflow"]["run_id"], "loss")
    assert losses == pytest.approx({r["step"]: r["loss"] for r in steps}, rel=1e-12)

    # `pal eval score` on the stage's model logs its scores to the same tracker runs, at the stage's last step.
    rows = [json.loads(line) for line in (curriculum_env / "train.jsonl").read_text().splitlines()[:4]]
    manifest = write_jsonl(tmp_path / "eval.jsonl", [{**r, "audio": str(curriculum_env / r["audio"])} for r in rows])
    assert main(["eval", "score", "--model", str(stage / "final"), "--manifest", str(manifest),
                 "--out", str(tmp_path / "results.json"), "--max-new-tokens", "4"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    gap = result["reliance"]["gap"]["value"]
    board = _tensorboard(stage / "tensorboard")
    scored = {key: value for key, value in board.items() if key.startswith("eval/caption/")}
    assert scored and all(set(v) == {6} for v in scored.values())
    assert board["eval/caption/n"][6] == result["tasks"]["caption"]["n"]
    assert board["eval/reliance/gap/value"][6] == pytest.approx(gap, rel=1e-6)
    uri, run_id = record["mlflow"]["tracking_uri"], record["mlflow"]["run_id"]
    assert _mlflow(uri, run_id, "eval/reliance/gap/value") == pytest.approx({6: gap}, rel=1e-12)
    # Offline, W&B writes the resumed run to a second file of the same run id (`wandb sync` joins them).
    resumed = [path for path in (stage / "wandb").glob(f"offline-run-*-{record['wandb']['id']}/*.wandb")
               if path != run_file]
    rows = [row for path in resumed for row in _wandb_history(path)]
    assert [(row["_step"], row["eval/reliance/gap/value"]) for row in rows] == [(6, pytest.approx(gap, rel=1e-12))]


def test_an_sslam_run_reports_to_tensorboard(tmp_path, offline_wandb):
    import numpy as np
    import soundfile

    t = np.arange(int(16000 * 2.6)) / 16000
    for i in range(4):
        soundfile.write(tmp_path / f"c{i}.wav", (0.2 * np.sin(2 * np.pi * (200 + 150 * i) * t)).astype(np.float32),
                        16000)
    write_jsonl(tmp_path / "clips.jsonl", [{"audio": f"c{i}.wav"} for i in range(4)])
    config = yaml.safe_load((ROOT / "pal" / "configs" / "sslam" / "tiny.yaml").read_text())
    config["data"].update(manifest=str(tmp_path / "clips.jsonl"), batch_size=2, num_workers=0)
    config["optim"]["max_steps"] = 2
    config.update(log_every=1, report_to=["tensorboard"])
    write_yaml(tmp_path / "s.yaml", config)
    run_pal("sslam", "pretrain", "--config", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "sslam"))
    log = [r for r in _jsonl(tmp_path / "sslam" / "log.jsonl") if "loss" in r]
    board = _tensorboard(tmp_path / "sslam" / "tensorboard")
    assert [r["step"] for r in log] == [1, 2]
    for row in log:
        for key in ("loss", "lr", "rank_clips_per_s", "host_mb"):
            assert board[key][row["step"]] == pytest.approx(row[key], rel=1e-6), key


@pytest.mark.parametrize("config_kind", ["curriculum", "sslam"])
def test_an_unknown_tracker_is_an_error_naming_the_file_and_the_choices(config_kind, curriculum_env, tmp_path):
    from pal.curriculum.config import CurriculumConfig
    from pal.pretraining.config import PretrainConfig

    if config_kind == "curriculum":
        config, loader = curriculum_dict(curriculum_env, stages=1), CurriculumConfig
    else:
        config, loader = yaml.safe_load((ROOT / "pal" / "configs" / "sslam" / "tiny.yaml").read_text()), PretrainConfig
    config["report_to"] = ["tensorboard", "neptune"]
    path = write_yaml(tmp_path / "bad.yaml", config)
    with pytest.raises(ValueError) as err:
        loader.from_yaml(path)
    message = str(err.value)
    assert str(path) in message and "'neptune'" in message and "tensorboard, wandb, mlflow" in message


def test_a_tracker_whose_package_is_missing_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    from pal.training import trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"report_to: wandb needs the `wandb` package.*pip install wandb"):
        trackers.open_trackers(["tensorboard", "wandb"], tmp_path, "p", "r")
    assert not (tmp_path / "trackers.json").exists()  # nothing opened before the check


def test_eval_keeps_its_results_when_the_training_runs_tracker_cannot_be_reached(tmp_path, monkeypatch, capsys):
    """`pal eval` on a machine without the run's tracker package: a warning, not a failed command."""
    import importlib.util
    from types import SimpleNamespace

    from pal.cli.eval import _log_to_training_run

    stage = tmp_path / "stage1-connector"
    (stage / "final").mkdir(parents=True)
    (stage / "trackers.json").write_text(json.dumps({"project": "p", "run_name": "r", "step": 3, "wandb": {"id": "x"}}))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    _log_to_training_run(SimpleNamespace(folder=stage / "final"), {"tasks": {}, "reliance": None})
    err = capsys.readouterr().err
    assert "were not logged to the training run's trackers" in err and "pip install wandb" in err
