"""Bad input gets a clear error that says what is wrong and what to do."""

from __future__ import annotations

import pytest
import torch
from conftest import build_inputs, random_audio, random_texts, tiny_llm, tiny_pal
from transformers import GPT2Config, GPT2LMHeadModel

from pal import PALConfig, PALForConditionalGeneration


def test_plits_audio_without_placeholder():
    model, _ = tiny_pal("plits")
    ids = torch.tensor(random_texts([8]))
    with pytest.raises(ValueError, match="no `<audio>` placeholder"):
        model(input_ids=ids, audio=random_audio(model.config, [4]))


def test_placeholder_count_must_match_audio_tokens():
    model, _ = tiny_pal("plits")
    audio = random_audio(model.config, [4])
    batch = build_inputs(model, random_texts([8]), random_audio(model.config, [6]))  # expanded for 6, given 4
    with pytest.raises(ValueError, match="6 audio placeholder positions but 4 PLITS audio tokens"):
        model(**batch, audio=audio)


def test_mismatched_encoder_name():
    model, _ = tiny_pal("lal")
    tokens, mask = random_audio(model.config, [4])["sslam"]
    with pytest.raises(ValueError, match=r"name encoders \['clap'\].*built for \['sslam'\]"):
        model(input_ids=torch.tensor(random_texts([6])), audio={"clap": (tokens, mask)})


def test_mismatched_encoder_dimension():
    model, _ = tiny_pal("lal")
    with pytest.raises(ValueError, match=r"expected \[B, N, 24\]"):
        model(input_ids=torch.tensor(random_texts([6])), audio={"sslam": (torch.randn(1, 4, 32), torch.ones(1, 4))})


def test_mismatched_batch_size():
    model, _ = tiny_pal("lal")
    audio = random_audio(model.config, [4, 4])
    with pytest.raises(ValueError, match="but 1 audio rows are expected"):
        model(input_ids=torch.tensor(random_texts([6])), audio=audio)


def test_unsupported_llm_architecture():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="'gpt2' is not supported.*Llama, Qwen2 or Mistral"):
        PALForConditionalGeneration(PALConfig(text_config=gpt2.config.to_dict(), encoder_dims={"a": 8}), llm=gpt2)


@pytest.mark.parametrize("options,message", [
    (dict(connector="pal", routes={"sslam": "lal", "clap": "plits"}), r"not in encoder_dims"),
    (dict(connector="pal", routes={"sslam": "prepend"}), r"expected one of \('plits', 'lal', 'xattn'\)"),
    (dict(connector="pal"), r"needs `routes`"),
    ({"connector": "lal", "lal_config": {"layers": [1, 9]}},
     r"lal_config.layers = \[1, 9\]: expected distinct layer indices in \[0, 3\]"),
    ({"connector": "lal", "lal_config": {"rope": "alibi"}},
     r"lal_config.rope = 'alibi': expected one of \['prefix', 'none'\]"),
    ({"connector": "plits", "plits_config": {"downsample": 2}},  # a key a sub-config does not have, named
     r"plits_config: unknown key\(s\) \['downsample'\]; known keys: \[.*'mlp_downsample'"),
    ({"connector": "xattn", "xattn_config": {"heads": 5}},
     r"xattn_config.heads = 5: expected a divisor of the hidden size 64"),
    ({"connector": "lal", "lal_start_layer": 1},  # a key of a sub-config given at the top level
     r"unknown PALConfig key\(s\) \['lal_start_layer'\]; known keys: \[.*'lal_config'"),
    (dict(connector="lal", routes={"sslam": "lal"}), r"only read with connector='pal'"),
    (dict(connector="prepend"), r"connector"),
])
def test_bad_connector_config(options, message):
    llm = tiny_llm()
    with pytest.raises(Exception, match=message):
        PALConfig(text_config=llm.config.to_dict(), encoder_dims={"sslam": 24}, **options)


def test_unknown_config_key_is_rejected():
    llm = tiny_llm()
    with pytest.raises(Exception, match="lal_start"):
        PALConfig(text_config=llm.config.to_dict(), encoder_dims={"sslam": 24}, lal_start=2)


def test_a_cache_holding_lal_audio_refuses_new_audio():
    """It used to keep the old audio's keys/values silently and answer about the wrong clip."""
    from pal import PALCache

    model, _ = tiny_pal("lal")
    ids = torch.tensor(random_texts([6]))
    cache = PALCache(config=model.llm.config)
    with torch.no_grad():
        model(input_ids=ids, audio=random_audio(model.config, [4], seed=0), past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="already holds LAL audio"):
            model(input_ids=ids[:, -1:], audio=random_audio(model.config, [4], seed=1), past_key_values=cache,
                  use_cache=True)
