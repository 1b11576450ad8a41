"""LAL invariants (docs/design.md#invariants), each checked against the bare HF LLM or a formula written here."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_audio, random_texts, tiny_pal


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_lal_without_audio_equals_bare_llm(family):
    model, bare = tiny_pal("lal", family)
    ids = torch.tensor(random_texts([12, 12]))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, bare(input_ids=ids).logits)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_lal_start_layer_past_last_layer_equals_bare_llm(family):
    model, bare = tiny_pal("lal", family, lal_config={"start_layer": 4})  # the tiny LLM has layers 0..3
    assert model.lal is None and model.config.lal_layer_indices() == []
    ids = torch.tensor(random_texts([10, 10]))
    audio = random_audio(model.config, [5, 3])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, audio=audio).logits, bare(input_ids=ids).logits)


@pytest.mark.parametrize("connector", ["lal", "pal"])
def test_ffn_never_sees_an_audio_position(connector):
    model, _ = tiny_pal(connector)
    ids = torch.tensor(random_texts([9, 9]))
    audio = random_audio(model.config, [6, 4])
    from conftest import build_inputs

    inputs = build_inputs(model, ids.tolist(), audio)
    text_len = inputs["input_ids"].shape[1]  # PAL's in-sequence PLITS tokens are part of the text sequence
    seen = []
    hooks = [layer.mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
             for layer in model.llm.model.layers]
    with torch.no_grad():
        model(**inputs, audio=audio)
        assert seen == [text_len] * 4
        seen.clear()
        model.generate(**inputs, audio=audio, max_new_tokens=3, do_sample=False)
    for h in hooks:
        h.remove()
    assert seen[:4] == [text_len] * 4 and set(seen[4:]) == {1}


def _rope(x, positions, theta):
    """Rotary embedding, half-split convention of Llama/Qwen2: x [S, H, D], positions [S]."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * inv_freq[None, :]  # [S, D/2]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _reference_layer_attention(layer, x, audio, config, rope: bool, log_count: bool, offset: float = 0.0):
    """docs/design.md#formula for one example: softmax(Q [K_a; K_t]^T / sqrt(D_h) + mask) [V_a; V_t] W_o; with
    `log_count` every audio logit is offset by -log(N_a) (lal_injection.py, "Start-up"), and by -`offset`
    (`audio_offset`).

    x: normed text states [T, d]; audio: layer-projected, not yet normed [N_a, d]; rope: audio keys rotated
    ("prefix") or not ("none"). Float64 throughout.
    """
    attn = layer.self_attn
    proj = {n: getattr(attn, f"{n}_proj") for n in "qkvo"}

    def linear(n, inp):  # x W^T + b, with the bias where the family has one (Qwen2's q/k/v)
        out = inp @ proj[n].weight.double().T
        return out + proj[n].bias.double() if proj[n].bias is not None else out

    norm = layer.input_layernorm
    audio_n = audio / torch.sqrt(audio.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.double()
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    hd = config.hidden_size // heads
    t, n_a = x.shape[0], audio.shape[0]
    q = linear("q", x).view(t, heads, hd)
    k = linear("k", torch.cat([audio_n, x])).view(n_a + t, kv_heads, hd)
    v = linear("v", torch.cat([audio_n, x])).view(n_a + t, kv_heads, hd)
    theta = config.rope_parameters["rope_theta"]
    q = _rope(q, torch.arange(t), theta)
    if rope:  # "prefix": audio at -n_a .. -1, just before the text at 0 .. t-1
        k = _rope(k, torch.cat([torch.arange(-n_a, 0), torch.arange(t)]), theta)
    else:  # "none": audio keys carry no position; text keys are rotated as in the bare LLM
        k = torch.cat([k[:n_a], _rope(k[n_a:], torch.arange(t), theta)])
    group = heads // kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [S, H, D]
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
    if log_count:
        scores[:, :, :n_a] -= math.log(n_a)
    scores[:, :, :n_a] -= offset
    allowed = torch.cat([torch.ones(t, n_a, dtype=torch.bool), torch.ones(t, t, dtype=torch.bool).tril()], dim=1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(t, heads * hd)
    return linear("o", out)


@pytest.mark.parametrize("family,rope,bias,projection,offset", [
    ("llama", "prefix", "log_count", "linear", 0.0), ("qwen2", "prefix", "log_count", "linear", 0.0),
    ("mistral", "prefix", "log_count", "linear", 0.0), ("llama", "none", "log_count", "linear", 0.0),
    ("llama", "prefix", "none", "linear", 0.0), ("llama", "prefix", "log_count", "lowrank", 0.0),
    ("llama", "prefix", "log_count", "linear", 5.0), ("qwen2", "prefix", "none", "linear", 2.5),
])
def test_lal_layer_attention_matches_formula(family, rope, bias, projection, offset):
    model, _ = tiny_pal("lal", family, lal_config=dict(rope=rope, audio_bias=bias, projection=projection,
                                                       projection_rank=3, audio_offset=offset))
    layer_idx = 2
    layer = model.llm.model.layers[layer_idx]
    if family == "qwen2":  # Qwen2's q/k/v carry biases, zero at init: make them count
        for n in "qkv":
            torch.nn.init.normal_(getattr(layer.self_attn, f"{n}_proj").bias, std=0.5)
    if projection == "lowrank":  # U starts at zero; make each layer's correction count
        for name, p in model.lal.named_parameters():
            if name.endswith(".up"):
                torch.nn.init.normal_(p, std=0.5)
    ids = torch.tensor(random_texts([11, 11]))
    audio = random_audio(model.config, [6, 3])
    captured = {}

    def hook(module, args, kwargs, out):
        captured["x"], captured["out"] = kwargs["hidden_states"], out[0]

    handle = layer.self_attn.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=ids, audio=audio)
    handle.remove()
    tokens, mask = audio["sslam"]
    projector = model.lal.projections["sslam"]
    head = projector.heads[str(layer_idx)]
    for row in range(2):
        real = tokens[row, : int(mask[row].sum())]
        with torch.no_grad():
            if projection == "lowrank":  # A_l = T + T·Vᵀ·Uᵀ, T the shared projection (U made non-zero above)
                shared = projector.trunk(real)
                projected = (shared + shared @ head.down.T @ head.up.T).double()
            else:
                projected = head(real).double()
        expected = _reference_layer_attention(
            layer, captured["x"][row].double(), projected, model.config.text_config, rope == "prefix",
            bias == "log_count", offset,
        )
        # reorder: our float32 layer against a float64 formula: float32's own rounding, 2e-5 abs + 1e-4 rel at O(1)
        torch.testing.assert_close(captured["out"][row].double(), expected, atol=2e-5, rtol=1e-4)


def test_layers_before_start_layer_are_the_bare_llm():
    model, bare = tiny_pal("lal", lal_config={"start_layer": 2})
    ids = torch.tensor(random_texts([10, 10]))
    audio = random_audio(model.config, [6, 4])
    with torch.no_grad():
        ours = model(input_ids=ids, audio=audio, output_hidden_states=True).hidden_states
        ref = bare(input_ids=ids, output_hidden_states=True).hidden_states
    # hidden_states[0] is the embedding output, hidden_states[i + 1] the output of layer i.
    for i in range(3):
        assert torch.equal(ours[i], ref[i]), f"layer {i - 1} output differs before start_layer"
    assert not torch.allclose(ours[3], ref[3]), "layer 2 (the first audio layer) should see the audio"


def test_explicit_layer_list_injects_only_there():
    model, bare = tiny_pal("lal", lal_config={"layers": [1, 3]})
    assert sorted(model.lal.layers) == [1, 3]
    ids = torch.tensor(random_texts([8, 8]))
    audio = random_audio(model.config, [5, 5])
    with torch.no_grad():
        ours = model(input_ids=ids, audio=audio, output_hidden_states=True).hidden_states
        ref = bare(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.equal(ours[1], ref[1]) and not torch.allclose(ours[2], ref[2])


def test_a_wrapped_llm_is_taken_over_as_the_docstring_says_and_a_deep_copy_stays_bare():
    """PALForConditionalGeneration's docstring: the LLM passed in becomes `model.llm` (no second copy in memory), its
    attention implementation becomes LAL's and LoRA is attached to it; a `copy.deepcopy` taken first stays bare."""
    import copy

    from conftest import tiny_llm

    from pal import PALConfig, PALForConditionalGeneration

    llm = tiny_llm("llama")
    llm.config._attn_implementation = "sdpa"
    kept = copy.deepcopy(llm)
    config = PALConfig(text_config=llm.config.to_dict(), encoder_dims={"sslam": 24}, connector="lal",
                       lal_config={"start_layer": 1}, lora={"r": 2, "alpha": 4, "target_modules": ["q_proj"]})
    model = PALForConditionalGeneration(config, llm=llm)
    assert model.llm is llm and llm.config._attn_implementation == "lal_sdpa"
    assert any("lora_A" in name for name, _ in llm.named_parameters())
    assert kept.config._attn_implementation == "sdpa" and not any("lora" in n for n, _ in kept.named_parameters())
    ids = torch.tensor(random_texts([9]))
    with torch.no_grad():  # LoRA starts as the identity (lora_B = 0) and LAL without audio is plain attention
        assert torch.equal(model(input_ids=ids).logits, kept(input_ids=ids).logits)
