"""The feature cache: identical features to encoding on the fly, resume, stale detection, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch

from encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
from encoders.feature_cache import FeatureCache
from cli.main import main

CONFIG = {"encoders": {"sslam": {"type": "sslam", "preset": "tiny", "long_audio": "split"}}}


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate((1.0, 12.0, 3.0)):
        soundfile.write(tmp_path / f"clip{i}.wav", (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32),
                        16000)
        rows.append({"audio": f"clip{i}.wav"})
    (tmp_path / "broken.wav").write_bytes(b"garbage")
    rows.append({"audio": "broken.wav"})
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path, manifest


def test_cached_features_equal_on_the_fly_features(corpus):
    root, manifest = corpus
    config = EnsembleConfig.from_dict(CONFIG)
    (root / "enc.yaml").write_text(json.dumps(CONFIG))  # JSON is valid YAML
    assert main(["features", "--manifest", str(manifest), "--config", str(root / "enc.yaml"),
                 "--out", str(root / "cache"), "--batch-size", "2"]) == 0
    index = json.loads((root / "cache" / "index.json").read_text())
    assert len(index["entries"]) == 3 and list(index["bad"]) == [str(root / "broken.wav")]
    cache = FeatureCache(root / "cache", config)
    paths = [root / f"clip{i}.wav" for i in range(3)]
    cached = cache.get(paths)
    fresh = AudioEncoderEnsemble(config).encode_files(paths)
    tokens, mask = cached["sslam"]
    assert mask.sum(-1).tolist() == [513, 1026, 513]  # the 12 s clip is split into two windows
    torch.testing.assert_close(tokens, fresh["sslam"][0], atol=1e-5, rtol=0)
    assert torch.equal(mask, fresh["sslam"][1])


def test_resume_skips_cached_clips(corpus):
    root, manifest = corpus
    config = EnsembleConfig.from_dict(CONFIG)
    from encoders.feature_cache import read_manifest

    paths = read_manifest(manifest)
    first = FeatureCache(root / "cache", config).build(paths[:1], progress=False)
    second = FeatureCache(root / "cache", config).build(paths, progress=False)
    assert (first["added"], second["added"], second["cached"], second["bad"]) == (1, 2, 3, 1)


@pytest.mark.parametrize("front_end", [{"long_audio": "truncate"}, {"window_frames": 512}])
def test_stale_cache_is_detected(corpus, front_end):
    root, manifest = corpus
    from encoders.feature_cache import read_manifest

    FeatureCache(root / "cache", EnsembleConfig.from_dict(CONFIG)).build(read_manifest(manifest)[:1], progress=False)
    other = {"encoders": {"sslam": {**CONFIG["encoders"]["sslam"], **front_end}}}
    with pytest.raises(ValueError, match="built for other encoder configurations"):
        FeatureCache(root / "cache", EnsembleConfig.from_dict(other))


def test_a_new_features_version_makes_the_old_cache_an_error(corpus, monkeypatch):
    """Code that computes tokens differently (e.g. a new fbank formula) under unchanged settings served stale tokens."""
    from encoders import identity
    from encoders.feature_cache import read_manifest

    FeatureCache(root := corpus[0] / "cache", EnsembleConfig.from_dict(CONFIG)).build(read_manifest(corpus[1])[:1],
                                                                                      progress=False)
    monkeypatch.setattr(identity, "FEATURES_VERSION", identity.FEATURES_VERSION + 1)
    with pytest.raises(ValueError, match="built for other encoder configurations"):
        FeatureCache(root, EnsembleConfig.from_dict(CONFIG))


def test_moved_weights_still_hit_the_cache(corpus):
    """The identity hashed the weights' path (and file name): moving them invalidated every cached feature."""
    from safetensors.torch import save_file

    from encoders.sslam.model import PRESETS, SSLAMEncoder

    root, _ = corpus
    torch.manual_seed(0)
    (root / "a").mkdir()
    save_file({k: v.contiguous() for k, v in SSLAMEncoder(PRESETS["tiny"]).state_dict().items()},
              str(root / "a" / "weights.safetensors"))
    before = EnsembleConfig.from_dict({"encoders": {"sslam": {"type": "sslam", "path": str(root / "a" /
                                                                                           "weights.safetensors")}}})
    cache = FeatureCache(root / "cache", before)
    cache.build([root / "clip0.wav"], progress=False)
    cached = cache.get([root / "clip0.wav"])["sslam"][0]
    (root / "b").mkdir()
    (root / "a" / "weights.safetensors").rename(root / "b" / "renamed.safetensors")
    after = EnsembleConfig.from_dict({"encoders": {"sslam": {"type": "sslam", "path": str(root / "b" /
                                                                                          "renamed.safetensors")}}})
    moved = FeatureCache(root / "cache", after)
    assert root / "clip0.wav" in moved and torch.equal(moved.get([root / "clip0.wav"])["sslam"][0], cached)


