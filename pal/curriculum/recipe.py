"""The three-stage curriculum recipe (`pal train`): one class, the same code for every stage; stages differ in data.

Lifecycle (torchtune's, `Recipe` in pal/training/lifecycle.py: `run()` is setup, train, save, cleanup): `setup()`
validates everything every stage will need before any training (the model and connector settings against the LLM, every
stage's manifests, validation manifests and DeepSpeed file, the lengths of the templated conversations, the output
folder), then `train()` runs each stage (`run_stage`: set up, train, end): build the model (stage 1: the LLM plus fresh
connectors; later stages: the previous stage's `final/`, loaded before DeepSpeed wraps the model), select the trainable
groups, wrap with DeepSpeed (bf16 or fp32, ZeRO 0-3), train in train mode with warm-up + cosine, evaluate (validation
loss and generated samples), checkpoint every N steps (trainable tensors and optimizer state only, atomically, keep last
k; training/checkpointing.py), and write `<out>/stage<k>-<name>/final` (save_pretrained) from the fp32 master weights.

A run folder remembers what trained it: each stage records a hash of its effective config (the settings that change
its weights, chained through the stages before it). A finished stage with the same hash is skipped; a different hash,
or an unfinished stage without `--resume`, is refused unless `--restart` asks to start over.

Exact resume: batches are a function of (seed, stage, step), also mid-epoch (pal/curriculum/stage_data.py);
DeepSpeed restores weights and optimizer state from the newest intact checkpoint. Samples that fail at run time are
skipped, counted and listed with manifest, line, id and reason in `bad_samples.rank*.jsonl`. ZeRO-3: a batch without
audio still goes through the connectors (with masked-out audio), and a batch whose examples were all skipped repeats the
last good one with zero weight, so every rank calls the same modules in the same order and none hangs (a known failure
of peer projects).

What lives elsewhere: the stage's data (stage_data.py), its validation and plots (validation.py), the config
(config.py), the DeepSpeed and checkpoint plumbing (pal/training/). The lifecycle is one class read top to bottom: the
checks of a whole curriculum before any step (`validate`) and the stage's set-up, loop and hand-off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pal import TRAINABLE_GROUPS, PALConfig, PALForConditionalGeneration, PALProcessor, set_trainable
from pal.audio_norm import AudioFeatureNorm
from pal.common.home import pal_home
from pal.common.safe_write import atomic_folder, atomic_write_json, atomic_write_text, check_writable, disk_errors
from pal.common.typed_config import with_absolute_paths
from pal.data.manifest import ManifestError, manifest_table
from pal.encoders.ensemble import AudioEncoderEnsemble
from pal.encoders.identity import write_ensemble_record
from pal.llm import load_tokenizer, resolve_llm_path
from pal.modeling_pal import cast_unpartitioned
from pal.processing_pal import to_device
from pal.trainable import LORA_KEYS
from pal.training.checkpointing import (
    CheckpointError,
    clear_run,
    has_checkpoints,
    load_latest_checkpoint,
    newest_intact,
    save_checkpoint,
    tag_step,
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
from pal.training.trackers import open_trackers

from .config import CurriculumConfig, StageConfig
from .stage_data import StageData, stage_loader
from .validation import deafness_warning, plot_losses, validate_stage

STAGE_RECORD = "stage.json"
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

    # -------------------------------------------------------------------------------------------------- helpers
    def stage_dir(self, k: int) -> Path:
        return self.out / f"stage{k + 1}-{self.config.stages[k].name}"

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
        previous = self.stage_dir(k - 1) / "final"
        if not (previous / "config.json").is_file():
            raise FileNotFoundError(f"stage {k + 1} starts from {previous}, which does not exist: run stage {k} first.")
        return PALForConditionalGeneration.from_pretrained(previous, dtype=torch.float32)

    def fit_audio_norm(self, model: PALForConditionalGeneration) -> None:
        """Stage 1's feature standardisation (pal/audio_norm.py), fitted on the features of up to AUDIO_NORM_CLIPS
        distinct training clips, in the stage's epoch-0 order, and kept in stage 1's folder so that every build of
        the model (the engine's, final/'s, a resumed run's, on every rank) reads the same statistics."""
        path = self.stage_dir(0) / "audio_norm.safetensors"
        if path.is_file():
            model.audio_norm, model.config.audio_norm_positions = AudioFeatureNorm.from_statistics(
                path, model.config.encoder_dims)
            return
        data, seen, clips = self.data[0], set(), []
        for index in data.epoch(0).reshape(-1):
            example = data[int(index)]
            example = example[0] if isinstance(example, list) else example  # a packed group: one clip
            if example.audio is not None and example.audio not in seen:
                seen.add(example.audio)
                clips.append(example)
            if len(clips) == AUDIO_NORM_CLIPS:
                break
        processor = PALProcessor(self.tokenizer(0), model.config, ensemble=self.ensemble, cache=self.cache)
        batches = [processor.prepared_audio(processor.prepare(clips[i : i + 16])) for i in range(0, len(clips), 16)]
        model.fit_audio_norm([b for b in batches if b is not None])
        if self.rank == 0:
            with disk_errors(path):
                model.audio_norm.save_statistics(path)

    def tokenizer(self, k: int):
        source = self.stage_dir(k - 1) / "final" if k > 0 else None
        if source is not None and (source / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        return load_tokenizer(self.config.model.llm)

    def stage_hash(self, k: int) -> str:
        """Identifies what stage k's weights depend on: the model section, its own training settings (not logging,
        evaluation or checkpoint cadence), its DeepSpeed file's content, the seed, the feature cache, and the
        settings of the stages before it."""
        stage = asdict(self.config.stages[k])
        for key in ("val_manifest", "eval_every", "val_batches", "num_samples", "checkpoint_every", "keep_last",
                    "log_every", "num_workers", "prefetch_factor"):
            stage.pop(key)
        deepspeed = Path(stage["deepspeed"]) if stage["deepspeed"] else None
        stage["deepspeed"] = deepspeed.read_text() if deepspeed and deepspeed.is_file() else str(deepspeed)
        model = asdict(self.config.model)
        for key in ("bad_audio", "max_bad_audio"):  # which rows train is the manifests' business, not hashed either
            model.pop(key)
        record = {"model": model, "stage": stage, "seed": self.config.seed,
                  "feature_cache": self.config.feature_cache, "previous": self.stage_hash(k - 1) if k else None}
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def stage_record(self, k: int) -> dict | None:
        path = self.stage_dir(k) / STAGE_RECORD
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    # ---------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        self.rank, self.world = setup_distributed()
        ensemble_config = self.config.model.ensemble_config()
        self.cache = None
        if self.config.feature_cache:
            from pal.encoders.feature_cache import FeatureCache

            self.cache = FeatureCache(self.config.feature_cache, ensemble_config)
        # The ensemble is built either way: its dims configure the connectors (presets are cheap; real weights load
        # once). With a feature cache it never encodes.
        self.ensemble = AudioEncoderEnsemble(ensemble_config)
        self.validate()
        self.states = {k: self.stage_state(k) for k in self.stages}
        redo = [k for k in self.stages if self.states[k] != "finished"]
        stale = [k for k in self.stages if redo and k > redo[0] and self.states[k] != "new"]
        if stale:
            names = [self.stage_dir(k).name for k in stale]
            raise ValueError(f"stage {redo[0] + 1} will train again, so what {names} learned from it would be stale: "
                             "pass --restart to retrain them too, or choose another --out.")
        if self.rank == 0:
            check_writable(self.out)
            atomic_write_json(self.out / "curriculum.json", asdict(self.config))

    def validate(self) -> None:
        """Everything the stages will need, checked before stage 1 trains; every problem found is reported at once."""
        from transformers import AutoConfig

        m = self.config.model
        text_config = AutoConfig.from_pretrained(resolve_llm_path(m.llm), local_files_only=True)
        try:
            pal_config = PALConfig(text_config=text_config.to_dict(), encoder_dims=self.ensemble.dims, **m.connector)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{self.source}: model.connector: {err}") from None
        unrouted = [n for n in pal_config.encoders_on("lal") if not pal_config.lal_layer_indices()]
        if unrouted:
            raise ValueError(f"{self.source}: model.connector: no LLM layer receives LAL audio (lal_config.start_layer"
                             f" = {pal_config.lal_config.start_layer} of {text_config.num_hidden_layers} layers), so "
                             f"encoders {unrouted} would be ignored; lower it or route them through plits.")
        if m.lora is not None and set(m.lora) - LORA_KEYS:
            raise ValueError(f"{self.source}: model.lora: unknown key(s) {sorted(set(m.lora) - LORA_KEYS)}; "
                             f"known keys: {sorted(LORA_KEYS)}.")
        self.max_length = m.max_length or int(text_config.max_position_embeddings)
        processor = PALProcessor(self.tokenizer(0), pal_config, padding_side="right")

        problems, validated = [], {}
        tables = pal_home() / "manifests"  # keyed by content and settings: shared by runs, nothing left in a bad --out

        def examples(path: str | None, what: str):
            """(memory-mapped table, notes) of a manifest, or None if it has problems. Rank 0 validates and writes
            the table; the other ranks map the same file (or report the same problems)."""
            if path not in validated:
                outcome, failure = [None, None], None
                read = functools.partial(manifest_table, path, processor, self.max_length, m.too_long,
                                         self.ensemble.min_seconds, tables, m.bad_audio, m.max_bad_audio)
                if self.rank == 0:
                    try:
                        read()
                    except Exception as err:  # every rank must leave the broadcast below, whatever went wrong
                        outcome, failure = [type(err).__name__, str(err)], err
                torch.distributed.broadcast_object_list(outcome, src=0)
                if outcome[0] not in (None, "ManifestError"):
                    raise failure or RuntimeError(f"rank 0 could not read {path}: {outcome[0]}: {outcome[1]}")
                if outcome[0] is not None:
                    problems.append(f"{what}: {outcome[1]}")
                    validated[path] = None
                else:
                    validated[path] = read()
            return validated[path]

        self.ds_configs, self.data, self.val_data, self.notes, self.set_aside = {}, {}, {}, [], {}
        for k in self.stages:
            stage, where = self.config.stages[k], f"{self.source}: stages[{k}] ({self.config.stages[k].name})"
            bad_groups = [g for g in stage.trainable if g not in TRAINABLE_GROUPS]
            if bad_groups:
                problems.append(f"{where}.trainable: unknown group(s) {bad_groups}; choose from "
                                f"{sorted(TRAINABLE_GROUPS)}.")
            if "lora" in stage.trainable and not m.lora:
                problems.append(f"{where}.trainable names `lora`, but model.lora is not set: no adapter to train.")
            try:
                ds = deepspeed_config(stage.deepspeed, micro_batch=stage.batch_size, precision=stage.precision,
                                      grad_accum=stage.gradient_accumulation_steps, zero_stage=stage.zero_stage,
                                      grad_clip=stage.optim.grad_clip)
                check_deepspeed_config(ds, f"{where}.deepspeed ({stage.deepspeed})")
                self.ds_configs[k] = ds
            except (ValueError, FileNotFoundError) as err:
                problems.append(f"{where}.deepspeed: {err}")
            sources = [(examples(s.manifest, f"{where}.data"), s.weight) for s in stage.data]
            val = examples(stage.val_manifest, f"{where}.val_manifest") if stage.val_manifest else None
            if k > 0 and k - 1 not in self.stages and not (self.stage_dir(k - 1) / "final" / "config.json").is_file():
                problems.append(f"{where}: starts from {self.stage_dir(k - 1) / 'final'}, which does not exist; "
                                f"run stage {k} first.")
            self.set_aside[k] = [row for found in [*(e for e, _ in sources), val] if found for row in found[2]]
            if all(e is not None for e, _ in sources) and not (stage.val_manifest and val is None):
                self.data[k] = StageData([(e[0], w, s.manifest) for (e, w), s in zip(sources, stage.data)],
                                         self.config.seed, k, stage.batch_size * self.world, stage.group_by_length,
                                         stage.pack_questions)
                self.val_data[k] = StageData([(val[0], 1.0, stage.val_manifest)], self.config.seed + 1, k,
                                             stage.batch_size) if val else None
        if self.cache is not None:
            missing = sorted({audio for found in validated.values() if found
                              for audio in found[0].unique("audio") if audio and audio not in self.cache})
            if missing:
                problems.append(f"{len(missing)} audio file(s) are not in the feature cache {self.cache.root} (e.g. "
                                f"{missing[:3]}): run `pal features build` on their manifests, or drop `feature_cache`.")
        if problems:
            raise ManifestError(f"{self.source}: nothing was trained; fix these first:\n" + "\n".join(problems))
        self.notes = [note for found in validated.values() if found for note in found[1]]
        self.notes += [note for k in self.stages if (note := slow_bf16_note(
            self.config.stages[k].precision, f"{self.source}: stages[{k}]"))]
        if self.rank == 0:
            for note in self.notes:
                print(f"pal train: {note}")

    # ---------------------------------------------------------------------------------------------------- stages
    def stage_state(self, k: int) -> str:
        """"finished", "started" or "new"; raises if the folder was trained with another config, or from another run
        of the stage before it, or holds an unfinished run and neither --resume nor --restart was given."""
        if self.restart:
            return "new"
        stage_dir, record = self.stage_dir(k), self.stage_record(k)
        if record is not None:
            if record.get("hash") != self.stage_hash(k):
                raise ValueError(f"{stage_dir} was trained with a different config (hash {record.get('hash')}, now "
                                 f"{self.stage_hash(k)}: this stage's settings or an earlier stage's changed). Pass "
                                 "--restart to train it again from the start, or choose another --out.")
            previous = self.stage_record(k - 1) if k else None
            if k and record.get("previous_run") != (previous or {}).get("run"):
                raise ValueError(f"{stage_dir} was trained from another run of {self.stage_dir(k - 1).name}: pass "
                                 "--restart to train it again from the current one.")
        if (stage_dir / "final" / "config.json").is_file():
            return "finished"
        if has_checkpoints(stage_dir):
            if not self.resume:
                raise ValueError(f"{stage_dir} holds checkpoints of an unfinished run: pass --resume to continue it, "
                                 "or --restart to start over.")
            # batch_size is per rank, so another number of ranks would continue with another global batch and data
            # order (and ZeRO's optimizer shards are cut per rank); the hash cannot tell, the record can.
            ranks = (record or {}).get("world_size")
            if ranks is not None and ranks != self.world:
                raise ValueError(f"{stage_dir} was started in {ranks} rank(s) and this run has {self.world}: resume it "
                                 f"with `--nproc {ranks}` (the global batch is batch_size × ranks), or pass --restart.")
            return "started"
        return "new"

    def train(self) -> list[dict]:
        """Each stage in turn, a finished one skipped → their summaries (each writes its `final/` as it ends)."""
        results = []
        for k in self.stages:
            state = self.states[k]
            if state == "finished":
                results.append({"stage": k + 1, "skipped": "already finished with this config"})
                continue
            if self.restart and self.rank == 0:
                clear_run(self.stage_dir(k))
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
        import deepspeed

        stage: StageConfig = self.config.stages[k]
        stage_dir = self.stage_dir(k)
        if self.rank == 0:
            check_writable(stage_dir)
            previous = self.stage_record(k - 1) if k else None
            run_id = (self.stage_record(k) or {}).get("run") if resume else None
            atomic_write_json(stage_dir / STAGE_RECORD, {
                "hash": self.stage_hash(k), "run": run_id or uuid.uuid4().hex[:12],
                "previous_run": (previous or {}).get("run"), "world_size": self.world, "config": asdict(stage)})
            set_aside = stage_dir / "bad_samples.manifest.jsonl"  # rows bad_audio: skip kept out of this stage
            if self.set_aside[k]:
                atomic_write_text(set_aside, "".join(json.dumps(row) + "\n" for row in self.set_aside[k]))
            else:
                set_aside.unlink(missing_ok=True)
        zero3 = self.ds_configs[k]["zero_optimization"]["stage"] == 3
        model = self.build_model(k, self.ds_configs[k] if zero3 else None)
        counts = set_trainable(model, stage.trainable)
        if stage.gradient_checkpointing:  # non-reentrant: LAL's audio keys/values reach the recomputed layers as kwargs
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        processor = PALProcessor(self.tokenizer(k), model.config, padding_side="right", ensemble=self.ensemble,
                                 cache=self.cache, max_length=self.max_length, too_long=self.config.model.too_long)
        total = stage.steps or max(1, math.ceil(stage.epochs * self.data[k].batches_per_epoch
                                                / stage.gradient_accumulation_steps))

        # How much of the LLM this rank held once it was built: under ZeRO-3 a 1/world slice of each tensor.
        llm = [p for n, p in model.named_parameters() if n.startswith("llm.") and ".lora_" not in n]
        built = {"llm_elements_here": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in llm),
                 "llm_elements": sum(getattr(p, "ds_numel", p.numel()) for p in llm)}
        optimizer = torch.optim.AdamW(param_groups(model, stage.optim.weight_decay, decay_all=False),
                                      lr=stage.optim.lr, betas=tuple(stage.optim.betas), eps=stage.optim.eps)
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_configs[k])
        start = tag_step(load_latest_checkpoint(engine, stage_dir, self.rank).name) if resume else 0
        engine.train()  # from_pretrained returns eval mode: dropout (LoRA's included) must be on from the first step
        trackers = open_trackers(self.config.report_to, stage_dir, self.config.tracker_project or self.out.name,
                                 f"{self.out.name}/{stage_dir.name}", asdict(self.config), resume) if self.rank == 0 else []
        log = JsonlLog(stage_dir / "log.jsonl", self.rank == 0, trackers)
        if self.rank == 0 and start == 0:
            log.write(event="start", stage=k + 1, name=stage.name, trainable=counts, total_steps=total,
                      world_size=self.world, notes=self.notes, built=built,
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
        batches = iter(stage_loader(self.data[run.k], run.processor, run.start * accum, run.stop * accum, self.rank,
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
            if self.val_data[run.k] is not None and ((stage.eval_every and done % stage.eval_every == 0)
                                                     or done == run.stop):
                self.last_val = validate_stage(run, self.val_data[run.k], done, self.micro_step, self.rank,
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
        if self.set_aside[k] and self.rank == 0:
            print(f"stage {k + 1}: {len(self.set_aside[k])} manifest row(s) with audio that cannot be used were set "
                  f"aside before training; see {run.dir}/bad_samples.manifest.jsonl")
        return {"stage": k + 1, "name": stage.name, "steps": run.stop, "loss": run.last_loss,
                "bad_samples": run.bad_samples, "set_aside": len(self.set_aside[k]), **run.processor.counts}

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
