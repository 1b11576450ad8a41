"""`save_pretrained` then `from_pretrained` reproduces logits exactly, and the files are safetensors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_inputs, random_audio, random_texts, tiny_pal

from pal import PALForConditionalGeneration


@pytest.mark.parametrize("connector,family,lora", [
    ("lal", "llama", None), ("lal_lowrank", "llama", None), ("pal", "qwen2", None), ("plits_qformer", "llama", None),
    ("pal_summary", "llama", {"r": 4, "alpha": 8, "target_modules": ["k_proj", "v_proj"]}),
])
def test_save_then_load_reproduces_logits(tmp_path, connector, family, lora):
    model, _ = tiny_pal(connector, family, lora=lora)
    for name, p in model.named_parameters():  # zero-initialised factors made non-trivial, so losing them would show
        if "lora_B" in name or name.endswith(".up"):
            torch.nn.init.normal_(p, std=0.1)
    texts = random_texts([7, 9])
    audio = random_audio(model.config, [4, 6])
    batch = build_inputs(model, texts, audio)
    with torch.no_grad():
        before = model(**batch, audio=audio).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "pal" and saved["connector"] == model.config.connector
    loaded = PALForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        after = loaded(**batch, audio=audio).logits
    assert torch.equal(before, after)


def test_nested_sub_configs_round_trip_through_save_and_load(tmp_path):
    model, _ = tiny_pal("pal_xattn", lal_config={"projection": "lowrank", "rope": "none"}, xattn_config={"heads": 2})
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["lal_config"]["projection"] == "lowrank" and saved["xattn_config"]["heads"] == 2
    assert not {"lal_start_layer", "xattn_every", "n_summary"} & set(saved)  # written in the nested form only
    loaded = PALForConditionalGeneration.from_pretrained(tmp_path).eval()
    for route in ("plits", "lal", "xattn"):
        assert getattr(loaded.config, f"{route}_config") == getattr(model.config, f"{route}_config")
    assert loaded.config.lal_config.rope == "none" and loaded.config.xattn_layer_indices() == [2]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_the_auto_classes_load_a_saved_folder(tmp_path):
    """AutoTokenizer reads config.json through AutoConfig (unknown, the type fell back with a warning); the Auto model
    classes build the same model from the folder."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from pal import PALConfig

    model, _ = tiny_pal("pal")
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, PALConfig)
    assert config.to_diff_dict() == model.config.to_diff_dict()
    texts, audio = random_texts([7, 9]), random_audio(model.config, [4, 6])
    batch = build_inputs(model, texts, audio)
    with torch.no_grad():
        expected = model.eval()(**batch, audio=audio).logits
        for auto in (AutoModel, AutoModelForCausalLM):
            loaded = auto.from_pretrained(tmp_path).eval()
            assert type(loaded) is PALForConditionalGeneration
            assert torch.equal(loaded(**batch, audio=audio).logits, expected)
