"""The Flamingo-style cross-attention baseline (pal/cross_attention.py): the invariants every connector has, each
checked against the bare Hugging Face LLM or a formula written here."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_audio, random_texts, slice_audio, tiny_pal


def _open_gates(model, value: float = 0.7) -> None:
    """Gates away from zero (a trained model), so every block changes the hidden states."""
    with torch.no_grad():
        for block in model.xattn.blocks.values():
            block.attn_gate.fill_(value)
            block.ffn_gate.fill_(-value)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_closed_gates_give_the_bare_llm_exactly(family):
    model, bare = tiny_pal("xattn", family)
    assert model.config.xattn_layer_indices() == [0, 2]
    assert all(float(b.attn_gate) == 0 and float(b.ffn_gate) == 0 for b in model.xattn.blocks.values())
    ids = torch.tensor(random_texts([11, 11]))
    with torch.no_grad():
        out = model(input_ids=ids, audio=random_audio(model.config, [5, 3])).logits
        assert torch.equal(out, bare(input_ids=ids).logits)
        _open_gates(model)  # and open gates do change them (the blocks run)
        assert not torch.allclose(model(input_ids=ids, audio=random_audio(model.config, [5, 3])).logits, out)


def test_one_block_equals_the_formula():
    model, _ = tiny_pal("xattn")
    _open_gates(model)
    block = model.xattn.blocks["2"]
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 5, 64, generator=gen, dtype=torch.float64)
    audio = torch.randn(2, 4, 64, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [False] * 4])  # row 1: a text-only example
    block = block.double()
    with torch.no_grad():
        got = block(hidden, *block.audio_kv(audio), mask)
    # Written out: y = x + tanh(a)·Wo·softmax(q kᵀ/√D_h over real audio)·v; z = y + tanh(f)·FFN(LN(y)).
    w = {n: p.detach() for n, p in block.named_parameters()}
    def ln(x, g, b):
        return (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt() * g + b

    heads, dh = 2, 32
    expected = []
    for b in range(2):
        x = hidden[b]
        q = (ln(x, w["attn_norm.weight"], w["attn_norm.bias"]) @ w["q_proj.weight"].T).view(5, heads, dh)
        k = (audio[b] @ w["k_proj.weight"].T).view(4, heads, dh)
        v = (audio[b] @ w["v_proj.weight"].T).view(4, heads, dh)
        out = torch.zeros(5, heads, dh, dtype=torch.float64)
        real = mask[b]
        if real.any():
            for h in range(heads):
                scores = q[:, h] @ k[real, h].T / math.sqrt(dh)
                out[:, h] = scores.softmax(-1) @ v[real, h]
        y = x + math.tanh(float(w["attn_gate"])) * (out.reshape(5, 64) @ w["o_proj.weight"].T)
        f = ln(y, w["ffn_norm.weight"], w["ffn_norm.bias"]) @ w["ffn.0.weight"].T
        f = torch.nn.functional.gelu(f) @ w["ffn.2.weight"].T
        expected.append(y + math.tanh(float(w["ffn_gate"])) * f)
    # reorder in float64: both sides double, u = 1.1e-16
    assert torch.allclose(got, torch.stack(expected), atol=1e-10)


@pytest.mark.parametrize("connector", ["xattn", "pal_xattn"])
def test_batch_equals_singles(connector):
    model, _ = tiny_pal(connector)
    _open_gates(model)
    texts = random_texts([9, 6])
    audio = random_audio(model.config, [6, 3])
    width = max(len(t) for t in texts)
    ids = torch.tensor([[0] * (width - len(t)) + t for t in texts])  # left padding
    attention = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in texts])
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=attention, audio=audio).logits
        for row, text in enumerate(texts):
            alone = model(input_ids=torch.tensor([text]), audio=slice_audio(audio, row)).logits
            # reorder: a padded batch against one row alone
            assert torch.allclose(batched[row, width - len(text):], alone[0], atol=1e-5)


@pytest.mark.parametrize("connector", ["xattn", "pal_xattn"])
def test_cached_decoding_equals_uncached(connector):
    model, _ = tiny_pal(connector)
    _open_gates(model)
    ids = torch.tensor(random_texts([8, 8]))
    audio = random_audio(model.config, [5, 2])
    with torch.no_grad():
        out = model.generate(input_ids=ids, audio=audio, max_new_tokens=6, do_sample=False)
        full = model(input_ids=out[:, :-1], audio=audio, use_cache=False).logits
    assert torch.equal(full[:, ids.shape[1] - 1 :].argmax(-1), out[:, ids.shape[1] :])
    calls = []  # the blocks' audio keys/values are computed once, at prefill
    hook = model.xattn.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model.generate(input_ids=ids, audio=audio, max_new_tokens=4, do_sample=False)
    hook.remove()
    assert calls == [1]


def test_only_the_trained_group_gets_gradients():
    from pal import set_trainable

    model, _ = tiny_pal("pal_xattn")
    _open_gates(model)
    set_trainable(model, ["xattn"])
    ids = torch.tensor(random_texts([7, 7]))
    model(input_ids=ids, audio=random_audio(model.config, [4, 4]), labels=ids).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == name.startswith("xattn."), name
    assert all(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters() if n.startswith("xattn."))


def test_save_and_load_are_exact(tmp_path):
    from pal import PALForConditionalGeneration

    model, _ = tiny_pal("xattn")
    _open_gates(model)
    model.save_pretrained(tmp_path)
    loaded = PALForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids = torch.tensor(random_texts([7, 7]))
    audio = random_audio(model.config, [4, 2])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, audio=audio).logits, loaded(input_ids=ids, audio=audio).logits)
