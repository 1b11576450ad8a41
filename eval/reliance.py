"""Does the model hear? The audio-reliance gap of a trained model on a manifest.

Each example's gold answer is scored teacher-forced (cross-entropy per answer token) twice: with its own audio, and
with another clip's audio given by a fixed derangement of the manifest's clips (`mismatched_audio`). A model that uses
the audio finds its own clip's answer likelier: the gap (mismatched minus own, paired per example) is positive, with a
bootstrap 95% interval. A model that answers from the question and the dataset's prior has a gap of zero, however
good its scores look. The same gap is logged during training at every evaluation (recipes/curriculum/recipe.py).
"""

from __future__ import annotations

import torch

from data.manifest import Example, mismatched_audio
from encoders.audio import AudioError
from inference.audio_llm import AudioLLM

from .bootstrap import mean_with_ci


def _losses(llm: AudioLLM, examples: list[Example], batch_size: int) -> torch.Tensor:
    """Teacher-forced answer losses [N] of `examples`, each with the audio it names. The questions about one clip
    are scored together, up to `batch_size` at a time, the prompt prefix they share (template and PLITS audio: most
    of each row) run once (`AudioLLM.answer_losses_about_one_clip`). Clips come from the model's memo of encoded
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
            losses[part] = llm.answer_losses_about_one_clip(conversations, features)
    return losses


def reliance_gap(llm: AudioLLM, examples: list[Example], batch_size: int = 8) -> dict | None:
    """{"n", "answer_loss", "answer_loss_mismatched", "gap": {"value", "ci95", "n"}} over the examples with audio and
    a gold answer; None when fewer than two distinct clips are there."""
    usable = [e for e in examples if e.audio is not None and e.answer is not None]
    swapped = mismatched_audio(usable)
    if swapped is None:
        return None
    own, other = _losses(llm, usable, batch_size).numpy(), _losses(llm, swapped, batch_size).numpy()
    return {"n": len(usable), "answer_loss": float(own.mean()), "answer_loss_mismatched": float(other.mean()),
            "gap": mean_with_ci(other - own)}


__all__ = ["reliance_gap"]
