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
from pal.processing_pal import scatter_rows

from .bootstrap import mean_with_ci


def _losses(llm: AudioLLM, batch: list[Example], clips: list[str], features: dict) -> torch.Tensor:
    """Teacher-forced losses of `batch` [B], each with the row of `features` (one per path of `clips`) its audio names."""
    audio = scatter_rows(features, [clips.index(e.audio) for e in batch])
    conversations = [llm.conversation(e.prompt) + [{"role": "assistant", "content": e.answer}] for e in batch]
    return llm.answer_losses(conversations, audio)


def _encoded(llm: AudioLLM, examples: list[Example]) -> tuple[list[str], dict]:
    """The distinct clips of `examples` (all with audio) and their features, from the model's memo of encoded files
    (`AudioLLM.file_features`: after `pal eval`'s answering passes, no clip is read or encoded again)."""
    clips = list(dict.fromkeys(e.audio for e in examples))
    features, bad = llm.file_features(clips)
    if bad:
        raise AudioError(next(iter(bad.values())))
    return clips, features


def reliance_gap(llm: AudioLLM, examples: list[Example], batch_size: int = 8) -> dict | None:
    """{"n", "answer_loss", "answer_loss_mismatched", "gap": {"value", "ci95", "n"}} over the examples with audio and
    a gold answer; None when fewer than two distinct clips are there."""
    usable = [e for e in examples if e.audio is not None and e.answer is not None]
    swapped = mismatched_audio(usable)
    if swapped is None:
        return None
    own, other = [], []
    for i in range(0, len(usable), batch_size):
        # A batch's own clips and the clips it is mismatched with are mostly the same (clip j moves to clip j + 1):
        # each is encoded once for both passes.
        mine, theirs = usable[i : i + batch_size], swapped[i : i + batch_size]
        clips, features = _encoded(llm, mine + theirs)
        own.append(_losses(llm, mine, clips, features))
        other.append(_losses(llm, theirs, clips, features))
    own, other = torch.cat(own).numpy(), torch.cat(other).numpy()
    return {"n": len(usable), "answer_loss": float(own.mean()), "answer_loss_mismatched": float(other.mean()),
            "gap": mean_with_ci(other - own)}


__all__ = ["reliance_gap"]
