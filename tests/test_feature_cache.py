"""The feature cache: identical features to encoding on the fly, resume, stale detection, bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from pal.cli.main import main
from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
from pal.encoders.feature_cache import FeatureCache

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
    assert main(["features", "build", "--manifest", str(manifest), "--config", str(root / "enc.yaml"),
                 "--out", str(root / "cache"), "--batch-size", "2"]) == 0
    index = json.loads((root / "cache" / "index.json").read_text())
    assert len(index["entries"]) == 3 and list(index["bad"]) == [str(root / "broken.wav")]
    cache = FeatureCache(root / "cache", config)
    paths = [root / f"clip{i}.wav" for i in range(3)]
    cached = cache.get(paths)
    fresh = AudioEncoderEnsemble(config).encode_files(paths)
    tokens, mask = cached["sslam"]
    assert mask.sum(-1).tolist() == [513, 1026, 513]  # the 12 s clip is split into two windows
    # reorder: cached tokens were encoded in other batches (other GEMM shapes); outputs O(1)
    torch.testing.assert_close(tokens, fresh["sslam"][0], atol=1e-5, rtol=0)
    assert torch.equal(mask, fresh["sslam"][1])


def test_resume_skips_cached_clips(corpus):
    root, manifest = corpus
    config = EnsembleConfig.from_dict(CONFIG)
    from pal.common.manifest_lines import audio_paths

    paths = audio_paths(manifest)
    first = FeatureCache(root / "cache", config).build(paths[:1], progress=False)
    second = FeatureCache(root / "cache", config).build(paths, progress=False)
    assert (first["added"], second["added"], second["cached"], second["bad"]) == (1, 2, 3, 1)


@pytest.mark.parametrize("front_end", [{"long_audio": "truncate"}, {"window_frames": 512}])
def test_stale_cache_is_detected(corpus, front_end):
    root, manifest = corpus
    from pal.common.manifest_lines import audio_paths

    FeatureCache(root / "cache", EnsembleConfig.from_dict(CONFIG)).build(audio_paths(manifest)[:1], progress=False)
    other = {"encoders": {"sslam": {**CONFIG["encoders"]["sslam"], **front_end}}}
    with pytest.raises(ValueError, match="built for other encoder configurations"):
        FeatureCache(root / "cache", EnsembleConfig.from_dict(other))


def test_a_new_features_version_makes_the_old_cache_an_error(corpus, monkeypatch):
    """Code that computes tokens differently (e.g. a new fbank formula) under unchanged settings served stale tokens."""
    from pal.common.manifest_lines import audio_paths
    from pal.encoders import identity

    FeatureCache(root := corpus[0] / "cache", EnsembleConfig.from_dict(CONFIG)).build(audio_paths(corpus[1])[:1],
                                                                                      progress=False)
    monkeypatch.setattr(identity, "FEATURES_VERSION", identity.FEATURES_VERSION + 1)
    with pytest.raises(ValueError, match="built for other encoder configurations"):
        FeatureCache(root, EnsembleConfig.from_dict(CONFIG))


def test_moved_weights_still_hit_the_cache(corpus):
    """The identity hashed the weights' path (and file name): moving them invalidated every cached feature."""
    from safetensors.torch import save_file

    from pal.encoders.sslam.model import PRESETS, SSLAMEncoder

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

    from pal.encoders.ensemble import EncoderSpec
    from pal.encoders.identity import NOT_IDENTITY, encoder_hash

    base = EncoderSpec(type="sslam", preset="tiny")
    others = {"type": "whisper", "preset": "small", "layer": 1, "window_frames": 512, "context_seconds": 10,
              "long_audio": "truncate"}
    assert set(others) == {f.name for f in fields(EncoderSpec)} - set(NOT_IDENTITY)  # a new field needs a value here
    changed = [name for name, value in others.items()
               if encoder_hash(replace(base, **{name: value}), "float32") != encoder_hash(base, "float32")]
    assert changed == list(others)
    assert encoder_hash(base, "bfloat16") != encoder_hash(base, "float32")
    assert encoder_hash(replace(base, trust_checkpoint=True), "float32") == encoder_hash(base, "float32")


