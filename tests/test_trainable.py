"""Only the selected parameter groups receive gradients; frozen ones are bit-identical after an optimizer step."""

from __future__ import annotations

import pytest
import torch
from conftest import build_inputs, random_audio, random_texts, tiny_pal

from pal import set_trainable
from pal.trainable import TRAINABLE_GROUPS

CASES = [
    ("lal", ["connector"], lambda n: n.startswith("lal.")),
    ("pal", ["connector", "llm_attention"], lambda n: n.startswith(("lal.", "plits.")) or ".self_attn." in n),
    ("plits", ["plits", "llm_ffn"], lambda n: n.startswith("plits.") or ".mlp." in n),
    ("lal", ["connector", "lora"], lambda n: n.startswith("lal.") or ".lora_" in n),
    ("lal", ["llm"], lambda n: n.startswith("llm.")),
]


@pytest.mark.parametrize("connector,groups,expect_trained", CASES)
def test_only_selected_groups_train(connector, groups, expect_trained):
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj"]} if "lora" in groups else None
    model, _ = tiny_pal(connector, lora=lora)
    model.train()
    counts = set_trainable(model, groups)
    assert all(n > 0 for n in counts.values())
    texts = random_texts([8, 6])
    audio = random_audio(model.config, [5, 4])
    batch = build_inputs(model, texts, audio)
    labels = batch["input_ids"].masked_fill(batch["audio_token_mask"] | (batch["attention_mask"] == 0), -100)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    # LoRA's B starts at zero, so A gets no gradient on the first step; a larger lr and two steps move both.
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        loss = model(**batch, audio=audio, labels=labels).loss
        loss.backward()
        for name, p in model.named_parameters():
            if not expect_trained(name):
                assert p.grad is None, f"frozen parameter {name} received a gradient"
        optimizer.step()
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        if expect_trained(name):
            assert p.requires_grad and not torch.equal(p, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(p, before[name]), f"frozen parameter {name} changed"


def test_a_frozen_lora_adapter_gets_no_dropout_and_a_training_one_its_own():
    """Dropout on a frozen adapter's input only adds noise (and CPU time) where nothing learns: off while LoRA is
    frozen, so a connector-only step sees the function inference computes; the configured rate is back once LoRA
    trains."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.3, "target_modules": ["q_proj", "k_proj", "v_proj"]}
    model, _ = tiny_pal("lal", lora=lora)
    with torch.no_grad():  # trained adapters, as after a LoRA stage: a fresh one's lora_B = 0 would hide its dropout
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    dropouts = [m for n, m in model.named_modules() if ".lora_dropout." in n]
    assert len(dropouts) == 3 * model.config.text_config.num_hidden_layers
    batch = build_inputs(model, random_texts([8, 6]), audio := random_audio(model.config, [5, 4]))

    def logits(training: bool) -> torch.Tensor:
        with torch.no_grad():
            return model.train(training)(**batch, audio=audio).logits

    inference = logits(False)
    assert not torch.allclose(logits(True), inference, atol=1e-4)  # the adapters' dropout is on in training
    set_trainable(model, ["connector"])
    assert all(d.p == 0.0 for d in dropouts)
    assert torch.equal(logits(True), inference)
    set_trainable(model, ["connector", "lora"])
    assert all(d.p == 0.3 for d in dropouts)
    assert not torch.allclose(logits(True), inference, atol=1e-4)


def test_unknown_or_empty_group_is_an_error():
    model, _ = tiny_pal("lal")
    with pytest.raises(ValueError, match="unknown trainable group.*choose from"):
        set_trainable(model, ["connector", "adapters"])
    with pytest.raises(ValueError, match="attach LoRA first"):
        set_trainable(model, ["lora"])
    assert "connector" in TRAINABLE_GROUPS


@pytest.mark.parametrize("connector", ["pal", "pal_xattn", "xattn", "pal_summary"])
def test_each_route_is_one_connector_under_its_name_owning_its_group(connector):
    """The connector contract: the module of route r is `model.r`, says `route == r`, holds the parameters of
    trainable group r, and together they are the group "connector"; the side routes hand their keys/values to the
    layers under `cache_key`."""
    from pal.configuration_pal import ROUTES

    model, _ = tiny_pal(connector)
    present = [r for r in ROUTES if getattr(model, r) is not None]
    assert present and all(getattr(model, r).route == r for r in present)
    names = [n for n, _ in model.named_parameters()]
    for r in ROUTES:
        owned = {f"{r}.{n}" for n, _ in getattr(model, r).named_parameters()} if r in present else set()
        assert {n for n in names if TRAINABLE_GROUPS[r](n)} == owned
    assert {n for n in names if TRAINABLE_GROUPS["connector"](n)} == {n for n in names if n.split(".")[0] in present}
    routes = {model.config.route_of(name) for name in model.config.encoder_dims}
    assert {c.route for c in model.side_connectors()} == routes - {"plits"}
    assert {c.cache_key for c in model.side_connectors()} <= {"lal_audio", "xattn_audio"}


def test_every_named_connector_preset_builds_the_connector_it_names():
    from conftest import tiny_llm

    from pal import PALConfig, PALForConditionalGeneration
    from pal.presets import CONNECTOR_PRESETS, connector_preset

    built = {}
    for name in CONNECTOR_PRESETS:
        sizes = {"plits_config": {"n_summary": 2, "qformer_heads": 2}} if name == "pal" else {}
        config = PALConfig(text_config=tiny_llm("llama", 0).config.to_dict(), encoder_dims={"sslam": 24},
                           **connector_preset(name, lal_config={"start_layer": 1}, **sizes))
        model = PALForConditionalGeneration(config, llm=tiny_llm("llama", 0))
        built[name] = {r for r in ("plits", "lal", "xattn") if getattr(model, r) is not None}
    assert built == {"plits": {"plits"}, "lal": {"lal"}, "lal_stored": {"lal"}, "lal_lowrank": {"lal"},
                     "pal": {"plits", "lal"}, "xattn": {"xattn"}}
    with pytest.raises(ValueError, match=r"unknown connector preset 'lal_fast'; choose from \['lal', "):
        connector_preset("lal_fast")
