"""The curriculum config: the model, then stages 1-3, each a YAML section (docs/design.md#curriculum).

    model:
      llm: ../../models/Llama-3.2-1B     # a local HF causal-LM folder; "default" = the embedded SmolLM2-135M
      encoders: ../encoders/pal-ensemble.yaml   # an ensemble YAML, or the mapping inline
      connector: {connector: pal, routes: {sslam: lal, clap: lal, whisper: plits}, lal_config: {start_layer: 4}}
      lora: {r: 8, alpha: 16, target_modules: [q_proj, k_proj, v_proj, o_proj]}
    stages:
      - name: connector
        data: [{manifest: ../../data/cls_caption.jsonl, weight: 1.0}]
        trainable: [connector]
        ...

Typed dataclasses: an unknown key, a value of the wrong type or out of range is an error naming the file, the key
path and what is expected (common/typed_config.py). Relative paths of inputs (LLM folder, encoders, manifests,
DeepSpeed JSON, feature cache) resolve against the folder of the YAML; `out` is an output and resolves against the
working directory, like `--out`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pal.common.typed_config import YamlConfig, bounded, path_field
from pal.encoders.ensemble import EnsembleConfig
from pal.training.trackers import check_report_to


@dataclass
class DataSource:
    manifest: str = path_field(None)
    weight: float = bounded(1.0, gt=0)  # times each example appears per epoch (0.5: a fresh half each epoch)

    def __post_init__(self):
        if self.manifest is None:
            raise ValueError("`manifest` is missing: give the path of a JSONL manifest.")


@dataclass
class OptimConfig:
    lr: float = bounded(1e-4, gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = bounded(1e-8, gt=0)
    warmup_steps: int = bounded(0, ge=0)  # linear warm-up, then cosine to min_lr
    min_lr: float = bounded(0.0, ge=0)
    grad_clip: float = bounded(1.0, ge=0)  # 0: no clipping

    def __post_init__(self):
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas = {self.betas}: expected two numbers in [0, 1).")
        if self.min_lr > self.lr:
            raise ValueError(f"optim.min_lr = {self.min_lr} is above optim.lr = {self.lr}.")


@dataclass
class StageConfig:
    name: str
    data: list[DataSource]
    trainable: list[str]  # parameter groups (pal/trainable.py): connector, lora, llm, llm_attention, ...
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int | None = bounded(None, ge=1)  # optimizer steps; or
    epochs: float | None = bounded(None, gt=0)  # passes over the stage's data (steps derived from it)
    batch_size: int = bounded(4, ge=1)  # examples per rank per micro-step
    gradient_accumulation_steps: int = bounded(1, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 where native, else fp32
    deepspeed: str | None = path_field(None)  # a DeepSpeed JSON (e.g. pal:deepspeed/zero2.json); None: DeepSpeed's defaults
    zero_stage: Literal[0, 1, 2, 3] | None = None  # None: the DeepSpeed file's zero_optimization.stage, else 2
    val_manifest: str | None = path_field(None)
    eval_every: int = bounded(0, ge=0)  # validation loss and generated samples every N steps (0: at the end only)
    val_batches: int = bounded(4, ge=1)
    num_samples: int = bounded(2, ge=0)  # generated samples written at each evaluation
    checkpoint_every: int = bounded(100, ge=1)
    keep_last: int = bounded(2, ge=0)  # 0 keeps every checkpoint
    log_every: int = bounded(10, ge=1)
    group_by_length: bool = True
    # Up to this many questions about one clip trained as one sequence, the shared prompt and audio once, each
    # question-answer a branch that sees only the prompt and itself (pal/packing.py: the same loss as separate
    # examples, at one prompt's cost). batch_size then counts sequences. 0: one example per sequence.
    pack_questions: int = bounded(0, ge=0)
    # Recompute each decoder layer's activations in the backward pass instead of keeping them: less memory, about
    # a third more compute (`pal bench curriculum` measures both).
    gradient_checkpointing: bool = False
    num_workers: int = bounded(2, ge=0)  # DataLoader processes reading audio and templating ahead of the step
    prefetch_factor: int = bounded(2, ge=1)  # micro-batches each worker prepares ahead

    def __post_init__(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of `steps` or `epochs`.")
        if not self.data:
            raise ValueError(f"stage {self.name!r}: `data` lists no manifest.")
        if not self.trainable:
            raise ValueError(f"stage {self.name!r}: `trainable` names no parameter group.")


@dataclass
class ModelConfig:
    llm: str = path_field("default", keep=("default",))
    encoders: str | EnsembleConfig | None = path_field(None)  # ensemble YAML path or the mapping inline
    connector: dict = field(default_factory=dict)  # PALConfig fields (encoder_dims come from the ensemble)
    lora: dict | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights before DeepSpeed casts them (bf16 stages: bf16)
    # Longest training sequence in tokens, audio placeholders included (None: the LLM's max_position_embeddings).
    max_length: int | None = bounded(None, ge=8)
    # An example over max_length: "reject" stops before training and lists the lines; "truncate" cuts the end
    # of the conversation (counted and reported; an example whose prompt alone is too long is skipped).
    too_long: Literal["reject", "truncate"] = "reject"
    # A row whose audio cannot be used (unreadable, empty, shorter than the encoders' shortest input), in a training
    # or validation manifest: "skip" sets it aside before training, with its manifest, line and reason in the stage's
    # bad_samples.manifest.jsonl, unless such rows are more than `max_bad_audio` of a manifest's rows (then the run
    # refuses to start: a wrong audio folder, not a few bad clips); "error" refuses the run on the first one. A clip
    # that fails later, while training, is skipped and counted either way.
    bad_audio: Literal["skip", "error"] = "skip"
    max_bad_audio: float = bounded(0.05, ge=0.0, le=1.0)

    def ensemble_config(self) -> EnsembleConfig:
        if self.encoders is None:
            raise ValueError("model.encoders is missing: give an ensemble YAML path or an inline mapping.")
        if isinstance(self.encoders, EnsembleConfig):
            return self.encoders
        if isinstance(self.encoders, dict):
            return EnsembleConfig.from_dict(self.encoders)
        return EnsembleConfig.from_yaml(self.encoders)


@dataclass
class CurriculumConfig(YamlConfig):
    model: ModelConfig
    stages: list[StageConfig]
    feature_cache: str | None = path_field(None)  # a `pal features build` folder: encoder tokens are read, not computed
    seed: int = bounded(0, ge=0)
    out: str = "runs/curriculum"
    # Experiment trackers each stage's log is copied to (tensorboard, wandb, mlflow; training/trackers.py); the JSONL
    # log is written either way. `tracker_project`: the W&B project and MLflow experiment (default: `out`'s name).
    report_to: list[str] = field(default_factory=list)
    tracker_project: str | None = None

    def __post_init__(self):
        check_report_to(self.report_to)
        if not self.stages:
            raise ValueError("`stages` is empty: give at least one stage.")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names {names} repeat: each stage needs its own name (it names its folder).")
