"""A stage's validation, as the recipe runs it at every evaluation: the validation loss with each example's own
audio and with another clip's (their difference is the audio-reliance gap), a few generated answers, the loss plot
with both validation curves, and the warning for a stage that does not use the audio."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pal.common.safe_write import disk_errors
from pal.data.manifest import mismatched_audio
from pal.processing_pal import to_device


@torch.no_grad()
def validate_stage(run, val, step: int, forward, rank: int, world: int) -> dict | None:
    """Validation at `step` of a stage in training (`run`: the recipe's StageRun; `val`: its validation StageData;
    `forward(engine, batch)` → the batch's loss). Writes the record to the stage's log and the generated answers to
    `samples.jsonl` → {"val_loss", "val_loss_mismatched", "reliance_gap"}, or None without a usable batch."""
    engine, processor, stage = run.engine, run.val_processor, run.stage
    engine.eval()
    losses, mismatched = [], []
    for b in range(stage.val_batches):
        examples = [val[i] for i in val.global_batch(b)]
        batch, _ = processor.collate(processor.prepare(examples))
        if batch is not None:
            losses.append(float(forward(engine, batch)))
        # The audio-reliance gap: the same batch with each example given another clip's audio (a derangement of the
        # batch's clips). A model that ignores the audio scores the same on both.
        swapped = mismatched_audio(examples)
        batch, _ = processor.collate(processor.prepare(swapped)) if swapped else (None, None)
        if batch is not None:
            mismatched.append(float(forward(engine, batch)))
    examples = [val[i] for i in val.epoch(0).reshape(-1)[: stage.num_samples]]
    prepared = processor.prepare(examples)
    kept = prepared.examples
    if kept:  # on every rank: under ZeRO-3 each forward is a collective; rank 0 writes
        gen = processor.with_settings(padding_side="left")
        inputs = to_device(gen([e.messages[:-1] for e in kept], processor.prepared_audio(prepared),
                               clip_rows=processor.prepared_clip_rows(prepared)), engine.device)
        out = engine.module.generate(**inputs, max_new_tokens=32, do_sample=False, pad_token_id=gen.pad_id,
                                     synced_gpus=run.zero3 and world > 1)
        if rank == 0:
            with disk_errors(run.dir), open(run.dir / "samples.jsonl", "a") as f:
                for e, text in zip(kept, gen.decode(out, inputs["input_ids"].shape[1])):
                    f.write(json.dumps({"step": step, "id": e.id, "reference": e.messages[-1]["content"],
                                        "generated": text}) + "\n")
    engine.train()
    if not losses:
        return None
    record = {"val_loss": sum(losses) / len(losses)}
    if mismatched:
        record["val_loss_mismatched"] = sum(mismatched) / len(mismatched)
        record["reliance_gap"] = record["val_loss_mismatched"] - record["val_loss"]
    run.log.write(step=step, **record)
    return record


def plot_losses(log_path: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    mismatched = [(r["step"], r["val_loss_mismatched"]) for r in rows if "val_loss_mismatched" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation")
    if mismatched:  # the space between the two validation curves is the audio-reliance gap
        ax.plot(*zip(*mismatched), marker="x", linestyle="--", label="validation, another clip's audio")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# Below this gap (nats per answer token, validation loss with another clip's audio minus with its own) the model
# answers as well with the wrong audio as with the right one: it does not use the audio.
MIN_RELIANCE_GAP = 0.02


def deafness_warning(val: dict) -> str | None:
    """The warning for a stage whose last evaluation shows no audio-reliance gap, or None."""
    gap = val.get("reliance_gap")
    if gap is None or gap >= MIN_RELIANCE_GAP:
        return None
    return (f"the model does not use the audio: its validation loss with another clip's audio is "
            f"{val['val_loss_mismatched']:.3f} against {val['val_loss']:.3f} with its own (gap {gap:+.3f}, under "
            f"{MIN_RELIANCE_GAP}). Train longer, or see docs/findings.md.")
