"""The SSLAM pre-training recipe (`pal sslam pretrain`): stage 1 (EAT) or stage 2 (SSLAM) on DeepSpeed.

Lifecycle (torchtune's, `Recipe` in pal/training/lifecycle.py; `run()` calls the steps in order): `__init__(config)`
validates, `setup()` builds data, model, teacher and engine, `train()` runs and saves a checkpoint every N steps
(`checkpoint`), `save()` has the ranks finish together, `cleanup()` lets go of the engine and the data.

Features: one CPU process, torchrun or the deepspeed launcher over many GPUs; bf16 or fp32; ZeRO 1/2; background
loading (DataLoader workers); a progress bar; JSONL logs; atomic checkpoints (keep last k) and exact resume after a
kill (data order, masks, windows and decoder noise are functions of (seed, step, clip), so nothing else needs
restoring); unreadable audio skipped, counted and listed in `bad_files.jsonl`.

Randomness per clip, not per process: clip g of the global batch at step s gets the same masks and noise whatever the
number of ranks, so a 2-rank run equals a 1-rank run of the same global batch (stage 1; stage-2 mixtures pair clips
within each rank's batch, as the official code does per GPU).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pal.common.manifest_lines import audio_paths
from pal.common.safe_write import atomic_write_json, check_writable
from pal.common.typed_config import YamlConfig, bounded, path_field
from pal.encoders.audio import AudioError, load_audio
from pal.encoders.sslam.frontend import FrontendConfig, model_inputs
from pal.encoders.sslam.masking import inverse_block_mask
from pal.encoders.sslam.model import PRESETS, SSLAMConfig
from pal.encoders.sslam.pretraining import Draws, EMATeacher, ObjectiveConfig, SSLAMPretrainer, load_pretraining_weights
from pal.training.checkpointing import (
    CheckpointError,
    checkpoint_root,
    clear_run,
    has_checkpoints,
    load_latest_checkpoint,
    newest_intact,
    save_checkpoint,
    trainable_fp32_state,
)
from pal.training.engine import (
    JsonlLog,
    check_deepspeed_config,
    cosine_lr,
    deepspeed_config,
    param_groups,
    peak_memory_mb,
    reset_peak_memory,
    setup_distributed,
    slow_bf16_note,
)
from pal.training.lifecycle import Recipe
from pal.training.trackers import check_report_to, open_trackers


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


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def read_audio_manifest(path: str | Path) -> list[Path]:
    """JSONL (`{"audio": ...}` per line) or fairseq tsv (first line the root, then `relative<TAB>size`)."""
    path = Path(path)
    if path.suffix == ".tsv" and path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        root = Path(lines[0].strip())
        return [root / line.split("\t")[0] for line in lines[1:]]
    return audio_paths(path)


class ClipDataset(torch.utils.data.Dataset):
    """Clip g → (g, normalised log-mel [T, M] or None, error message or None)."""

    def __init__(self, paths: list[Path], frontend: FrontendConfig):
        self.paths, self.frontend = paths, frontend

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            waveform = load_audio(self.paths[index], min_samples=self.frontend.min_samples)
            spec, _ = model_inputs([waveform], self.frontend)
            return index, spec[0], None
        except AudioError as err:
            return index, None, str(err)


def collate(items):
    good = [(i, s) for i, s, _ in items if s is not None]
    bad = [(i, e) for i, _, e in items if e is not None]
    specs = torch.stack([s for _, s in good]) if good else None
    return [i for i, _ in good], specs, bad


class StepBatches(torch.utils.data.Sampler):
    """Index lists for this rank, step after step from `start_step`: a fresh permutation per epoch (seeded), each
    step's global batch cut into contiguous per-rank slices; the incomplete tail of an epoch is dropped."""

    def __init__(self, size: int, per_rank: int, rank: int, world: int, seed: int, start_step: int, steps: int):
        self.size, self.per_rank, self.rank, self.world = size, per_rank, rank, world
        self.seed, self.start_step, self.steps = seed, start_step, steps
        self.per_epoch = size // (per_rank * world)
        if self.per_epoch == 0:
            raise ValueError(f"{size} clips are fewer than one global batch of {per_rank * world}: add data.")

    def global_indices(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.per_epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        width = self.per_rank * self.world
        return order[within * width : (within + 1) * width].tolist()

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            glob = self.global_indices(step)
            yield glob[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


# ----------------------------------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------------------------------


class SSLAMPretrainRecipe(Recipe):
    def __init__(self, config: PretrainConfig, out: str | Path, resume: bool = False, restart: bool = False,
                 max_steps: int | None = None):
        self.config, self.out, self.resume, self.restart = config, Path(out), resume, restart
        if resume and restart:
            raise ValueError("--resume continues a run and --restart discards it: pass one of them.")
        self.max_steps = max_steps or config.optim.max_steps
        if config.objective.stage == 2 and config.data.batch_size < 2:
            raise ValueError("stage 2 mixes clips within a batch: data.batch_size must be at least 2.")
        if not config.data.manifest:
            raise ValueError("no training data: set data.manifest in the config or pass --manifest.")

    # -------------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        import deepspeed

        c = self.config
        self.rank, self.world = setup_distributed()
        torch.manual_seed(c.seed)
        self.encoder_config = c.model.build()
        self.frontend = FrontendConfig(target_length=c.data.target_length, norm_mean=c.data.norm_mean,
                                       norm_std=c.data.norm_std)
        self.model = SSLAMPretrainer(self.encoder_config, c.objective)
        self.teacher = EMATeacher(self.model.student, c.objective)
        self.start_step = 0
        if self.restart and self.rank == 0:
            clear_run(self.out)
        torch.distributed.barrier()
        if has_checkpoints(self.out) and not self.resume:
            raise ValueError(f"{self.out} holds checkpoints of an earlier run: pass --resume to continue it, or "
                             "--restart to start over.")
        if self.resume and not has_checkpoints(self.out):
            raise FileNotFoundError(f"--resume: {checkpoint_root(self.out)} holds no checkpoint to resume from.")
        if self.rank == 0:
            check_writable(self.out)
        if not self.resume and c.init:
            self._load_init(c.init)
        optimizer = torch.optim.AdamW(param_groups(self.model, c.optim.weight_decay, c.optim.decay_all_params),
                                      lr=c.optim.lr, betas=tuple(c.optim.betas), eps=c.optim.eps)
        ds = deepspeed_config(c.deepspeed.config, micro_batch=c.data.batch_size,
                              grad_accum=c.deepspeed.gradient_accumulation_steps, precision=c.deepspeed.precision,
                              zero_stage=c.deepspeed.zero_stage, grad_clip=c.optim.grad_clip)
        check_deepspeed_config(ds, f"DeepSpeed config {c.deepspeed.config or '(defaults)'}")
        note = slow_bf16_note(c.deepspeed.precision, "deepspeed")
        if note and self.rank == 0:
            print(f"pal sslam pretrain: {note}")
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, config=ds)
        if self.resume:
            tag_dir = load_latest_checkpoint(self.engine, self.out, self.rank)
            self.teacher.encoder.load_state_dict(load_file(tag_dir / "teacher.safetensors"))
            self.start_step = json.loads((tag_dir / "trainer_state.json").read_text())["step"]
        self.teacher.to(self.engine.device)
        paths = read_audio_manifest(c.data.manifest)
        self.sampler = StepBatches(len(paths), c.data.batch_size, self.rank, self.world, c.seed, self.start_step,
                                   self.max_steps * c.deepspeed.gradient_accumulation_steps)
        self.loader = torch.utils.data.DataLoader(
            ClipDataset(paths, self.frontend), batch_sampler=self.sampler, collate_fn=collate,
            num_workers=c.data.num_workers, persistent_workers=False,
        )
        trackers = (open_trackers(c.report_to, self.out, c.tracker_project or self.out.name, self.out.name, asdict(c),
                                  self.resume) if self.rank == 0 else [])
        self.log = JsonlLog(self.out / "log.jsonl", self.rank == 0, trackers)
        self.bad_log = self.out / f"bad_files.rank{self.rank}.jsonl"
        if self.rank == 0:
            atomic_write_json(self.out / "config.json", asdict(c))

    def _load_init(self, init: str) -> None:
        """Stage 2 starts from stage 1: a run folder of ours, or a released fairseq checkpoint."""
        path = Path(init)
        if has_checkpoints(path):
            tag_dir = newest_intact(path)
            if tag_dir is None:
                raise CheckpointError(f"--init {path}: no intact checkpoint in {checkpoint_root(path)}.")
            state = load_file(tag_dir / "student.safetensors")
            state.update({f"_ema.{k}": v for k, v in load_file(tag_dir / "teacher.safetensors").items()})
        else:
            from pal.encoders.sslam.checkpoint import read_state_dict, strip_prefix

            state = strip_prefix(read_state_dict(path, trust_checkpoint=self.config.trust_checkpoint)[0])
        load_pretraining_weights(self.model, self.teacher, state)

    # -------------------------------------------------------------------------------------------------------- draws
    def draws(self, step: int, clips: list[int]) -> tuple[Draws, random.Random]:
        """Masks and decoder noise per clip (functions of seed, step and clip); windows per rank batch."""
        o, c = self.config.objective, self.encoder_config
        grid = (self.frontend.target_length // c.patch_size, c.freq_patches)
        masks, noise = [], []
        views = 2 if o.stage == 2 else 1
        for g in clips:
            gen = torch.Generator().manual_seed(_seed(self.config.seed, step, g, "mask"))
            masks.append(inverse_block_mask(o.clones, grid, o.mask_prob, o.mask_prob_adjust, o.mask_block, gen))
        masks = torch.cat(masks)
        n_masked = int(masks[0].sum())
        for v in range(views):
            for g in clips:
                gen = torch.Generator().manual_seed(_seed(self.config.seed, step, g, "noise", v))
                noise.append(torch.randn(o.clones, n_masked, c.embed_dim, generator=gen) * o.decoder_noise_std)
        rng = random.Random(_seed(self.config.seed, step, tuple(clips), "windows"))
        starts = None
        if o.stage == 2:
            from pal.encoders.sslam.source_retention import draw_window_starts

            starts = draw_window_starts(self.frontend.target_length, o.mix_window, c.patch_size, rng)
        return Draws(masks=masks, window_starts=starts, noise=torch.cat(noise)), rng

    # -------------------------------------------------------------------------------------------------------- train
    def train(self) -> dict:
        c = self.config
        accum = c.deepspeed.gradient_accumulation_steps
        device = self.engine.device
        bad_total, last = 0, {}
        bar = tqdm(total=self.max_steps, initial=self.start_step, desc=f"sslam stage {c.objective.stage}",
                   disable=self.rank != 0, unit="step")
        micro = self.start_step * accum
        reset_peak_memory()
        since, clips_since = time.perf_counter(), 0  # throughput over each logging interval (this rank's clips)
        for clips, spec, bad in self.loader:
            step = micro // accum
            if bad:
                bad_total += len(bad)
                with open(self.bad_log, "a") as f:
                    for index, error in bad:
                        f.write(json.dumps({"step": step, "audio": str(self.loader.dataset.paths[index]),
                                            "error": error}) + "\n")
            lr = cosine_lr(step, c.optim.lr, c.optim.warmup_steps, c.optim.max_steps, c.optim.min_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            usable = spec is not None and (c.objective.stage == 1 or spec.shape[0] >= 2)
            if usable:
                clips_since += spec.shape[0]
                draws, _ = self.draws(step, clips)
                out = self.engine(spec.to(device), draws, self.teacher)
                self.engine.backward(out["loss"])
            else:  # every clip of this micro-batch was unreadable: keep ranks in step with a zero loss
                zero = sum(p.sum() * 0.0 for p in self.engine.module.parameters() if p.requires_grad)
                self.engine.backward(zero)
                out = None
            self.engine.step()
            micro += 1
            if micro % accum:
                continue
            decay = self.teacher.update(self.engine.module.student, step)
            if out is not None:
                last = {k: float(out[k].detach()) for k in ("loss", "loss_frame", "loss_utterance", "loss_srl") if k in out}
            if self.rank == 0:
                bar.update(1)
                bar.set_postfix(loss=f"{last.get('loss', float('nan')):.3f}")
            if (step + 1) % c.log_every == 0 or step + 1 == self.max_steps:
                rate = clips_since / (time.perf_counter() - since)
                self.log.write(step=step + 1, lr=lr, ema_decay=decay, bad_files=bad_total, **last,
                               rank_clips_per_s=rate, **peak_memory_mb())
                since, clips_since = time.perf_counter(), 0
            if (step + 1) % c.checkpoint.every == 0 or step + 1 == self.max_steps:
                self.checkpoint(step + 1)
        bar.close()
        self.log.close()
        return {"steps": self.max_steps, "bad_files": bad_total, **last}

    def checkpoint(self, step: int) -> Path:
        """Step `step`'s checkpoint: DeepSpeed's state plus the student's fp32 masters, the teacher and the encoder
        config (rank 0 writes them)."""

        def extra(tag_dir: Path):
            # fp32 masters of the trained tensors (not the bf16 engine copies), frozen ones as they are.
            names = [n for n, p in self.engine.module.named_parameters() if p.requires_grad]
            masters = trainable_fp32_state(self.engine, names, self.rank)
            if self.rank != 0:
                return
            student = {k: masters.get(f"student.{k}", v).detach().float().cpu().contiguous()
                       for k, v in self.engine.module.student.state_dict().items()}
            save_file(student, str(tag_dir / "student.safetensors"))
            teacher = {k: v.detach().cpu().contiguous() for k, v in self.teacher.encoder.state_dict().items()}
            save_file(teacher, str(tag_dir / "teacher.safetensors"))
            (tag_dir / "encoder_config.json").write_text(json.dumps(asdict(self.encoder_config)))
            (tag_dir / "trainer_state.json").write_text(json.dumps({"step": step, "seed": self.config.seed}))

        return save_checkpoint(self.engine, self.out, step, extra, self.config.checkpoint.keep_last, self.rank)

    def save(self) -> None:
        """The ranks finish together. What the run leaves is its last checkpoint, written by `train` at the last step,
        so nothing is left to write; no rank goes on (an export, the next stage) before the others are done."""
        torch.distributed.barrier()

    def cleanup(self) -> None:
        """Let go of the engine, model, teacher and data loader, so that the next recipe in this process (`pal demo`
        runs stage 1, then stage 2) does not hold them beside its own."""
        self.engine = self.optimizer = self.model = self.teacher = self.loader = self.sampler = None


def export_student(run: str | Path, out: str | Path) -> Path:
    """`pal sslam export`: the latest (or given) checkpoint's student encoder, without decoder, as safetensors plus a
    config.json that `load_sslam` reads directly."""
    run = Path(run)
    if (run / "student.safetensors").is_file():
        tag_dir = run
    else:
        tag_dir = newest_intact(run)
        if tag_dir is None:
            raise FileNotFoundError(f"{run} is neither a checkpoint folder nor a run folder with an intact checkpoint.")
    state = {k: v for k, v in load_file(tag_dir / "student.safetensors").items() if ".decoder." not in k}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text((tag_dir / "encoder_config.json").read_text())
    return out
