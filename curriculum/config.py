"""The curriculum config: the model, then stages 1-3, each a YAML section (DESIGN.md "Curriculum").

    model:
      llm: models/Llama-3.2-1B          # a local HF causal-LM folder; "default" = the embedded SmolLM2-135M
      encoders: configs/encoders/pal-ensemble.yaml   # an ensemble YAML, or the mapping inline
      connector: {connector: pal, routes: {sslam: lal, clap: lal, whisper: plits}, lal_start_layer: 4}
      lora: {r: 8, alpha: 16, target_modules: [q_proj, k_proj, v_proj, o_proj]}
    stages:
      - name: connector
        data: [{manifest: data/cls_caption.jsonl, weight: 1.0}]
        trainable: [connector]
        ...

Typed dataclasses: an unknown key anywhere is an error naming it and the known keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from encoders.ensemble import EnsembleConfig
from encoders.typed_config import YamlConfig


@dataclass
class DataSource:
    manifest: str
    weight: float = 1.0  # sampling weight in the stage's mixture


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up, then cosine to min_lr
    min_lr: float = 0.0
    grad_clip: float = 1.0


@dataclass
class StageConfig:
    name: str
    data: list[DataSource]
    trainable: list[str]  # parameter groups (pal/trainable.py): connector, lora, llm, llm_attention, ...
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int | None = None  # optimizer steps; or
    epochs: float | None = None  # passes over the stage's data (steps derived from it)
    batch_size: int = 4  # examples per rank per micro-step
    gradient_accumulation_steps: int = 1
    precision: str = "bf16"  # bf16 | fp32
    deepspeed: str | None = "configs/deepspeed/zero2.json"
    zero_stage: int = 2  # 0-3
    val_manifest: str | None = None
    eval_every: int = 0  # validation loss and generated samples every N steps (0: at the end only)
    val_batches: int = 4
    num_samples: int = 2  # generated samples written at each evaluation
    checkpoint_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    group_by_length: bool = True

    def __post_init__(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of `steps` or `epochs`.")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"stage {self.name!r}: precision {self.precision!r}; expected 'bf16' or 'fp32'.")
        if not self.data:
            raise ValueError(f"stage {self.name!r}: `data` lists no manifest.")


@dataclass
class ModelConfig:
    llm: str = "default"
    encoders: str | dict | None = None  # ensemble YAML path or mapping
    connector: dict = field(default_factory=dict)  # PALConfig fields (encoder_dims come from the ensemble)
    lora: dict | None = None
    dtype: str = "float32"  # weights before DeepSpeed casts them (bf16 stages cast to bf16)

    def ensemble_config(self, base: Path | None = None) -> EnsembleConfig:
        if self.encoders is None:
            raise ValueError("model.encoders is missing: give an ensemble YAML path or an inline mapping.")
        if isinstance(self.encoders, dict):
            return EnsembleConfig.from_dict(self.encoders)
        path = Path(self.encoders)
        if not path.is_absolute() and base is not None and not path.exists():
            path = base / path
        return EnsembleConfig.from_yaml(path)


@dataclass
class CurriculumConfig(YamlConfig):
    model: ModelConfig
    stages: list[StageConfig]
    feature_cache: str | None = None  # a `pal features` folder: encoder tokens are read instead of computed
    seed: int = 0
    out: str = "runs/curriculum"

