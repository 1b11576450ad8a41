"""Experiment trackers: `report_to: [tensorboard, wandb, mlflow]` in the curriculum and SSLAM configs, through each
library's own client (torch's SummaryWriter, `wandb.init`, `mlflow.MlflowClient`). The JSONL log stays the source of
truth: a tracker gets a copy of the numbers of each record that carries a `step`.

accelerate's tracker classes wrap the same clients, but they log through accelerate's logger, which refuses to run
before an `Accelerator` or `PartialState` exists; our recipes run under DeepSpeed without either.

Each training folder (a curriculum stage, an SSLAM run) is one tracker run. `<folder>/trackers.json` records which
(the W&B run id, the MLflow run id and tracking URI, the last step logged), so that a resumed stage continues the same
run and `pal eval` can log its scores to the run that trained the model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import time
from pathlib import Path

from pal.common.safe_write import atomic_write_json

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name → the package it needs
RECORD = "trackers.json"


def check_report_to(names: list[str]) -> list[str]:
    """`names` if every one is a tracker we know, once; else a ValueError naming the value and the choices."""
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"report_to has {name!r}, which is not a tracker this toolkit knows; choose from "
                             f"{', '.join(TRACKERS)} (or leave report_to empty: the JSONL log is always written).")
    if len(set(names)) != len(names):
        raise ValueError(f"report_to {names} names a tracker twice.")
    return list(names)


def flatten(values: dict, numbers_only: bool = True, prefix: str = "") -> dict:
    """The leaves of a nested dict as {"a/b/c": value}: int/float ones (bools, strings, lists, None left out), or with
    `numbers_only=False` every scalar and short list (MLflow parameters are flat)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, numbers_only, name + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
        elif not numbers_only and len(str(value)) < 200:
            out[name] = value
    return out


class TensorBoard:
    """Scalars under `<folder>/tensorboard/` (event files that `tensorboard --logdir` reads)."""

    name = "tensorboard"

    def __init__(self, folder: Path, earlier: dict, project: str, run_name: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = str((folder / "tensorboard").resolve())
        self.writer = SummaryWriter(self.logdir)

    def log(self, numbers: dict, step: int) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()

    def identity(self) -> dict:
        return {"logdir": self.logdir}


class WandB:
    """A W&B run in project `project`, its files under `<folder>/wandb/`; W&B's own settings apply (WANDB_MODE=offline
    writes the files only, for `wandb sync` later)."""

    name = "wandb"

    def __init__(self, folder: Path, earlier: dict, project: str, run_name: str, config: dict):
        import wandb

        self.run = wandb.init(project=project, name=run_name, id=earlier.get("id") or secrets.token_hex(4),
                              resume="allow", dir=str(folder), config=config)

    def log(self, numbers: dict, step: int) -> None:
        self.run.log(numbers, step=step)

    def finish(self) -> None:
        self.run.finish()

    def identity(self) -> dict:
        return {"id": self.run.id, "dir": self.run.dir}


class MLflow:
    """An MLflow run in experiment `project`, at MLFLOW_TRACKING_URI or, when that is unset, in the SQLite store
    `mlflow.db` beside `folder` (MLflow 3 refuses its old file store); the config's leaves are its parameters."""

    name = "mlflow"

    def __init__(self, folder: Path, earlier: dict, project: str, run_name: str, config: dict):
        import mlflow

        self.uri = (earlier.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
                    or f"sqlite:///{(folder.parent / 'mlflow.db').resolve()}")
        self.client = mlflow.MlflowClient(self.uri)
        if earlier.get("run_id"):
            self.run_id = earlier["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in flatten(config, numbers_only=False).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, numbers: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in numbers.items()])

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)

    def identity(self) -> dict:
        return {"run_id": self.run_id, "tracking_uri": self.uri}


CLIENTS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def open_trackers(names: list[str], folder: Path, project: str, run_name: str, config: dict | None = None,
                  resume: bool = True) -> list:
    """One tracker per name for the training run in `folder` (call on rank 0 only), continuing the runs that
    `folder/trackers.json` records when there is one and `resume` (a resumed stage, `pal eval`'s scores).
    `project`: the W&B project and MLflow experiment; `run_name`: the run's name in them."""
    for name in names:
        package = TRACKERS[name]
        if importlib.util.find_spec(package) is None:
            raise ModuleNotFoundError(f"report_to: {name} needs the `{package}` package, which is not installed: "
                                      f"pip install {package} (or pip install 'pal-audio-llm[track]').")
    if not names:
        return []
    record = read_record(folder) if resume else {}
    trackers = [CLIENTS[name](folder, record.get(name, {}), project, run_name, config or {}) for name in names]
    record = ({"project": project, "run_name": run_name, "step": record.get("step", 0)}
              | {t.name: t.identity() for t in trackers})
    atomic_write_json(folder / RECORD, record)
    return trackers


def read_record(folder: Path) -> dict:
    path = folder / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def log_to_trackers(trackers: list, values: dict, step: int) -> None:
    numbers = flatten(values)
    if numbers:
        for tracker in trackers:
            tracker.log(numbers, step=step)


def close_trackers(trackers: list, folder: Path, step: int) -> None:
    """Finish the runs and note the last step logged (where `pal eval` puts its scores)."""
    for tracker in trackers:
        tracker.finish()
    if trackers:
        atomic_write_json(folder / RECORD, read_record(folder) | {"step": step})


def training_run_of(model_folder: str | Path) -> Path | None:
    """The training folder (with trackers.json) a model folder came from: a stage's `final/` sits in it."""
    model_folder = Path(model_folder)
    for folder in (model_folder, model_folder.parent):
        if (folder / RECORD).is_file():
            return folder
    return None


def log_eval_to_training_run(model_folder: str | Path, result: dict) -> list[str]:
    """Log `pal eval`'s numbers (each task's metrics and controls as `eval/<task>/...`, the reliance gap as
    `eval/reliance/...`) to the tracker runs that trained the model in `model_folder`, at the stage's last step.
    → the trackers' names (none when the model did not come from a tracked run, e.g. an export)."""
    folder = training_run_of(model_folder)
    if folder is None:
        return []
    record = read_record(folder)
    names = [name for name in TRACKERS if name in record]
    trackers = open_trackers(names, folder, record["project"], record["run_name"])
    tasks = result["tasks"] if isinstance(result.get("tasks"), dict) else {}  # `pal eval gap` lists names there
    values = {"eval": {**tasks, "reliance": result.get("reliance") or {}}}
    log_to_trackers(trackers, values, record.get("step", 0))
    close_trackers(trackers, folder, record.get("step", 0))
    return names


__all__ = ["TRACKERS", "check_report_to", "close_trackers", "log_eval_to_training_run", "log_to_trackers",
           "open_trackers"]
