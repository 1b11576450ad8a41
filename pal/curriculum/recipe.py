"""The three-stage curriculum recipe (`pal train`): one class, the same code for every stage; stages differ in data.

Lifecycle (torchtune's, `Recipe` in pal/training/lifecycle.py: `run()` is setup, train, save, cleanup): `setup()`
checks everything every stage will need before any training (`preflight`), then `train()` runs each stage
(`run_stage`: set up, train, end): build the model (stage 1: the LLM plus fresh connectors; later stages: the previous
stage's `final/`, loaded before DeepSpeed wraps the model), select the trainable groups, wrap with DeepSpeed (bf16 or
fp32, ZeRO 0-3), train in train mode with warm-up + cosine, evaluate (validation loss and generated samples),
checkpoint every N steps (trainable tensors and optimizer state only, atomically, keep last k;
training/checkpointing.py), and write `<out>/stage<k>-<name>/final` (save_pretrained) from the fp32 master weights.

Exact resume: batches are a function of (seed, stage, step), also mid-epoch (pal/curriculum/stage_data.py);
DeepSpeed restores weights and optimizer state from the newest intact checkpoint. Samples that fail at run time are
skipped, counted and listed with manifest, line, id and reason in `bad_samples.rank*.jsonl`. ZeRO-3: a batch without
audio still goes through the connectors (with masked-out audio), and a batch whose examples were all skipped repeats the
last good one with zero weight, so every rank calls the same modules in the same order and none hangs (a known failure
of peer projects).

What lives elsewhere: the run folder and its records (run_folder.py), the checks before any step (preflight.py), the
stage's data (stage_data.py), its validation and plots (validation.py), the config (config.py), the DeepSpeed and
checkpoint plumbing (pal/training/). The lifecycle is one class read top to bottom: set-up, then each stage's set-up,
loop and hand-off.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pal import PALForConditionalGeneration, PALProcessor, set_trainable
from pal.audio_norm import AudioFeatureNorm
from pal.common.safe_write import atomic_folder, atomic_write_json, atomic_write_text, check_writable, disk_errors
from pal.common.typed_config import with_absolute_paths
from pal.encoders.ensemble import AudioEncoderEnsemble
from pal.encoders.identity import write_ensemble_record
from pal.modeling_pal import cast_unpartitioned
from pal.processing_pal import to_device
from pal.training.checkpointing import (
    CheckpointError,
    clear_run,
    load_latest_checkpoint,
    newest_intact,
    save_checkpoint,
    tag_step,
    trainable_fp32_state,
)
from pal.training.engine import JsonlLog, cosine_lr, deepspeed_engine, peak_memory_mb, reset_peak_memory, setup_distributed
from pal.training.lifecycle import Recipe
from pal.training.trackers import open_trackers

from .config import CurriculumConfig, StageConfig
from .preflight import Plan, preflight
from .run_folder import STAGE_RECORD, RunFolder
from .stage_data import stage_loader
from .validation import deafness_warning, plot_losses, validate_stage

AUDIO_NORM_CLIPS = 256  # training clips the feature standardisation is fitted on (pal/audio_norm.py)


@dataclass
class StageRun:
    """One stage in training: what `setup_stage` builds, `train_stage` advances and `end_stage` reports."""

    k: int  # the stage's index (stage k + 1 to the user)
    stage: StageConfig
    dir: Path  # <out>/stage<k+1>-<name>
    engine: object  # the DeepSpeed engine around the model
    optimizer: torch.optim.Optimizer
    processor: PALProcessor  # training batches (its counts: rows truncated, long clips)
    val_processor: PALProcessor  # validation batches (its own counts)
    zero3: bool
    log: JsonlLog
    trainable_names: list[str]
    start: int  # the first step this process runs (after a resume: the checkpoint's)
    total: int  # the stage's steps
    stop: int  # where this process stops (`max_steps` can stop early)
    examples: int = 0  # question-answer examples trained on by this rank
    tokens: int = 0
    train_s: float = 0.0
    bad_samples: int = 0
    last_loss: float = float("nan")


class CurriculumRecipe(Recipe):
    def __init__(self, config: CurriculumConfig, out: str | Path | None = None, stage: int | None = None,
                 resume: bool = False, restart: bool = False, max_steps: int | None = None,
                 source: str | Path | None = None):
        # Relative paths mean the working directory: made absolute once, so the stage hashes, the run's record and
        # a config handed to other ranks through a file all name the same files.
        self.config = with_absolute_paths(config)
        self.out = Path(os.path.abspath(out or config.out))
        self.config.out = str(self.out)
        self.resume, self.restart, self.max_steps = resume, restart, max_steps
        self.source = str(source or "the curriculum config")  # named in errors
        if resume and restart:
            raise ValueError("--resume continues a run and --restart discards it: pass one of them.")
        if stage is not None and not 1 <= stage <= len(config.stages):
            raise ValueError(f"--stage {stage}: this curriculum has stages 1..{len(config.stages)}.")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"--max-steps {max_steps}: expected an integer >= 1.")
        self.stages = [stage - 1] if stage is not None else list(range(len(config.stages)))
        self.folder = RunFolder(self.config, self.out)
        self.plan: Plan | None = None  # `setup`'s

    # ----------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Distributed state, the encoders (their widths configure the connectors) and the feature cache, then
        `preflight` over every stage, and each stage's state (a stage that will train again makes the finished
        ones after it stale: refused)."""
        self.rank, self.world = setup_distributed()
        ensemble_config = self.config.model.ensemble_config()
        self.cache = None
        if self.config.feature_cache:
            from pal.encoders.feature_cache import FeatureCache

            self.cache = FeatureCache(self.config.feature_cache, ensemble_config)
        # The ensemble is built either way: its dims configure the connectors (presets are cheap; real weights load
        # once). With a feature cache it never encodes.
        self.ensemble = AudioEncoderEnsemble(ensemble_config)
        self.plan = preflight(self.config, self.stages, self.folder, self.ensemble, self.cache, self.rank, self.world,
                              self.source)
        if self.rank == 0:
            for note in self.plan.notes:
                print(f"pal train: {note}")
        self.states = {k: self.folder.stage_state(k, self.resume, self.restart, self.world) for k in self.stages}
        redo = [k for k in self.stages if self.states[k] != "finished"]
        stale = [k for k in self.stages if redo and k > redo[0] and self.states[k] != "new"]
        if stale:
            names = [self.folder.stage_dir(k).name for k in stale]
            raise ValueError(f"stage {redo[0] + 1} will train again, so what {names} learned from it would be stale: "
                             "pass --restart to retrain them too, or choose another --out.")
        if self.rank == 0:
            check_writable(self.out)
            atomic_write_json(self.out / "curriculum.json", asdict(self.config))

    # ----------------------------------------------------------------------------------------------------- model
    def build_model(self, k: int, zero3: dict | None = None) -> PALForConditionalGeneration:
        """Stage 1: the LLM with fresh connectors; stage k > 1: the consolidated fp32 weights of stage k − 1.

        `zero3`: a DeepSpeed config with ZeRO stage 3. Every checkpoint is then loaded under `deepspeed.zero.Init`
        (Hugging Face's loader, given this config): each rank keeps only its slice of each parameter from the moment
        it exists, one checkpoint tensor gathered at a time, so no rank holds the whole LLM. Stage 1's fresh
        connectors and adapters (a small share) are built whole, exactly as without ZeRO-3 (same random draws), and
        partitioned by `deepspeed.initialize`."""
        if zero3 is None:
            return self._build_model(k)
        from transformers.integrations import HfDeepSpeedConfig

        hf_zero3 = HfDeepSpeedConfig(zero3)  # while it lives, from_pretrained loads into partitioned parameters
        try:
            model = self._build_model(k)
        finally:
            del hf_zero3  # later plain builds (final/ on rank 0) must not see ZeRO-3
        cast_unpartitioned(model, torch.bfloat16 if zero3.get("bf16", {}).get("enabled") else torch.float32)
        return model

    def _build_model(self, k: int) -> PALForConditionalGeneration:
        if k == 0:
            m = self.config.model
            model = PALForConditionalGeneration.from_llm(
                m.llm, encoder_dims=self.ensemble.dims, lora=m.lora,
                dtype=getattr(torch, m.dtype), seed=self.config.seed, **m.connector,
            )
            if model.audio_norm is not None:
                self.fit_audio_norm(model)
            return model
        previous = self.folder.stage_dir(k - 1) / "final"
        if not (previous / "config.json").is_file():
            raise FileNotFoundError(f"stage {k + 1} starts from {previous}, which does not exist: run stage {k} first.")
        return PALForConditionalGeneration.from_pretrained(previous, dtype=torch.float32)

    def fit_audio_norm(self, model: PALForConditionalGeneration) -> None:
        """Stage 1's feature standardisation (pal/audio_norm.py), fitted on the features of up to AUDIO_NORM_CLIPS
        distinct training clips, in the stage's epoch-0 order, and kept in stage 1's folder so that every build of
        the model (the engine's, final/'s, a resumed run's, on every rank) reads the same statistics."""
        path = self.folder.stage_dir(0) / "audio_norm.safetensors"
        if path.is_file():
            periods = self.ensemble.window_tokens()
            model.audio_norm, model.config.audio_norm_positions = AudioFeatureNorm.from_statistics(
                path, model.config.encoder_dims, periods)
            model.config.audio_norm_periods = periods or None
            return
        data, seen, clips = self.plan.data[0], set(), []
        for index in data.epoch(0).reshape(-1):
            example = data[int(index)]
            example = example[0] if isinstance(example, list) else example  # a packed group: one clip
            if example.audio is not None and example.audio not in seen:
                seen.add(example.audio)
                clips.append(example)
            if len(clips) == AUDIO_NORM_CLIPS:
                break
        processor = PALProcessor(self.folder.tokenizer(0), model.config, ensemble=self.ensemble, cache=self.cache)
        batches = [processor.prepared_audio(processor.prepare(clips[i : i + 16])) for i in range(0, len(clips), 16)]
        model.fit_audio_norm([b for b in batches if b is not None], self.ensemble.window_tokens())
        if self.rank == 0:
            with disk_errors(path):
                model.audio_norm.save_statistics(path)

    # ---------------------------------------------------------------------------------------------------- stages
    def train(self) -> list[dict]:
        """Each stage in turn, a finished one skipped → their summaries (each writes its `final/` as it ends)."""
        results = []
        for k in self.stages:
            state = self.states[k]
            if state == "finished":
                results.append({"stage": k + 1, "skipped": "already finished with this config"})
                continue
            if self.restart and self.rank == 0:
                clear_run(self.folder.stage_dir(k))
            torch.distributed.barrier()
            results.append(self.run_stage(k, resume=state == "started"))
        return results

    # ---------------------------------------------------------------------------------------------------- stage
    def run_stage(self, k: int, resume: bool = False) -> dict:
        """Stage k's lifecycle: set up (model, data, DeepSpeed, resume), train, end (figures, `final/`)."""
        run = self.setup_stage(k, resume)
        self.train_stage(run)
        return self.end_stage(run)

    def setup_stage(self, k: int, resume: bool) -> StageRun:
        """Record the stage, build its model and trainable groups, its processors and DeepSpeed engine; resume from
        the newest intact checkpoint when asked."""
        stage: StageConfig = self.config.stages[k]
        stage_dir = self.folder.stage_dir(k)
        if self.rank == 0:
            check_writable(stage_dir)
            self.folder.write_stage_record(k, resume, self.world)
            set_aside = stage_dir / "bad_samples.manifest.jsonl"  # rows bad_audio: skip kept out of this stage
            if self.plan.set_aside[k]:
                atomic_write_text(set_aside, "".join(json.dumps(row) + "\n" for row in self.plan.set_aside[k]))
            else:
                set_aside.unlink(missing_ok=True)
        zero3 = self.plan.ds_configs[k]["zero_optimization"]["stage"] == 3
        model = self.build_model(k, self.plan.ds_configs[k] if zero3 else None)
        counts = set_trainable(model, stage.trainable)
        if stage.gradient_checkpointing:  # non-reentrant: LAL's audio keys/values reach the recomputed layers as kwargs
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        processor = PALProcessor(self.folder.tokenizer(k), model.config, padding_side="right", ensemble=self.ensemble,
                                 cache=self.cache, max_length=self.plan.max_length, too_long=self.config.model.too_long)
        total = stage.steps or max(1, math.ceil(stage.epochs * self.plan.data[k].batches_per_epoch
                                                / stage.gradient_accumulation_steps))

        # How much of the LLM this rank held once it was built: under ZeRO-3 a 1/world slice of each tensor.
        llm = [p for n, p in model.named_parameters() if n.startswith("llm.") and ".lora_" not in n]
        built = {"llm_elements_here": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in llm),
                 "llm_elements": sum(getattr(p, "ds_numel", p.numel()) for p in llm)}
        engine, optimizer = deepspeed_engine(model, self.plan.ds_configs[k], lr=stage.optim.lr, betas=stage.optim.betas,
                                             eps=stage.optim.eps, weight_decay=stage.optim.weight_decay,
                                             decay_all=False)
        start = tag_step(load_latest_checkpoint(engine, stage_dir, self.rank).name) if resume else 0
        engine.train()  # from_pretrained returns eval mode: dropout (LoRA's included) must be on from the first step
        trackers = open_trackers(self.config.report_to, stage_dir, self.config.tracker_project or self.out.name,
                                 f"{self.out.name}/{stage_dir.name}", asdict(self.config), resume) if self.rank == 0 else []
        log = JsonlLog(stage_dir / "log.jsonl", self.rank == 0, trackers)
        if self.rank == 0 and start == 0:
            log.write(event="start", stage=k + 1, name=stage.name, trainable=counts, total_steps=total,
                      world_size=self.world, notes=self.plan.notes, built=built,
                      gradient_checkpointing=model.is_gradient_checkpointing)
        return StageRun(k=k, stage=stage, dir=stage_dir, engine=engine, optimizer=optimizer, processor=processor,
                        val_processor=processor.with_settings(), zero3=zero3, log=log,
                        trainable_names=[n for n, p in model.named_parameters() if p.requires_grad],
                        start=start, total=total, stop=min(total, self.max_steps) if self.max_steps else total)

    def train_stage(self, run: StageRun) -> None:
        """The steps from `run.start` to `run.stop`: warm-up + cosine LR, gradient accumulation, logs, evaluation
        and checkpoints at their intervals."""
        stage, accum = run.stage, run.stage.gradient_accumulation_steps
        # Workers prepare the micro-batches ahead of the step; global batch g = step · accum + micro.
        batches = iter(stage_loader(self.plan.data[run.k], run.processor, run.start * accum, run.stop * accum, self.rank,
                                    stage.batch_size, stage.num_workers, stage.prefetch_factor))
        self.last_batch, self.last_val = None, {}
        reset_peak_memory()
        since = (run.examples, run.train_s)  # throughput over each logging interval (this rank's examples)
        bar = tqdm(total=run.stop, initial=run.start, desc=f"stage {run.k + 1} ({stage.name})",
                   disable=self.rank != 0, unit="step")
        for step in range(run.start, run.stop):
            torch.manual_seed(self.config.seed * 1_000_003 + run.k * 100_003 + step)  # dropout: same draws on resume
            lr = cosine_lr(step, stage.optim.lr, stage.optim.warmup_steps, run.total, stage.optim.min_lr)
            for group_ in run.optimizer.param_groups:
                group_["lr"] = lr
            losses, started = [], time.perf_counter()
            for _ in range(accum):
                batch, bad = run.processor.collate(next(batches))
                if bad:
                    run.bad_samples += len(bad)
                    self.report_bad(run.dir, step, bad)
                if batch is not None:
                    run.examples += batch["examples"]
                    run.tokens += int(batch["input_ids"].numel())
                loss = self.micro_step(run.engine, batch)
                run.engine.backward(loss)
                run.engine.step()
                losses.append(float(loss.detach()))
            run.last_loss = sum(losses) / len(losses)
            run.train_s += time.perf_counter() - started  # the training steps alone (data wait included)
            done = step + 1
            if self.rank == 0:
                bar.update(1)
                bar.set_postfix(loss=f"{run.last_loss:.3f}")
            if done % stage.log_every == 0 or done == run.stop:
                rate = (run.examples - since[0]) / max(run.train_s - since[1], 1e-9)
                run.log.write(step=done, lr=lr, loss=run.last_loss, bad_samples=run.bad_samples, **run.processor.counts,
                              rank_examples_per_s=rate, **peak_memory_mb())
                since = (run.examples, run.train_s)
            if self.plan.val_data[run.k] is not None and ((stage.eval_every and done % stage.eval_every == 0)
                                                     or done == run.stop):
                self.last_val = validate_stage(run, self.plan.val_data[run.k], done, self.micro_step, self.rank,
                                               self.world) or self.last_val
            if done % stage.checkpoint_every == 0 or done == run.stop:
                self.checkpoint(run, done)
        bar.close()

    def end_stage(self, run: StageRun) -> dict:
        """Throughput, memory and the last validation in the log's `end` event (a warning if the model does not use
        the audio); `final/` once the stage has run all its steps. → the stage's summary."""
        k, stage = run.k, run.stage
        if run.stop > run.start:  # what `pal compare` reports: the throughput of all ranks, this rank's memory peak
            # Question-answer examples (a packed sequence holds several) and token positions (padding included),
            # summed over the ranks, per second of rank 0's training time.
            counts = torch.tensor([run.examples, run.tokens], dtype=torch.float64)
            if self.world > 1:
                torch.distributed.all_reduce(counts)
            examples, tokens = int(counts[0]), int(counts[1])
            run.log.write(event="end", step=run.stop, examples=examples, examples_per_s=examples / run.train_s,
                          tokens_per_s=tokens / run.train_s, ranks=self.world, **peak_memory_mb(), **self.last_val)
            warning = deafness_warning(self.last_val)
            if warning:
                run.log.write(event="warning", step=run.stop, warning=warning)
                if self.rank == 0:
                    print(f"stage {k + 1} ({stage.name}): warning: {warning}")
        run.log.close()
        if run.stop == run.total:
            self.finish(k, run.dir, run.processor)
        if run.bad_samples and self.rank == 0:
            print(f"stage {k + 1}: {run.bad_samples} sample(s) skipped; see {run.dir}/bad_samples.rank*.jsonl")
        if self.plan.set_aside[k] and self.rank == 0:
            print(f"stage {k + 1}: {len(self.plan.set_aside[k])} manifest row(s) with audio that cannot be used were set "
                  f"aside before training; see {run.dir}/bad_samples.manifest.jsonl")
        return {"stage": k + 1, "name": stage.name, "steps": run.stop, "loss": run.last_loss,
                "bad_samples": run.bad_samples, "set_aside": len(self.plan.set_aside[k]), **run.processor.counts}

    def report_bad(self, stage_dir: Path, step: int, bad) -> None:
        with disk_errors(stage_dir), open(stage_dir / f"bad_samples.rank{self.rank}.jsonl", "a") as f:
            for example, problem in bad:
                f.write(json.dumps({"step": step, **example.where(), "problem": problem}) + "\n")

    def micro_step(self, engine, batch: dict | None) -> torch.Tensor:
        """One forward. A micro-batch whose every example was skipped repeats the last good one with its loss times
        zero: every rank still runs the same modules (ZeRO-3), and no update comes from it."""
        scale = 1.0
        if batch is None:
            batch, scale = self.last_batch, 0.0
        else:
            self.last_batch = batch
        if batch is None:
            raise RuntimeError("the first micro-batch of this stage has no usable example: check bad_samples*.jsonl.")
        return engine(**to_device(batch, engine.device), use_cache=False).loss * scale

    def checkpoint(self, run: StageRun, step: int) -> None:
        """DeepSpeed state (trainables and optimizer) plus `trainable.safetensors`: the fp32 master of every trainable
        tensor (connector, LoRA, unfrozen LLM), gathered on every rank and written by rank 0."""

        def extra(tag_dir: Path):
            masters = trainable_fp32_state(run.engine, run.trainable_names, self.rank)
            if self.rank == 0:
                save_file(masters, str(tag_dir / "trainable.safetensors"))
                (tag_dir / "trainer_state.json").write_text(json.dumps({"step": step, "seed": self.config.seed}))

        save_checkpoint(run.engine, run.dir, step, extra, run.stage.keep_last, self.rank)

    def finish(self, k: int, stage_dir: Path, processor) -> None:
        """The newest checkpoint's fp32 masters over the stage's starting weights → `final/` (save_pretrained +
        tokenizer + the stage record) and the loss-curve PNG."""
        torch.distributed.barrier()
        if self.rank == 0:
            tag_dir = newest_intact(stage_dir)
            if tag_dir is None:
                raise CheckpointError(f"{stage_dir} has no intact checkpoint to build final/ from.")
            trained = load_file(tag_dir / "trainable.safetensors")
            model = self.build_model(k)  # frozen tensors from the fp32 source, never the bf16 engine copies
            unexpected = model.load_state_dict(trained, strict=False).unexpected_keys
            if unexpected:
                raise RuntimeError(f"trained weights carry unknown keys {unexpected[:5]}")
            with atomic_folder(stage_dir / "final") as staging:
                model.save_pretrained(staging)
                processor.tokenizer.save_pretrained(staging)
                (staging / STAGE_RECORD).write_text((stage_dir / STAGE_RECORD).read_text())
                write_ensemble_record(staging, self.ensemble.config)
            plot_losses(stage_dir / "log.jsonl", stage_dir / "loss.png", f"stage {k + 1}: {self.config.stages[k].name}")
        torch.distributed.barrier()
