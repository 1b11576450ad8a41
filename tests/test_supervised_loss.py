"""Training computes LM-head logits only at supervised positions: same loss and gradients as the full-logit loss."""

from __future__ import annotations

import pytest
import torch
from conftest import build_inputs, random_audio, random_texts, tiny_pal
from transformers.loss.loss_utils import ForCausalLMLoss


def _batch(model):
    texts = random_texts([12, 9, 15], seed=7)
    audio = random_audio(model.config, [6, 3, 5], seed=7)
    batch = build_inputs(model, texts, audio, padding_side="right")
    labels = batch["input_ids"].clone()
    labels[:, :6] = -100  # the prompt (and every PLITS placeholder in it) is not supervised
    labels[batch["attention_mask"] == 0] = -100
    labels[batch["audio_token_mask"]] = -100
    return batch, audio, labels


@pytest.mark.parametrize("connector", ["plits", "lal", "pal", "pal_summary", "xattn"])
def test_supervised_logits_give_the_full_logit_loss_and_gradients(connector):
    model, _ = tiny_pal(connector)
    model.train()
    batch, audio, labels = _batch(model)

    full_logits = model(**batch, audio=audio).logits  # [B, T, V], no labels: the LLM's own head over every position
    reference = ForCausalLMLoss(full_logits, labels, vocab_size=full_logits.shape[-1])
    reference.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    out = model(**batch, audio=audio, labels=labels)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    assert out.logits.shape == (int((shifted != -100).sum()), full_logits.shape[-1])  # never [B, T, V]
    # reorder: the head's length-64 dot products on other GEMM shapes, √64·u·Σ|terms| ≈ 5e-7
    torch.testing.assert_close(out.logits, full_logits[shifted != -100], atol=1e-6, rtol=1e-6)
    # reorder: a mean of ~30 cross-entropies of O(1) in float32, ≤ 30·u·4 ≈ 1e-6 at worst
    assert abs(out.loss.item() - reference.item()) < 1e-6
    out.loss.backward()
    for name, param in model.named_parameters():
        if name in expected_grads:
            # reorder: gradients summed over the batch in another order (class in conftest)
            torch.testing.assert_close(param.grad, expected_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_num_items_in_batch_and_a_batch_without_answers():
    model, _ = tiny_pal("lal")
    batch, audio, labels = _batch(model)
    full_logits = model(**batch, audio=audio).logits
    reference = ForCausalLMLoss(full_logits, labels, vocab_size=full_logits.shape[-1], num_items_in_batch=50)
    loss = model(**batch, audio=audio, labels=labels, num_items_in_batch=50).loss
    # reorder: as above, a sum of ~30 O(1) terms over 50
    assert abs(loss.item() - reference.item()) < 1e-6

    nothing = model(**batch, audio=audio, labels=torch.full_like(labels, -100))
    assert nothing.loss.item() == 0.0 and nothing.logits.shape[0] == 0
    nothing.loss.backward()  # connected to the graph: a rank with such a batch still joins the backward pass
