"""`pal sslam extract` end to end: audio files → .npz matching the official reference features."""

from __future__ import annotations


import numpy as np
import soundfile

from pal.cli import main

from conftest import SHARED

FIXTURE = SHARED / "fixtures" / "sslam_reference"


def _write_inputs(tmp_path):
    inputs = np.load(FIXTURE / "inputs.npz")
    paths = []
    for name in inputs["names"]:
        path = tmp_path / f"{name}.wav"
        soundfile.write(path, inputs[f"waveform__{name}"], 16000, subtype="FLOAT")  # lossless float32
        paths.append(str(path))
    return paths


def test_extract_tokens_and_pooled(tmp_path):
    ref = np.load(FIXTURE / "reference_outputs.npz")
    paths = _write_inputs(tmp_path)
    ckpt = str(FIXTURE / "encoder_state_dict.safetensors")
    assert main(["sslam", "extract", "--checkpoint", ckpt, "--audio", *paths, "--out", str(tmp_path / "t.npz")]) == 0
    tokens = np.load(tmp_path / "t.npz")
    for name in ("a_speech_2.9s", "b_alarm_tone_10s", "c_speech_chirp_12s"):
        assert tokens[name].shape == (513, 768)
        assert np.abs(tokens[name] - ref[f"output__{name}"]).max() < 1e-4
    assert main(["sslam", "extract", "--checkpoint", ckpt, "--audio", paths[1], "--pool", "cls", "--layer", "1",
                 "--out", str(tmp_path / "p.npz")]) == 0
    pooled = np.load(tmp_path / "p.npz")["b_alarm_tone_10s"]
    assert pooled.shape == (768,)
    assert np.abs(pooled - ref["block_outputs__b_alarm_tone_10s"][0, 0]).max() < 1e-4


def test_extract_reports_bad_audio(tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio at all")
    ckpt = str(FIXTURE / "encoder_state_dict.safetensors")
    assert main(["sslam", "extract", "--checkpoint", ckpt, "--audio", str(bad), "--out", str(tmp_path / "x.npz")]) == 2
    assert "broken.wav: unreadable or corrupt audio" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
