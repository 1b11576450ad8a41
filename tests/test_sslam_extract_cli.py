"""`pal sslam extract` end to end: audio files → .npz matching the official reference features; its handling of bad
files and a full disk, with a tiny random encoder of our own (plumbing, so it runs on a clone alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch
from conftest import SHARED, official_fixture
from safetensors.torch import save_file

from pal.cli.main import main
from pal.encoders.sslam.model import PRESETS, SSLAMEncoder

FIXTURE = SHARED / "fixtures" / "sslam_reference"


def _write_inputs(tmp_path):
    inputs = np.load(official_fixture("sslam_reference") / "inputs.npz")
    paths = []
    for name in inputs["names"]:
        path = tmp_path / f"{name}.wav"
        soundfile.write(path, inputs[f"waveform__{name}"], 16000, subtype="FLOAT")  # lossless float32
        paths.append(str(path))
    return paths


def _tiny_checkpoint_and_clips(tmp_path) -> tuple[str, list[str]]:
    """A random 2-block SSLAM encoder's safetensors and two noise clips (2 s and 3 s)."""
    torch.manual_seed(0)
    save_file(SSLAMEncoder(PRESETS["tiny"]).state_dict(), str(tmp_path / "tiny.safetensors"))
    rng = np.random.default_rng(0)
    paths = []
    for name, seconds in (("first", 2.0), ("second", 3.0)):
        soundfile.write(tmp_path / f"{name}.wav", rng.normal(scale=0.1, size=int(16000 * seconds)), 16000)
        paths.append(str(tmp_path / f"{name}.wav"))
    return str(tmp_path / "tiny.safetensors"), paths


def test_extract_tokens_and_pooled(tmp_path):
    paths = _write_inputs(tmp_path)
    ref = np.load(FIXTURE / "reference_outputs.npz")
    ckpt = str(FIXTURE / "encoder_state_dict.safetensors")
    assert main(["sslam", "extract", "--checkpoint", ckpt, "--audio", *paths, "--out", str(tmp_path / "t.npz")]) == 0
    tokens = np.load(tmp_path / "t.npz")
    for name in ("a_speech_2.9s", "b_alarm_tone_10s", "c_speech_chirp_12s"):
        assert tokens[name].shape == (513, 768)
        # fixture: end to end from the waveform, the fixture README's 1e-4 (test_sslam_parity says why it holds on any CPU)
        assert np.abs(tokens[name] - ref[f"output__{name}"]).max() < 1e-4
    assert main(["sslam", "extract", "--checkpoint", ckpt, "--audio", paths[1], "--pool", "cls", "--layer", "1",
                 "--out", str(tmp_path / "p.npz")]) == 0
    pooled = np.load(tmp_path / "p.npz")["b_alarm_tone_10s"]
    assert pooled.shape == (768,)
    # fixture: as above
    assert np.abs(pooled - ref["block_outputs__b_alarm_tone_10s"][0, 0]).max() < 1e-4


def test_extract_writes_the_good_files_lists_the_bad_and_exits_non_zero(tmp_path, capsys):
    """One corrupt file and one clip shorter than a 25 ms fbank frame among good ones: the good ones are written, the
    bad ones listed with their reason, exit status 1 (before: nothing written, or a bare ValueError)."""
    ckpt, good = _tiny_checkpoint_and_clips(tmp_path)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    soundfile.write(tmp_path / "blip.wav", np.zeros(200, dtype=np.float32), 16000)  # 12.5 ms
    paths = [good[0], str(tmp_path / "broken.wav"), good[1], str(tmp_path / "blip.wav")]
    assert main(["sslam", "extract", "--checkpoint", ckpt, "--audio", *paths, "--out", str(tmp_path / "x.npz")]) == 1
    err = capsys.readouterr().err
    assert "broken.wav: unreadable or corrupt audio" in err
    assert "blip.wav: 12.5 ms long, shorter than the 25 ms needed" in err
    assert "2 of 4 file(s) skipped" in err
    written = np.load(tmp_path / "x.npz")
    assert sorted(written.files) == sorted(Path(p).stem for p in good[:2])


def test_extract_checks_the_output_before_encoding(tmp_path, capsys):
    (tmp_path / "plain-file").write_text("not a folder")
    out = tmp_path / "plain-file" / "x.npz"
    # The checkpoint does not exist either: the output is checked first, before any loading or encoding.
    assert main(["sslam", "extract", "--checkpoint", str(tmp_path / "missing.pt"), "--audio", "a.wav",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "plain-file" in err and "missing.pt" not in err


def test_full_disk_is_said_in_words_and_keeps_the_earlier_file(tmp_path, capsys, monkeypatch):
    import errno

    ckpt, paths = _tiny_checkpoint_and_clips(tmp_path)
    out = tmp_path / "x.npz"
    out.write_bytes(b"an earlier result")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    assert main(["sslam", "extract", "--checkpoint", ckpt, "--audio", paths[0], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: no space left on device" in err and "MiB free" in err
    assert out.read_bytes() == b"an earlier result"
