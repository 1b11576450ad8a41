"""`pal sslam pretrain`'s config (`PretrainConfig`, YAML with typed sections that reject unknown keys): the encoder
preset, the objective (stage 1 EAT or stage 2 SSLAM), the data, the optimiser, DeepSpeed, checkpoints and trackers.
The shipped configs are pal/configs/sslam/*.yaml."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from pal.common.typed_config import YamlConfig, bounded, path_field
from pal.encoders.sslam.model import PRESETS, SSLAMConfig
from pal.encoders.sslam.pretraining import ObjectiveConfig
from pal.training.trackers import check_report_to


@dataclass
class ModelSection:
    preset: str = "vitb"  # vitb | small | tiny
    overrides: dict = field(default_factory=dict)  # SSLAMConfig fields over the preset

    def build(self) -> SSLAMConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"model.preset = {self.preset!r}: expected one of {sorted(PRESETS)}.")
        return SSLAMConfig(**{**asdict(PRESETS[self.preset]), **self.overrides})


@dataclass
class DataSection:
    manifest: str | None = path_field(None)  # JSONL with {"audio": path} per line, or a fairseq tsv (first line: root)
    batch_size: int = bounded(12, ge=1)  # clips per rank per micro-step
    num_workers: int = bounded(2, ge=0)
    target_length: int = bounded(1024, ge=16)  # frames per clip (10.24 s); the first window of longer clips
    norm_mean: float = -4.268
    norm_std: float = bounded(4.569, gt=0)


@dataclass
class OptimSection:
    lr: float = bounded(5e-5, gt=0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = bounded(1e-8, gt=0)
    weight_decay: float = bounded(0.05, ge=0)
    # Official SSLAM decays every parameter (a fairseq quirk, docs/design.md#optimisation); False exempts biases and
    # norms.
    decay_all_params: bool = True
    warmup_steps: int = bounded(25000, ge=0)
    max_steps: int = bounded(200000, ge=1)
    min_lr: float = bounded(0.0, ge=0)
    grad_clip: float = bounded(4.0, ge=0)


@dataclass
class DeepSpeedSection:
    config: str | None = path_field(None)  # a DeepSpeed JSON (e.g. pal:deepspeed/zero2.json); None: DeepSpeed's defaults
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 where native, else fp32
    zero_stage: Literal[0, 1, 2] | None = None  # None: the file's zero_optimization.stage, else 2
    gradient_accumulation_steps: int = bounded(1, ge=1)


@dataclass
class CheckpointSection:
    every: int = bounded(1000, ge=1)
    keep_last: int = bounded(3, ge=0)  # 0 keeps every checkpoint


@dataclass
class PretrainConfig(YamlConfig):
    model: ModelSection = field(default_factory=ModelSection)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    init: str | None = path_field(None)  # stage 2: a stage-1 run folder, or a released fairseq .pt (student + _ema)
    trust_checkpoint: bool = False  # allow full unpickling of an `init` .pt that weights_only refuses
    log_every: int = bounded(10, ge=1)
    seed: int = bounded(0, ge=0)
    # Experiment trackers the log is copied to (tensorboard, wandb, mlflow; training/trackers.py); the JSONL log is
    # written either way. `tracker_project`: the W&B project and MLflow experiment (default: the output folder's name).
    report_to: list[str] = field(default_factory=list)
    tracker_project: str | None = None

    def __post_init__(self):
        check_report_to(self.report_to)
