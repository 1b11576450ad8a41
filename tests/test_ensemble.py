"""The encoder ensemble with tiny random SSLAM, CLAP and Whisper, feeding a PAL model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch

from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
from pal.encoders.whisper import SAMPLES_PER_TOKEN


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, WhisperConfig, WhisperFeatureExtractor, WhisperModel

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    whisper = WhisperModel(WhisperConfig(
        vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    ))
    whisper.save_pretrained(root / "whisper")
    WhisperFeatureExtractor().save_pretrained(root / "whisper")
    clap = ClapModel(ClapConfig(
        audio_config=dict(patch_embeds_hidden_size=16, hidden_size=128, depths=[1, 1, 1, 1],
                          num_attention_heads=[1, 2, 4, 8], projection_dim=32),
        text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, projection_dim=32),
        projection_dim=32,
    ))
    clap.save_pretrained(root / "clap")
    ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(root / "clap")
    return root


@pytest.fixture(scope="module")
def ensemble(hf_folders):
    config = EnsembleConfig.from_dict({"encoders": {
        "sslam": {"type": "sslam", "preset": "tiny"},
        "clap": {"type": "clap", "path": str(hf_folders / "clap")},
        "whisper": {"type": "whisper", "path": str(hf_folders / "whisper")},
    }})
    return AudioEncoderEnsemble(config)


@pytest.fixture
def clips(tmp_path):
    paths = []
    for i, seconds in enumerate((1.5, 4.0)):
        t = np.arange(int(48000 * seconds)) / 48000
        soundfile.write(tmp_path / f"c{i}.wav", (0.2 * np.sin(2 * np.pi * 300 * (i + 1) * t)).astype(np.float32), 48000)
        paths.append(tmp_path / f"c{i}.wav")
    return paths


def test_one_call_gives_every_encoder(ensemble, clips):
    out = ensemble.encode_files(clips)
    assert set(out) == {"sslam", "clap", "whisper"}
    assert ensemble.dims == {"sslam": 128, "clap": 128, "whisper": 32}
    for name, (tokens, mask) in out.items():
        assert tokens.shape[0] == 2 and tokens.shape[-1] == ensemble.dims[name] and mask.shape == tokens.shape[:2]
    assert out["sslam"][0].shape[1] == 513 and out["sslam"][1].all()
    whisper_real = out["whisper"][1].sum(-1).tolist()
    assert whisper_real == [math.ceil(16000 * s / SAMPLES_PER_TOKEN) for s in (1.5, 4.0)]  # 75 and 200 of 1500
    assert out["clap"][1].all()


def test_whisper_tokens_are_the_hf_encoder_output(ensemble, clips, hf_folders):
    from transformers import WhisperFeatureExtractor, WhisperModel

    from pal.encoders.audio import load_audio

    wave = load_audio(clips[0])
    tokens, mask = ensemble([wave])["whisper"]
    model = WhisperModel.from_pretrained(hf_folders / "whisper").eval()
    feats = WhisperFeatureExtractor.from_pretrained(hf_folders / "whisper")(wave.numpy(), sampling_rate=16000,
                                                                           return_tensors="pt")
    with torch.no_grad():
        ref = model.encoder(feats["input_features"]).last_hidden_state
    real = math.ceil(wave.shape[-1] / SAMPLES_PER_TOKEN)  # rows are cut to their real tokens: no 30 s padding
    assert tokens.shape[1] == real == int(mask.sum())
    torch.testing.assert_close(tokens, ref[:, :real])


@pytest.mark.parametrize("policy", ["truncate", "split"])
def test_whisper_audio_over_30_s_follows_the_policy(hf_folders, policy):
    """Whisper audio past its 30 s window is truncated or split as configured (it used to raise mid-training), and
    the ensemble counts what it did."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    config = EnsembleConfig.from_dict({"encoders": {
        "whisper": {"type": "whisper", "path": str(hf_folders / "whisper"), "long_audio": policy}}})
    ensemble = AudioEncoderEnsemble(config)
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(16000 * 35).astype(np.float32)) * 0.1
    tokens, mask = ensemble([wave])["whisper"]
    model = WhisperModel.from_pretrained(hf_folders / "whisper").eval()
    extractor = WhisperFeatureExtractor.from_pretrained(hf_folders / "whisper")
    windows = [wave[: 16000 * 30]] + ([wave[16000 * 30 :]] if policy == "split" else [])
    with torch.no_grad():
        refs = [model.encoder(extractor(w.numpy(), sampling_rate=16000, return_tensors="pt")["input_features"])
                .last_hidden_state[0, : math.ceil(w.shape[-1] / SAMPLES_PER_TOKEN)] for w in windows]
    expected = torch.cat(refs)  # 1500 tokens, then 250 for the last 5 s when split
    assert tokens.shape[1] == expected.shape[0] == int(mask.sum()) == (1750 if policy == "split" else 1500)
    torch.testing.assert_close(tokens[0], expected)
    events = ensemble.long_audio_events({16000: wave})
    # a truncation is counted with the seconds it drops: 35 s - 30 s
    assert events == ({"long_audio_whisper_truncated": 1, "long_audio_whisper_truncated_seconds": 5.0}
                      if policy == "truncate" else {"long_audio_whisper_split": 1})
    assert ensemble.token_counts({16000: wave}) == {"whisper": int(mask.sum())}


