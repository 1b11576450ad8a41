"""The text-only trained baseline (pal/curriculum/text_only.py): the same curriculum on the same questions without
audio, and why its connector-only stages can be left out."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_inputs, curriculum_dict, random_audio, random_texts, tiny_pal, write_yaml

from pal.curriculum.config import CurriculumConfig
from pal.curriculum.text_only import text_only_curriculum


@pytest.mark.parametrize("connector", ["plits", "lal", "pal", "xattn"])
def test_without_audio_no_connector_parameter_gets_a_gradient(connector):
    """So a stage that trains the connector alone leaves a text-only model exactly as it was."""
    from pal.trainable import set_trainable

    model, _ = tiny_pal(connector)
    model.train()
    set_trainable(model, ["connector"])
    texts = random_texts([9, 9], seed=3)
    audio = random_audio(model.config, [5, 4])
    silent = {name: (tokens, torch.zeros_like(mask)) for name, (tokens, mask) in audio.items()}  # text-only rows
    ids = torch.tensor(texts)
    labels = ids.clone()
    labels[:, :4] = -100
    model(input_ids=ids, attention_mask=torch.ones_like(ids), audio=silent, labels=labels).loss.backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trained  # the connector is there and trainable
    learning = [n for n, p in trained if p.grad is not None and p.grad.any()]
    if connector == "xattn":  # the gated FFN of each cross-attention block acts on text alone: those stages stay
        assert learning and all(n.endswith("ffn_gate") or ".ffn." in n for n in learning), learning
    else:
        assert not learning, learning
    # With the audio, the same parameters do learn (the check above can fail).
    model.zero_grad()
    batch = build_inputs(model, texts, audio, padding_side="right")
    labels = torch.where(batch["audio_token_mask"] | (batch["attention_mask"] == 0), -100, batch["input_ids"])
    labels[:, :3] = -100
    model(**batch, audio=audio, labels=labels).loss.backward()
    assert any(p.grad is not None and p.grad.any() for _, p in trained)


def test_text_only_curriculum_drops_the_audio_and_the_connector_only_stages(curriculum_env, tmp_path):
    config = CurriculumConfig.from_yaml(write_yaml(tmp_path / "c.yaml", curriculum_dict(curriculum_env)))
    baseline = text_only_curriculum(config, tmp_path / "manifests")
    assert [s.name for s in baseline.stages] == ["lora", "everything"]  # "connector" trains the connector alone
    for stage, original in zip(baseline.stages, config.stages[1:]):
        assert (stage.steps, stage.batch_size, stage.trainable) == (original.steps, original.batch_size,
                                                                    original.trainable)
        rows = [json.loads(line) for s in stage.data for line in open(s.manifest).read().splitlines()]
        assert rows and all("audio" not in r and "<audio>" not in json.dumps(r) for r in rows)
        assert all(r["group"].endswith(".wav") for r in rows if r["id"] != "text")  # the clip, to pack by
    assert config.stages[0].data[0].manifest.endswith("train.jsonl")  # the original config is untouched
    config.model.connector = {"connector": "xattn"}
    assert len(text_only_curriculum(config, tmp_path / "x").stages) == 3
