"""A trained model must use its audio (the toolkit's main job). On the tiny tone-caption task the session's trained
model finds each clip's own caption likelier than with another clip's audio (the reliance gap clears a margin), and
the same check fails once the connector's output is zeroed: it can tell a model that hears from one that does not."""

from __future__ import annotations

import torch

from pal.data.manifest import mismatched_audio, read_questions
from pal.eval.reliance import reliance_gap
from pal.inference.audio_llm import AudioLLM
from pal.trainable import TRAINABLE_GROUPS

# nats per answer token: the session's model reaches 0.53 [0.45, 0.61] (another clip's audio makes it confidently
# wrong about the pitch word), a deaf one 0 (raw features as before audio_norm, or a zeroed connector).
MARGIN = 0.1


def _hears(result: dict) -> bool:
    return result["gap"]["ci95"][0] > MARGIN


def test_the_derangement_gives_every_clip_another_clip(curriculum_env):
    examples = read_questions(curriculum_env / "train.jsonl")
    swapped = mismatched_audio(examples)
    assert [e.id for e in swapped] == [e.id for e in examples]
    assert all(s.audio != e.audio for s, e in zip(swapped, examples) if e.audio is not None)
    assert [s for s, e in zip(swapped, examples) if e.audio is None] == [e for e in examples if e.audio is None]
    assert mismatched_audio(examples[:1]) is None  # one clip: no derangement exists


def test_the_trained_model_hears_and_a_zeroed_connector_does_not(trained_tiny, curriculum_env):
    llm = AudioLLM.from_pretrained(trained_tiny)
    examples = read_questions(curriculum_env / "train.jsonl")
    hearing = reliance_gap(llm, examples)
    assert hearing["n"] == 8 and _hears(hearing), hearing
    with torch.no_grad():
        for name, param in llm.model.named_parameters():
            if TRAINABLE_GROUPS["connector"](name):
                param.zero_()
    deaf = reliance_gap(llm, examples)
    assert not _hears(deaf), deaf
    assert abs(deaf["gap"]["value"]) < 1e-6  # the audio no longer reaches the answer at all