def test_a_ten_minute_recording_is_encoded_window_by_window_in_time_order(hf_folders):
    """The default (`long_audio: split`): every window of a 10-minute recording, each window's tokens those of the
    window encoded alone, joined in time order; the token count known from the length before any encoder runs; a
    clip shorter than one window gives exactly what the unwindowed encoder gives."""
    from pal.encoders.sslam.frontend import FrontendConfig, model_inputs

    config = EnsembleConfig.from_dict({"encoders": {
        "sslam": {"type": "sslam", "preset": "tiny", "window_frames": 400},
        "whisper": {"type": "whisper", "path": str(hf_folders / "whisper")},
        "clap": {"type": "clap", "path": str(hf_folders / "clap")}}})
    assert {s.long_audio for s in config.encoders.values()} == {"split"}
    ensemble = AudioEncoderEnsemble(config)
    rng = np.random.default_rng(1)
    ten_minutes = torch.from_numpy(rng.standard_normal(16000 * 600).astype(np.float32)) * 0.1
    clip = ensemble.at_member_rates(ten_minutes)
    counts = ensemble.token_counts(clip)
    out = ensemble.encode_loaded([clip])
    assert counts == {name: int(mask.sum()) for name, (_, mask) in out.items()}
    # SSLAM: 150 windows of 4 s (400 frames), each its CLS and 200 patches, in time order
    sslam = ensemble.members["sslam"]
    assert counts["sslam"] == 150 * 201
    for k in (0, 77, 149):  # a window of the recording encoded alone equals its slice of the joined tokens
        alone, _ = sslam([ten_minutes[k * 64000: (k + 1) * 64000 + 240]])  # the window's 400 frames
        torch.testing.assert_close(out["sslam"][0][0, k * 201: (k + 1) * 201], alone[0])  # exact: the same ops
    assert counts["whisper"] == 20 * 1500  # 20 windows of 30 s, every 20 ms a token
    # shorter than one window: the unwindowed (truncating) encoder's tokens exactly
    short = ten_minutes[: 16000 * 3]
    reference = FrontendConfig(target_length=400, long_audio="truncate")
    spec, _ = model_inputs([short], reference)
    torch.testing.assert_close(ensemble([short])["sslam"][0][0], sslam.windows(spec)[0], rtol=0, atol=0)


def test_members_are_frozen(ensemble):
    for member in ensemble.members.values():
        module = getattr(member, "model", member)
        assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_ensemble_feeds_a_pal_model(ensemble, clips):
    from conftest import tiny_llm

    from pal import PALConfig, PALForConditionalGeneration

    llm = tiny_llm()
    config = PALConfig(text_config=llm.config.to_dict(), encoder_dims=ensemble.dims, connector="pal",
                       routes={"sslam": "lal", "clap": "lal", "whisper": "plits"},
                       plits_config={"mlp_downsample": 4})
    model = PALForConditionalGeneration(config, llm=llm).eval()
    audio = ensemble.encode_files(clips)
    from conftest import build_inputs, random_texts

    batch = build_inputs(model, random_texts([6, 9]), audio)
    with torch.no_grad():
        logits = model(**batch, audio=audio).logits
    assert torch.isfinite(logits).all()


def test_config_errors():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['checkpoint'\]"):
        EnsembleConfig.from_dict({"encoders": {"s": {"type": "sslam", "checkpoint": "x"}}})
    with pytest.raises(ValueError, match=r"expected one of \['sslam', 'clap', 'whisper'\]"):
        EnsembleConfig.from_dict({"encoders": {"s": {"type": "beats"}}})
    with pytest.raises(ValueError, match="needs `path`"):
        AudioEncoderEnsemble(EnsembleConfig.from_dict({"encoders": {"w": {"type": "whisper"}}}))
