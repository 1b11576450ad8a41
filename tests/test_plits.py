"""PLITS equals a hand-assembled `inputs_embeds` run of the bare LLM with the projected tokens spliced in."""

from __future__ import annotations

import pytest
import torch
from conftest import build_inputs, random_audio, random_texts, tiny_pal


@pytest.mark.parametrize("connector", ["plits", "plits_qformer"])
def test_plits_equals_hand_assembled_inputs_embeds(connector):
    model, bare = tiny_pal(connector)
    texts = random_texts([9, 6])
    audio = random_audio(model.config, [5, 3])
    batch = build_inputs(model, texts, audio)
    with torch.no_grad():
        ours = model(**batch, audio=audio).logits
        projector = model.plits.projectors["sslam"]
        gain = model.plits.output_norm.weight
        # The output RMSNorm's gain starts at the RMS of the bare LLM's embedding table.
        torch.testing.assert_close(gain, bare.get_input_embeddings().weight.pow(2).mean().sqrt().expand_as(gain))
        tokens, mask = audio["sslam"]
        embeds = bare.get_input_embeddings()(batch["input_ids"]).clone()
        for row in range(2):
            n = int(mask[row].sum())
            projected, out_mask = projector(tokens[row : row + 1, :n], mask[row : row + 1, :n])
            slots = batch["audio_token_mask"][row].nonzero().flatten()
            assert len(slots) == int(out_mask.sum())
            real = projected[0][out_mask[0]]
            embeds[row, slots] = real / torch.sqrt(real.pow(2).mean(-1, keepdim=True) + 1e-6) * gain
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        ref = bare(inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=positions).logits
    # reorder: our PLITS path against the bare LLM fed the formula's embeddings
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_mlp_downsample_groups_consecutive_tokens():
    """k = 2: output token j is the MLP of [x_2j ; x_2j+1], the last group zero-completed (formula, not our code)."""
    model, _ = tiny_pal("pal")  # whisper goes through PLITS with plits_config.mlp_downsample=2
    projector = model.plits.projectors["whisper"]
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        out, mask = projector(x, torch.ones(1, 5, dtype=torch.bool))
        lin1, lin2 = projector.net[0], projector.net[2]
        padded = torch.cat([x[0], torch.zeros(1, 16)])  # [6, 16]
        groups = padded.reshape(3, 32)
        expected = torch.nn.functional.gelu(groups @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias
    assert mask.tolist() == [[True, True, True]]
    torch.testing.assert_close(out[0], expected)
