"""Does the model hear? The audio-reliance gap of a trained model on a manifest.

Each example's gold answer is scored teacher-forced (cross-entropy per answer token) twice: with its own audio, and
with another clip's audio given by a fixed derangement of the manifest's clips (`mismatched_audio`). A model that uses
the audio finds its own clip's answer likelier: the gap (mismatched minus own, paired per example) is positive, with a
bootstrap 95% interval. A model that answers from the question and the dataset's prior has a gap of zero, however
good its scores look. The same gap is logged during training at every evaluation (pal/curriculum/recipe.py).
It is reported per task as well, and `pal eval gap` computes it alone (`reliance_on_manifest`).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import torch

from pal.common.safe_write import atomic_write_json, disk_errors
from pal.data.manifest import Example, mismatched_audio, read_questions
from pal.encoders.audio import AudioError
from pal.inference.audio_llm import AudioLLM

from .answer_loss import answer_losses_about_one_clip
from .bootstrap import mean_with_ci
from .hearing import hearing_with_controls


def _losses(llm: AudioLLM, examples: list[Example], batch_size: int) -> torch.Tensor:
    """Teacher-forced answer losses [N] of `examples`, each with the audio it names. The questions about one clip
    are scored together, up to `batch_size` at a time, the prompt prefix they share (template and PLITS audio: most
    of each row) run once (`answer_losses_about_one_clip`). Clips come from the model's memo of encoded
    files (`AudioLLM.file_features`: after `pal eval`'s answering passes, no clip is read or encoded again)."""
    by_clip: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_clip.setdefault(example.audio, []).append(i)
    losses = torch.empty(len(examples))
    for clip, rows in by_clip.items():
        features, bad = llm.file_features([clip])
        if bad:
            raise AudioError(next(iter(bad.values())))
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            conversations = [llm.conversation(examples[i].prompt) + [{"role": "assistant",
                                                                      "content": examples[i].answer}] for i in part]
            losses[part] = answer_losses_about_one_clip(llm, conversations, features)
    return losses


def _summary(own: np.ndarray, other: np.ndarray) -> dict:
    return {"n": len(own), "answer_loss": float(own.mean()), "answer_loss_mismatched": float(other.mean()),
            "gap": mean_with_ci(other - own)}


def reliance_gap(llm: AudioLLM, examples: list[Example], batch_size: int = 8) -> dict | None:
    """{"n", "answer_loss", "answer_loss_mismatched", "gap": {"value", "ci95", "n"}, "by_task": {task: the same
    four}} over the examples with audio and a gold answer; None when fewer than two distinct clips are there.

    Read the gap beside the loss (docs/findings.md): a change that only teaches the answers' prior
    faster (their form, the labels' frequencies) lowers the loss with another clip's audio as much as with the right
    one, and the gap stays; audio that disturbs the LLM clip by clip widens the gap while the loss rises."""
    usable = [e for e in examples if e.audio is not None and e.answer is not None]
    swapped = mismatched_audio(usable)
    if swapped is None:
        return None
    own, other = _losses(llm, usable, batch_size).numpy(), _losses(llm, swapped, batch_size).numpy()
    tasks = np.array([e.task or "(none)" for e in usable])
    return {**_summary(own, other),
            "by_task": {task: _summary(own[tasks == task], other[tasks == task]) for task in sorted(set(tasks))}}


def reliance_on_manifest(llm: AudioLLM, manifest: str | Path, out: str | Path, tasks: list[str] | None = None,
                         batch_size: int = 8, text_only: AudioLLM | None = None, probe: dict | None = None) -> dict:
    """`pal eval gap`: `reliance_gap` over a manifest's examples (only `tasks`, if given), and the order-free hearing
    score with its controls (eval/hearing.py; `text_only`: the text-only trained model, `probe`: `pal probe`'s result
    for the fraction of its ceiling), nothing generated; written to `out` (JSON) with what it scored → that record."""
    examples = read_questions(manifest)
    if tasks:
        present = sorted({e.task for e in examples if e.task})
        if unknown := sorted(set(tasks) - set(present)):
            raise ValueError(f"{manifest} has no example of the task(s) {', '.join(unknown)}; its tasks: "
                             f"{', '.join(present) or 'none'}. Pass some of those to --tasks.")
        examples = [e for e in examples if e.task in tasks]
    reliance = reliance_gap(llm, examples, batch_size)
    if reliance is None:
        raise ValueError(f"{manifest}: the reliance gap needs gold answers about two or more distinct clips"
                         + (f" among the tasks {','.join(tasks)}" if tasks else "") + "; there is nothing to score.")
    record = {"model": str(llm.folder), "manifest": str(manifest), "tasks": tasks, "reliance": reliance,
              "hearing": hearing_with_controls(llm, examples, text_only, probe),
              "text_only_model": str(text_only.folder) if text_only is not None else None,
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    with disk_errors(Path(out)):
        atomic_write_json(out, record)
    return record


__all__ = ["reliance_gap", "reliance_on_manifest"]
