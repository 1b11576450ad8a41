"""The SSLAM pre-training recipe (`pal sslam pretrain`): stage 1 (EAT) or stage 2 (SSLAM) on DeepSpeed.

Lifecycle (torchtune's, `Recipe` in pal/training/lifecycle.py; `run()` calls the steps in order): `__init__(config)`
validates, `setup()` builds data, model, teacher and engine, `train()` runs and saves a checkpoint every N steps
(`checkpoint`), `save()` has the ranks finish together, `cleanup()` lets go of the engine and the data.

Features: one CPU process, torchrun or the deepspeed launcher over many GPUs; bf16 or fp32; ZeRO 1/2; background
loading (DataLoader workers); a progress bar; JSONL logs; atomic checkpoints (keep last k) and exact resume after a
kill (data order, masks, windows and decoder noise are functions of (seed, step, clip), so nothing else needs
restoring); unreadable audio skipped, counted and listed in `bad_files.jsonl`.

What lives elsewhere: the config (config.py), the clips and their batches (data.py), `pal sslam export` (export.py),
the model and objectives (pal/encoders/sslam/), the DeepSpeed and checkpoint plumbing (pal/training/).

Randomness per clip, not per process: clip g of the global batch at step s gets the same masks and noise whatever the
number of ranks, so a 2-rank run equals a 1-rank run of the same global batch (stage 1; stage-2 mixtures pair clips
within each rank's batch, as the official code does per GPU).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pal.common.safe_write import atomic_write_json, check_writable
from pal.encoders.sslam.frontend import FrontendConfig
from pal.encoders.sslam.masking import inverse_block_mask
from pal.encoders.sslam.pretraining import Draws, EMATeacher, SSLAMPretrainer, load_pretraining_weights
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
    checked_deepspeed_config,
    cosine_lr,
    deepspeed_engine,
    peak_memory_mb,
    reset_peak_memory,
    setup_distributed,
    slow_bf16_note,
)
from pal.training.lifecycle import Recipe
from pal.training.trackers import open_trackers

from .config import PretrainConfig
from .data import ClipDataset, StepBatches, collate, read_audio_manifest


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
        ds = checked_deepspeed_config(c.deepspeed.config, f"DeepSpeed config {c.deepspeed.config or '(defaults)'}",
                                      micro_batch=c.data.batch_size, grad_accum=c.deepspeed.gradient_accumulation_steps,
                                      precision=c.deepspeed.precision, zero_stage=c.deepspeed.zero_stage,
                                      grad_clip=c.optim.grad_clip)
        note = slow_bf16_note(c.deepspeed.precision, "deepspeed")
        if note and self.rank == 0:
            print(f"pal sslam pretrain: {note}")
        self.engine, self.optimizer = deepspeed_engine(self.model, ds, lr=c.optim.lr, betas=c.optim.betas,
                                                       eps=c.optim.eps, weight_decay=c.optim.weight_decay,
                                                       decay_all=c.optim.decay_all_params)
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
