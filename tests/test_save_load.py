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


# The connector settings as `config.json` held them before the sub-configs (flat keys, every one written out).
FLAT_CONFIG = {
    "connector": "pal", "routes": {"sslam": "lal", "whisper": "plits", "clap": "xattn"},
    "encoder_dims": {"sslam": 24, "whisper": 16, "clap": 8}, "audio_norm": "none", "audio_norm_positions": None,
    "lora": None, "projector": "qformer", "mlp_downsample": 1, "qformer_latents": 2, "qformer_layers": 2,
    "qformer_heads": 2, "qformer_dim": None, "n_summary": 3, "plits_output_norm": True, "lal_start_layer": 3,
    "lal_layers": None, "lal_rope": "prefix", "lal_projection": "linear", "lal_projection_rank": 64,
    "lal_recompute_audio": True, "lal_audio_bias": "log_count", "xattn_every": 3, "xattn_layers": None,
    "xattn_heads": None, "xattn_ffn_mult": 4, "model_type": "pal", "architectures": ["PALForConditionalGeneration"],
    "tie_word_embeddings": True, "transformers_version": "5.23.0", "dtype": "float32",
}
NESTED_SETTINGS = {
    "connector": "pal", "routes": {"sslam": "lal", "whisper": "plits", "clap": "xattn"},
    "encoder_dims": {"sslam": 24, "whisper": 16, "clap": 8},
    "plits_config": {"projector": "qformer", "qformer_latents": 2, "qformer_heads": 2, "n_summary": 3},
    "lal_config": {"start_layer": 3}, "xattn_config": {"every": 3},
}


def test_a_config_json_from_before_the_sub_configs_loads_into_the_same_model(tmp_path):
    """A folder saved with flat connector keys builds the same config, the same modules and the same logits."""
    from conftest import tiny_llm

    from pal import PALConfig

    llm = tiny_llm()
    written_by_hf = {"architectures": ["PALForConditionalGeneration"], "dtype": "float32"}
    nested = PALConfig(text_config=llm.config.to_dict(), **NESTED_SETTINGS, **written_by_hf)
    old = PALConfig.from_dict({**FLAT_CONFIG, "text_config": llm.config.to_dict()})
    assert old.to_dict() == nested.to_dict()
    assert (old.plits_config.n_summary, old.lal_config.start_layer, old.xattn_config.every) == (3, 3, 3)
    same_llm = tiny_llm()
    torch.manual_seed(1)
    model = PALForConditionalGeneration(nested, llm=llm).eval()
    torch.manual_seed(1)
    built_from_old = PALForConditionalGeneration(old, llm=same_llm).eval()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), built_from_old.state_dict().values()))
    assert list(model.state_dict()) == list(built_from_old.state_dict())

    model.save_pretrained(tmp_path)  # the weights as they were, with the config.json of before
    (tmp_path / "config.json").write_text(json.dumps({**FLAT_CONFIG, "text_config": llm.config.to_dict()}))
    loaded = PALForConditionalGeneration.from_pretrained(tmp_path).eval()
    for route in ("plits", "lal", "xattn"):
        assert getattr(loaded.config, f"{route}_config") == getattr(model.config, f"{route}_config")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    texts, audio = random_texts([7, 9]), random_audio(model.config, [4, 6])
    batch = build_inputs(model, texts, audio)
    with torch.no_grad():
        assert torch.equal(model(**batch, audio=audio).logits, loaded(**batch, audio=audio).logits)


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
