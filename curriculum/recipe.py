"""The three-stage curriculum recipe (`pal train`): one class, the same code for every stage; stages differ in data.

Per stage (torchtune lifecycle): build the model (stage 1: the LLM plus fresh connectors; later stages: the previous
stage's consolidated fp32 weights, loaded before DeepSpeed wraps the model), select the trainable groups, wrap with
DeepSpeed (bf16 or fp32, ZeRO 0-3), train with warm-up + cosine, evaluate (validation loss and generated samples),
checkpoint every N steps (every trainable tensor, atomically, keep last k), and finish with a `save_pretrained`
folder (`<out>/stage<k>-<name>/final`) that `PALForConditionalGeneration.from_pretrained` and the next stage load.

Exact resume: batches are a function of (seed, stage, step); DeepSpeed restores weights and optimizer state.
ZeRO-3: a batch without audio still goes through the connectors (with masked-out audio), and a batch whose examples
were all skipped repeats the last good one with zero weight, so every rank calls the same modules in the same order
and none hangs (a known failure of peer projects).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from encoders.ensemble import AudioEncoderEnsemble
from encoders.training import (JsonlLog, checkpoint_root, cosine_lr, deepspeed_config, latest_tag, param_groups,
                               save_checkpoint, setup_distributed)
from pal import PALForConditionalGeneration, PALProcessor, set_trainable
from pal.llm import load_tokenizer

from .config import CurriculumConfig, StageConfig
from .data import Collator, StageData


def plot_losses(log_path: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


class CurriculumRecipe:
    def __init__(self, config: CurriculumConfig, out: str | Path | None = None, stage: int | None = None,
                 resume: bool = False, max_steps: int | None = None):
        self.config = config
        self.out = Path(out or config.out)
        self.resume, self.max_steps = resume, max_steps
        if stage is not None and not 1 <= stage <= len(config.stages):
            raise ValueError(f"--stage {stage}: this curriculum has stages 1..{len(config.stages)}.")
        self.stages = [stage - 1] if stage is not None else list(range(len(config.stages)))

    # -------------------------------------------------------------------------------------------------- helpers
    def stage_dir(self, k: int) -> Path:
        return self.out / f"stage{k + 1}-{self.config.stages[k].name}"

    def build_model(self, k: int) -> PALForConditionalGeneration:
        """Stage 1: the LLM with fresh connectors; stage k > 1: the consolidated fp32 weights of stage k − 1."""
        if k == 0:
            m = self.config.model
            torch.manual_seed(self.config.seed)
            return PALForConditionalGeneration.from_llm(
                None if m.llm == "default" else m.llm, encoder_dims=self.ensemble.dims, lora=m.lora,
                dtype=getattr(torch, m.dtype), **m.connector,
            )
        previous = self.stage_dir(k - 1) / "final"
        if not (previous / "config.json").is_file():
            raise FileNotFoundError(f"stage {k + 1} starts from {previous}, which does not exist: run stage {k} first.")
        return PALForConditionalGeneration.from_pretrained(previous, dtype=torch.float32)

    def tokenizer(self, k: int):
        source = self.stage_dir(k - 1) / "final" if k > 0 else None
        if source is not None and (source / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        llm = self.config.model.llm
        return load_tokenizer(None if llm == "default" else llm)

    # ---------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        self.rank, self.world = setup_distributed()
        ensemble_config = self.config.model.ensemble_config()
        self.cache = None
        if self.config.feature_cache:
            from encoders.feature_cache import FeatureCache

            self.cache = FeatureCache(self.config.feature_cache, ensemble_config)
        # The ensemble is built either way: its dims configure the connectors (presets are cheap; real weights load
        # once). With a feature cache it never encodes.
        self.ensemble = AudioEncoderEnsemble(ensemble_config)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.out / "curriculum.json").write_text(json.dumps(asdict(self.config), indent=2, default=str))

    def run(self) -> list[dict]:
        results = []
        for k in self.stages:
            if (self.stage_dir(k) / "final" / "config.json").is_file() and len(self.stages) > 1:
                results.append({"stage": k + 1, "skipped": "already finished"})
                continue
            results.append(self.run_stage(k))
        return results

    # ---------------------------------------------------------------------------------------------------- stage
    def run_stage(self, k: int) -> dict:
        import deepspeed

        stage: StageConfig = self.config.stages[k]
        stage_dir = self.stage_dir(k)
        model = self.build_model(k)
        counts = set_trainable(model, stage.trainable)
        trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
        processor = PALProcessor(self.tokenizer(k), model.config, padding_side="right")
        collate = Collator(processor, ensemble=self.ensemble, cache=self.cache)
        data = StageData([(s.manifest, s.weight) for s in stage.data], self.config.seed, k)
        per_step = stage.batch_size * self.world * stage.gradient_accumulation_steps
        total = stage.steps or max(1, math.ceil(stage.epochs * len(data) / per_step))
        stop = min(total, self.max_steps) if self.max_steps else total

        optimizer = torch.optim.AdamW(param_groups(model, stage.optim.weight_decay, decay_all=False),
                                      lr=stage.optim.lr, betas=tuple(stage.optim.betas), eps=stage.optim.eps)
        ds = deepspeed_config(stage.deepspeed, micro_batch=stage.batch_size, precision=stage.precision,
                              grad_accum=stage.gradient_accumulation_steps, zero_stage=stage.zero_stage,
                              grad_clip=stage.optim.grad_clip)
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
        start = 0
        tag = latest_tag(stage_dir) if self.resume else None
        if tag is not None:
            engine.load_checkpoint(str(checkpoint_root(stage_dir)), tag=tag)
            start = json.loads((checkpoint_root(stage_dir) / tag / "trainer_state.json").read_text())["step"]
        log = JsonlLog(stage_dir / "log.jsonl", self.rank == 0)
        if self.rank == 0 and start == 0:
            log.write(event="start", stage=k + 1, name=stage.name, trainable=counts, total_steps=total,
                      world_size=self.world)
        val = StageData([(stage.val_manifest, 1.0)], self.config.seed + 1, k) if stage.val_manifest else None

        group = 16 if stage.group_by_length else 1
        bad_total, last_loss = 0, float("nan")
        self.last_batch = None
        bar = tqdm(total=stop, initial=start, desc=f"stage {k + 1} ({stage.name})", disable=self.rank != 0, unit="step")
        for step in range(start, stop):
            torch.manual_seed(self.config.seed * 1_000_003 + k * 100_003 + step)  # dropout: same draws after resume
            lr = cosine_lr(step, stage.optim.lr, stage.optim.warmup_steps, total, stage.optim.min_lr)
            for group_ in optimizer.param_groups:
                group_["lr"] = lr
            losses = []
            for micro in range(stage.gradient_accumulation_steps):
                index = step * stage.gradient_accumulation_steps + micro
                refs = data.global_batch(index, stage.batch_size * self.world, group)
                mine = [data.example(r) for r in refs[self.rank * stage.batch_size : (self.rank + 1) * stage.batch_size]]
                batch, bad = collate(mine)
                if bad:
                    bad_total += len(bad)
                    with open(stage_dir / f"bad_samples.rank{self.rank}.jsonl", "a") as f:
                        for example_id, problem in bad:
                            f.write(json.dumps({"step": step, "id": example_id, "problem": problem}) + "\n")
                loss = self.micro_step(engine, batch)
                engine.backward(loss)
                engine.step()
                losses.append(float(loss.detach()))
            last_loss = sum(losses) / len(losses)
            done = step + 1
            if self.rank == 0:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}")
            if done % stage.log_every == 0 or done == stop:
                log.write(step=done, lr=lr, loss=last_loss, bad_samples=bad_total)
            if val is not None and ((stage.eval_every and done % stage.eval_every == 0) or done == stop):
                self.evaluate(engine, val, collate, processor, stage, stage_dir, done, log)
            if done % stage.checkpoint_every == 0 or done == stop:
                self.checkpoint(engine, stage_dir, done, stage.keep_last, trainable_names)
        bar.close()
        if stop == total:
            self.finish(engine, k, stage_dir, trainable_names, processor)
        return {"stage": k + 1, "name": stage.name, "steps": stop, "loss": last_loss, "bad_samples": bad_total}

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
        inputs = {k: v.to(engine.device) for k, v in batch.items() if torch.is_tensor(v)}
        audio = batch.get("audio")
        if audio is not None:
            inputs["audio"] = {n: (t.to(engine.device), m.to(engine.device)) for n, (t, m) in audio.items()}
        return engine(**inputs, use_cache=False).loss * scale

    @torch.no_grad()
    def evaluate(self, engine, val: StageData, collate, processor, stage, stage_dir: Path, step: int, log) -> None:
        engine.eval()
        losses = []
        for b in range(stage.val_batches):
            refs = val.global_batch(b, stage.batch_size, 1)
            batch, _ = collate([val.example(r) for r in refs])
            if batch is not None:
                losses.append(float(self.micro_step(engine, batch)))
        if stage.num_samples:  # on every rank: under ZeRO-3 each forward is a collective; rank 0 writes
            examples = [val.example(r) for r in val.global_batch(0, stage.num_samples, 1)]
            audio, kept, _ = collate.features(examples)
            gen = PALProcessor(processor.tokenizer, processor.config, padding_side="left")
            inputs = gen([e.messages[:-1] for e in kept], audio)
            audio = inputs.pop("audio", None)
            inputs = {k: v.to(engine.device) for k, v in inputs.items()}
            if audio is not None:
                audio = {n: (t.to(engine.device), m.to(engine.device)) for n, (t, m) in audio.items()}
            out = engine.module.generate(**inputs, audio=audio, max_new_tokens=32, do_sample=False,
                                         pad_token_id=gen.pad_id, synced_gpus=stage.zero_stage == 3 and self.world > 1)
            if self.rank == 0:
                with open(stage_dir / "samples.jsonl", "a") as f:
                    for e, text in zip(kept, gen.decode(out, inputs["input_ids"].shape[1])):
                        f.write(json.dumps({"step": step, "id": e.id, "reference": e.messages[-1]["content"],
                                            "generated": text}) + "\n")
        if losses:
            log.write(step=step, val_loss=sum(losses) / len(losses))
        engine.train()

    def checkpoint(self, engine, stage_dir: Path, step: int, keep_last: int, trainable_names: list[str]) -> None:
        """DeepSpeed state plus `trainable.safetensors`: every trainable tensor (connector, LoRA, unfrozen LLM)."""
        import deepspeed

        params = dict(engine.module.named_parameters())

        def extra(tag_dir: Path):
            (tag_dir / "trainer_state.json").write_text(json.dumps({"step": step, "seed": self.config.seed}))

        tag_dir = save_checkpoint(engine, stage_dir, step, extra, keep_last, self.rank)
        # ZeRO-3 partitions parameters: gather them to write full tensors.
        chosen = [params[n] for n in trainable_names]
        with deepspeed.zero.GatheredParameters(chosen, modifier_rank=None):
            if self.rank == 0 and tag_dir.is_dir():
                tensors = {n: params[n].detach().float().cpu().contiguous() for n in trainable_names}
                save_file(tensors, str(tag_dir / "trainable.safetensors"))
        torch.distributed.barrier()

    def finish(self, engine, k: int, stage_dir: Path, trainable_names: list[str], processor) -> None:
        """Consolidated fp32 weights → `final/` (save_pretrained + tokenizer) and the loss-curve PNG."""
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        torch.distributed.barrier()
        if self.rank == 0:
            tag = latest_tag(stage_dir)
            fp32 = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_root(stage_dir)), tag=tag)
            model = self.build_model(k)  # frozen tensors from the fp32 source, never the bf16 engine copies
            trained = {n: fp32[n] for n in trainable_names}
            missing = model.load_state_dict(trained, strict=False).unexpected_keys
            if missing:
                raise RuntimeError(f"consolidated weights carry unknown keys {missing[:5]}")
            final, tmp = stage_dir / "final", stage_dir / "final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            processor.tokenizer.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            plot_losses(stage_dir / "log.jsonl", stage_dir / "loss.png", f"stage {k + 1}: {self.config.stages[k].name}")
        torch.distributed.barrier()
