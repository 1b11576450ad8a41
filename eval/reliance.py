"""Does the model hear? The audio-reliance gap of a trained model on a manifest.

Each example's gold answer is scored teacher-forced (cross-entropy per answer token) twice: with its own audio, and
with another clip's audio given by a fixed derangement of the manifest's clips (`mismatched_audio`). A model that uses
the audio finds its own clip's answer likelier: the gap (mismatched minus own, paired per example) is positive, with a
bootstrap 95% interval. A model that answers from the question and the dataset's prior has a gap of zero, however
good its scores look. The same gap is logged during training at every evaluation (curriculum/recipe.py).
"""

from __future__ import annotations

import numpy as np
import torch

from curriculum.data import scatter_rows
from curriculum.manifest import Example, mismatched_audio

from .bootstrap import mean_with_ci
from .inference import AudioLLM


def answer_losses(llm: AudioLLM, examples: list[Example], batch_size: int = 8) -> np.ndarray:
    """Teacher-forced loss of each example's gold answer with the audio its `audio` field names → [N] nats/token."""
    out = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        clips = {path: llm.load(path) for path in dict.fromkeys(e.audio for e in batch if e.audio is not None)}
        order = list(clips)
        rows = [order.index(e.audio) if e.audio is not None else None for e in batch]
        audio = scatter_rows(llm.features([clips[p] for p in order]), rows) if order else None
        conversations = [llm.conversation(e.prompt, e.audio is not None) + [{"role": "assistant", "content": e.answer}]
                         for e in batch]
        out.append(llm.answer_losses(conversations, audio))
    return torch.cat(out).numpy() if out else np.zeros(0)


def reliance_gap(llm: AudioLLM, examples: list[Example], batch_size: int = 8) -> dict | None:
    """{"n", "answer_loss", "answer_loss_mismatched", "gap": {"value", "ci95", "n"}} over the examples with audio and
    a gold answer; None when fewer than two distinct clips are there."""
    usable = [e for e in examples if e.audio is not None and e.answer is not None]
    swapped = mismatched_audio(usable)
    if swapped is None:
        return None
    own, other = answer_losses(llm, usable, batch_size), answer_losses(llm, swapped, batch_size)
    return {"n": len(usable), "answer_loss": float(own.mean()), "answer_loss_mismatched": float(other.mean()),
            "gap": mean_with_ci(other - own)}


__all__ = ["answer_losses", "reliance_gap"]