def test_every_setting_that_changes_tokens_is_in_the_identity(tmp_path):
    from dataclasses import fields, replace

    from encoders.ensemble import EncoderSpec
    from encoders.identity import NOT_IDENTITY, encoder_hash

    base = EncoderSpec(type="sslam", preset="tiny")
    others = {"type": "whisper", "preset": "small", "layer": 1, "window_frames": 512, "context_seconds": 10,
              "long_audio": "split"}
    assert set(others) == {f.name for f in fields(EncoderSpec)} - set(NOT_IDENTITY)  # a new field needs a value here
    changed = [name for name, value in others.items()
               if encoder_hash(replace(base, **{name: value}), "float32") != encoder_hash(base, "float32")]
    assert changed == list(others)
    assert encoder_hash(base, "bfloat16") != encoder_hash(base, "float32")
    assert encoder_hash(replace(base, trust_checkpoint=True), "float32") == encoder_hash(base, "float32")


def test_changed_audio_is_not_served_from_the_cache(corpus):
    root, manifest = corpus
    from encoders.feature_cache import read_manifest

    cache = FeatureCache(root / "cache", EnsembleConfig.from_dict(CONFIG))
    cache.build(read_manifest(manifest)[:1], progress=False)
    soundfile.write(root / "clip0.wav", np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(KeyError, match="not in the feature cache"):
        cache.get([root / "clip0.wav"])


def test_a_repaired_file_leaves_the_bad_list(corpus):
    root, manifest = corpus
    from encoders.feature_cache import read_manifest

    config = EnsembleConfig.from_dict(CONFIG)
    first = FeatureCache(root / "cache", config).build(read_manifest(manifest), progress=False)
    assert first["bad"] == 1
    soundfile.write(root / "broken.wav", np.zeros(16000, dtype=np.float32), 16000)  # the user fixes the file
    second = FeatureCache(root / "cache", config).build(read_manifest(manifest), progress=False)
    assert (second["added"], second["bad"], second["cached"]) == (1, 0, 4)
    assert json.loads((root / "cache" / "index.json").read_text())["bad"] == {}


def test_a_build_killed_part_way_keeps_what_it_encoded(tmp_path):
    """A shard held 256 clips and was written only when full: a kill at 20 of 40 clips lost all 20."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        soundfile.write(tmp_path / f"c{i}.wav", (0.1 * rng.standard_normal(4000)).astype(np.float32), 16000)
        paths.append(tmp_path / f"c{i}.wav")
    config = EnsembleConfig.from_dict(CONFIG)
    ensemble = AudioEncoderEnsemble(config)
    real_encode, encoded = ensemble.encode_loaded, []

    def killed_after_20(clips):
        if len(encoded) >= 20:
            raise KeyboardInterrupt("killed")
        encoded.extend(clips)
        return real_encode(clips)

    ensemble.encode_loaded = killed_after_20
    with pytest.raises(KeyboardInterrupt):
        FeatureCache(tmp_path / "cache", config).build(paths, ensemble=ensemble, batch_size=4, flush_every=8,
                                                       progress=False)
    kept = FeatureCache(tmp_path / "cache", config)
    done = len(kept.index["entries"])
    assert done == 16  # 20 clips encoded, written every 8: everything up to the last write survives
    rest = kept.build(paths, batch_size=4, progress=False)
    assert (rest["added"], rest["cached"]) == (40 - done, 40)
    cached = FeatureCache(tmp_path / "cache", config).get(paths[:3] + paths[-3:])
    fresh = AudioEncoderEnsemble(config).encode_files(paths[:3] + paths[-3:])
    torch.testing.assert_close(cached["sslam"][0], fresh["sslam"][0], atol=1e-5, rtol=0)


def test_an_unwritable_cache_folder_is_refused_before_encoding(corpus, capsys):
    root, manifest = corpus
    (root / "a-file").write_text("")
    (root / "enc.yaml").write_text(json.dumps(CONFIG))
    assert main(["features", "--manifest", str(manifest), "--config", str(root / "enc.yaml"),
                 "--out", str(root / "a-file" / "cache")]) == 2
    assert "cannot write" in capsys.readouterr().err