def test_changed_audio_is_not_served_from_the_cache(corpus):
    root, manifest = corpus
    from pal.common.manifest_lines import audio_paths

    cache = FeatureCache(root / "cache", EnsembleConfig.from_dict(CONFIG))
    cache.build(audio_paths(manifest)[:1], progress=False)
    soundfile.write(root / "clip0.wav", np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(KeyError, match="not in the feature cache"):
        cache.get([root / "clip0.wav"])


def test_a_repaired_file_leaves_the_bad_list(corpus):
    root, manifest = corpus
    from pal.common.manifest_lines import audio_paths

    config = EnsembleConfig.from_dict(CONFIG)
    first = FeatureCache(root / "cache", config).build(audio_paths(manifest), progress=False)
    assert first["bad"] == 1
    soundfile.write(root / "broken.wav", np.zeros(16000, dtype=np.float32), 16000)  # the user fixes the file
    second = FeatureCache(root / "cache", config).build(audio_paths(manifest), progress=False)
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
    # reorder: as above
    torch.testing.assert_close(cached["sslam"][0], fresh["sslam"][0], atol=1e-5, rtol=0)


def test_an_unwritable_cache_folder_is_refused_before_encoding(corpus, capsys):
    root, manifest = corpus
    (root / "a-file").write_text("")
    (root / "enc.yaml").write_text(json.dumps(CONFIG))
    assert main(["features", "build", "--manifest", str(manifest), "--config", str(root / "enc.yaml"),
                 "--out", str(root / "a-file" / "cache")]) == 2
    assert "cannot write" in capsys.readouterr().err


class RecordingOpen:
    """safetensors.safe_open that records which shards are opened, by which process, and which tensors are read."""

    opened: list[str] = []
    read: list[str] = []

    def __init__(self, path, framework):
        from safetensors import safe_open

        self.handle, self.pid = safe_open(path, framework=framework), os.getpid()
        RecordingOpen.opened.append(Path(path).name)

    def get_tensor(self, name):
        RecordingOpen.read.append(name)
        return self.handle.get_tensor(name)


def _tensors_held(value) -> int:
    """Tensors reachable from a value through dicts, lists and object attributes (safe_open handles excluded)."""
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, dict):
        return sum(_tensors_held(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensors_held(v) for v in value)
    return _tensors_held(vars(value)) if isinstance(value, FeatureCache) else 0


@pytest.fixture
def three_shards(tmp_path, monkeypatch):
    """Six clips in three shards of two; reads go through RecordingOpen. → (cache root, clips, config)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        soundfile.write(tmp_path / f"c{i}.wav", (0.1 * rng.standard_normal(4000 + 800 * i)).astype(np.float32), 16000)
        paths.append(tmp_path / f"c{i}.wav")
    config = EnsembleConfig.from_dict(CONFIG)
    FeatureCache(tmp_path / "cache", config).build(paths, batch_size=2, shard_size=2, progress=False)
    monkeypatch.setattr("pal.encoders.feature_cache.safe_open", RecordingOpen)
    monkeypatch.setattr(RecordingOpen, "opened", [])
    monkeypatch.setattr(RecordingOpen, "read", [])
    return tmp_path / "cache", paths, config


def _stored(root, path) -> torch.Tensor:
    """The tokens [n, D_e] a cache folder holds for a clip, read with safetensors directly."""
    from safetensors.torch import load_file

    from pal.common.hashing import file_hash

    index = json.loads((root / "index.json").read_text())
    key = file_hash(path)
    return load_file(root / index["entries"][key])[f"sslam/{index['encoders']['sslam']}/{key}"]


def test_reads_open_few_shards_and_touch_only_the_requested_tensors(three_shards):
    """get() loaded whole shards and kept every one it had read resident forever."""
    root, paths, config = three_shards
    cache = FeatureCache(root, config, max_open=2)
    for i in (0, 2, 1, 4, 3):  # shards 0, 1, 0, 2, 1 (shard k holds clips 2k and 2k + 1)
        tokens, mask = cache.get([paths[i]])["sslam"]
        assert torch.equal(tokens[0][mask[0]], _stored(root, paths[i]))
        assert len(cache._handles) <= 2 and _tensors_held(cache) == 0
    # Opening shard 2 closed shard 1, the least recently used (not shard 0, the first opened); reading 1 reopened it.
    assert RecordingOpen.opened == [f"shard-0000{k}.safetensors" for k in (0, 1, 2, 1)]
    assert list(cache._handles) == ["shard-00002.safetensors", "shard-00001.safetensors"]
    assert len(RecordingOpen.read) == 5  # one tensor per clip read: nothing else of the shards


def test_a_forked_worker_opens_its_own_shards(three_shards):
    """A DataLoader worker forked after the parent read must not share the parent's open handles."""
    root, paths, config = three_shards
    cache = FeatureCache(root, config)
    expected = cache.get(paths[:3])["sslam"][0]

    def read(_):
        tokens = cache.get(paths[:3])["sslam"][0]
        return os.getpid(), [h.pid for h in cache._handles.values()], tokens

    loader = torch.utils.data.DataLoader(range(1), batch_size=None, num_workers=1, multiprocessing_context="fork",
                                         collate_fn=read)
    [(pid, openers, tokens)] = list(loader)
    assert openers == [pid, pid] and pid != os.getpid()
    assert torch.equal(tokens, expected)
    assert [h.pid for h in cache._handles.values()] == [os.getpid(), os.getpid()]


def test_a_pickled_cache_carries_no_open_shard(three_shards):
    import pickle

    root, paths, config = three_shards
    cache = FeatureCache(root, config)
    expected = cache.get(paths)["sslam"]
    copy = pickle.loads(pickle.dumps(cache))
    assert len(copy._handles) == 0 and _tensors_held(copy) == 0 and len(cache._handles) == 3
    tokens, mask = copy.get(paths)["sslam"]
    assert torch.equal(tokens, expected[0]) and torch.equal(mask, expected[1])


def test_manifest_parts_are_disjoint_fixed_and_cover_the_manifest():
    from pal.encoders.feature_cache import manifest_part

    clips = [Path(f"{k}.wav") for k in range(7)]
    parts = [manifest_part(clips, i, 3) for i in range(3)]
    assert [[int(p.stem) for p in part] for part in parts] == [[0, 3, 6], [1, 4], [2, 5]]
    assert manifest_part(clips + [Path("7.wav")], 1, 3) == parts[1] + [Path("7.wav")]  # appending moves nothing
    with pytest.raises(ValueError, match=r"part 3/3: expected i/n with 0 <= i < n"):
        manifest_part(clips, 3, 3)


def _cache_files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def test_parts_built_apart_merge_into_the_single_run(corpus, capsys):
    """`pal features --shard i/n` on each part, then `pal features merge`: the cache one run builds, rerun-safe."""
    root, manifest = corpus
    (root / "enc.yaml").write_text(json.dumps(CONFIG))
    build = ["features", "build", "--manifest", str(manifest), "--config", str(root / "enc.yaml"), "--batch-size", "1"]
    assert main(build + ["--out", str(root / "single")]) == 0
    for part in ("0/2", "1/2"):
        assert main(build + ["--out", str(root / "parts"), "--shard", part]) == 0
    parts = [root / "parts" / "part-0-of-2", root / "parts" / "part-1-of-2"]
    assert "pal features merge --out" in capsys.readouterr().out
    first, second = (json.loads((p / "index.json").read_text()) for p in parts)
    assert (len(first["entries"]), len(second["entries"]), list(second["bad"])) == (2, 1, [str(root / "broken.wav")])

    merged = root / "merged"
    assert main(["features", "merge", "--out", str(merged), str(parts[0])]) == 0  # a merge stopped after one part
    assert main(["features", "merge", "--out", str(merged), *map(str, parts)]) == 0
    files = _cache_files(merged)
    assert main(["features", "merge", "--out", str(merged), *map(str, parts)]) == 0  # again: nothing changes
    assert _cache_files(merged) == files
    assert "3 clips cached (0 merged in), 1 unreadable" in capsys.readouterr().out

    single, joined = (json.loads((r / "index.json").read_text()) for r in (root / "single", merged))
    assert joined["encoders"] == single["encoders"]
    assert set(joined["entries"]) == set(single["entries"]) and joined["bad"] == single["bad"]
    config = EnsembleConfig.from_dict(CONFIG)
    one_run, two_parts = FeatureCache(root / "single", config), FeatureCache(merged, config)
    for path in [root / f"clip{i}.wav" for i in range(3)]:
        (a, mask_a), (b, mask_b) = one_run.get([path])["sslam"], two_parts.get([path])["sslam"]
        assert torch.equal(a, b) and torch.equal(mask_a, mask_b)


def test_merging_parts_of_other_encoders_is_an_error_naming_the_part(corpus, capsys):
    root, manifest = corpus
    from pal.common.manifest_lines import audio_paths
    from pal.encoders.feature_cache import merge_caches

    clips = audio_paths(manifest)
    FeatureCache(root / "a", EnsembleConfig.from_dict(CONFIG)).build(clips[:1], progress=False)
    other = {"encoders": {"sslam": {**CONFIG["encoders"]["sslam"], "long_audio": "truncate"}}}
    FeatureCache(root / "b", EnsembleConfig.from_dict(other)).build(clips[2:3], progress=False)
    with pytest.raises(ValueError, match=f"{root / 'b'} was built for encoders .* {root / 'a'} for"):
        merge_caches(root / "merged", [root / "a", root / "b"])
    assert not (root / "merged" / "index.json").exists()  # checked before anything was written
    assert main(["features", "merge", "--out", str(root / "merged"), str(root / "a"), str(root / "nowhere")]) == 2
    assert f"{root / 'nowhere'} is not a feature cache" in capsys.readouterr().err


def test_a_merge_killed_part_way_resumes_without_leftovers(corpus, monkeypatch):
    root, manifest = corpus
    import pal.encoders.feature_cache as feature_cache
    from pal.common.manifest_lines import audio_paths

    clips, config = audio_paths(manifest), EnsembleConfig.from_dict(CONFIG)
    parts = [feature_cache.part_folder(root / "parts", i, 2) for i in range(2)]
    for i, part in enumerate(parts):
        FeatureCache(part, config).build(feature_cache.manifest_part(clips, i, 2), progress=False)
    real_write = feature_cache.atomic_write_json

    def killed(path, data):  # the first shard is linked in, then the process dies before its index is written
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(feature_cache, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        feature_cache.merge_caches(root / "merged", parts)
    assert [p.name for p in (root / "merged").glob("shard-*")] == ["shard-00000.safetensors"]
    monkeypatch.setattr(feature_cache, "atomic_write_json", real_write)
    assert feature_cache.merge_caches(root / "merged", parts) == {"cached": 3, "added": 3, "bad": 1}
    index = json.loads((root / "merged" / "index.json").read_text())
    assert sorted(p.name for p in (root / "merged").glob("shard-*")) == sorted(set(index["entries"].values()))
