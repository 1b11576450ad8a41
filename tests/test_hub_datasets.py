"""Data as users have it, read in place: a Hugging Face `save_to_disk` folder, the Hub's Parquet files and WebDataset
tar shards, each built here with its library's own writer (`datasets`, `webdataset`) around real encoded audio (WAV
at 16 kHz, FLAC at 48 kHz), converted by `pal data convert hf` / `wds`, then read by the manifest's validation, the
feature cache and training, the audio never written out as files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile
import torch

from pal.cli.main import main


def _encoded(freq: float, rate: int, fmt: str, seconds: float = 0.5) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format=fmt)
    return buffer.getvalue()


CLIPS = [_encoded(220, 16000, "WAV"), _encoded(880, 48000, "FLAC"), b"not audio at all", _encoded(440, 16000, "WAV")]
CAPTIONS = ["A low tone.", "A high tone.", "Noise.", ""]


def _dataset():
    import datasets

    # Written as the Hub's Audio column is stored ({bytes, path}), then cast to `Audio` (encoding through `datasets`
    # would need torchcodec, which this machine does not have; reading with decode=False does not).
    stored = datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                "caption": datasets.Value("string"), "clip_id": datasets.Value("string")})
    data = datasets.Dataset.from_dict({"audio": [{"bytes": b, "path": None} for b in CLIPS], "caption": CAPTIONS,
                                       "clip_id": [f"c{i}" for i in range(len(CLIPS))]}, features=stored)
    return data.cast_column("audio", datasets.Audio())


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def saved(tmp_path):
    import datasets

    folder = tmp_path / "data" / "tones-hf"
    datasets.DatasetDict({"train": _dataset(), "validation": _dataset().select([0])}).save_to_disk(str(folder))
    return folder


def test_a_saved_dataset_converts_with_its_audio_in_place_and_bad_rows_set_aside(saved, capsys):
    out = saved.parent / "train.jsonl"
    assert main(["data", "convert", "hf", str(saved), "--split", "train", "--caption-columns", "caption",
                 "--id-column", "clip_id", "--out", str(out)]) == 0
    rows = _rows(out)
    # relative to the manifest's folder, so data/ moves as one; the rows point into the dataset
    assert [r["audio"] for r in rows] == [f"dataset://tones-hf/train/audio/{i}" for i in (0, 1)]
    assert [r["id"] for r in rows] == ["c0", "c1"] and rows[1]["references"] == ["A high tone."]
    skipped = json.loads((saved.parent / "train.skipped.json").read_text())
    # row 2's bytes are no audio (found by the manifest's validation, naming the row); row 3 has no caption
    assert [s["where"] for s in skipped] == ["tones-hf train row 3", "c2"]
    assert "no caption in columns ['caption']" in skipped[0]["why"]
    assert "tones-hf/train/audio/2" in skipped[1]["why"] and "not a readable audio file" in skipped[1]["why"]
    assert not list(saved.parent.rglob("*.wav")) and not list(saved.parent.rglob("*.flac"))  # nothing written out
    assert "2 examples written" in capsys.readouterr().out


def test_a_rows_audio_reads_as_the_same_bytes_in_a_file_would(saved, tmp_path):
    from pal.common.audio_source import audio_hash, resolve_audio
    from pal.common.hashing import file_hash
    from pal.encoders.audio import load_audio

    ref = resolve_audio("dataset://tones-hf/train/audio/1", saved.parent / "m.jsonl")
    (tmp_path / "same.flac").write_bytes(CLIPS[1])
    assert audio_hash(ref) == file_hash(tmp_path / "same.flac")  # the feature cache's key: where it lies is no part
    for rate in (16000, 24000):  # resampled from 48 kHz once, exactly as the file is
        assert torch.equal(load_audio(ref, sample_rate=rate), load_audio(tmp_path / "same.flac", sample_rate=rate))


def test_missing_splits_columns_and_rows_are_named(saved, tmp_path):
    from pal.common.audio_source import AudioSourceError, audio_source
    from pal.data.convert import convert

    with pytest.raises(ValueError, match=r"no split 'test'; its splits: \['train', 'validation'\]"):
        convert("hf", saved, tmp_path / "m.jsonl", ".", split="test", caption_columns=["caption"])
    with pytest.raises(ValueError, match=r"no column\(s\) \['text'\] in split train"):
        convert("hf", saved, tmp_path / "m.jsonl", ".", split="train", transcript_column="text")
    with pytest.raises(ValueError, match="name the text columns one way"):
        convert("hf", saved, tmp_path / "m.jsonl", ".", split="train")
    with pytest.raises(AudioSourceError, match=r"row 9 does not exist \(split train has 4 rows\)"):
        audio_source(f"dataset://{saved}/train/audio/9")
    assert not (tmp_path / "m.jsonl").exists()


def test_the_hubs_parquet_files_convert_too(tmp_path):
    folder = tmp_path / "hub-copy"
    (folder / "data").mkdir(parents=True)
    _dataset().select([0, 1]).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    out = tmp_path / "train.jsonl"
    assert main(["data", "convert", "hf", str(folder), "--caption-columns", "caption", "--out", str(out)]) == 0
    assert [r["audio"] for r in _rows(out)] == [f"dataset://hub-copy/train/audio/{i}" for i in (0, 1)]


@pytest.fixture
def shards(tmp_path):
    """Two shards written by webdataset's TarWriter: clips 0-1 in the first; in the second clip 2 (bytes that are no
    audio), clip 3 (no caption) and a sample without audio."""
    import webdataset

    folder = tmp_path / "data" / "shards"
    folder.mkdir(parents=True)
    samples = [{"__key__": f"clip{i}", "flac" if i == 1 else "wav": CLIPS[i], "json": {"caption": CAPTIONS[i]}}
               for i in range(4)] + [{"__key__": "silent", "json": {"caption": "Nothing."}}]
    for name, part in (("train-000.tar", samples[:2]), ("train-001.tar", samples[2:])):
        with webdataset.TarWriter(str(folder / name)) as sink:
            for sample in part:
                sink.write(sample)
    return folder


def test_webdataset_shards_convert_with_their_audio_in_place(shards):
    from pal.common.audio_source import audio_hash, resolve_audio
    from pal.common.hashing import file_hash
    from pal.encoders.audio import load_audio

    out = shards.parent / "train.jsonl"
    assert main(["data", "convert", "wds", str(shards), "--caption-columns", "caption", "--out", str(out)]) == 0
    rows = _rows(out)
    assert [(r["id"], r["audio"]) for r in rows] == [("clip0", "tar://shards/train-000.tar#clip0.wav"),
                                                     ("clip1", "tar://shards/train-000.tar#clip1.flac")]
    skipped = json.loads((shards.parent / "train.skipped.json").read_text())
    assert [s["where"] for s in skipped] == ["shards train-001.tar clip3", "shards train-001.tar silent", "clip2"]
    assert "no audio member" in skipped[1]["why"] and "not a readable audio file" in skipped[2]["why"]
    ref = resolve_audio(rows[1]["audio"], out)
    (shards.parent / "same.flac").write_bytes(CLIPS[1])
    assert audio_hash(ref) == file_hash(shards.parent / "same.flac")
    assert torch.equal(load_audio(ref), load_audio(shards.parent / "same.flac"))


def test_a_shard_cut_short_keeps_the_samples_before_the_damage(shards, tmp_path):
    import webdataset

    from pal.data.convert import convert

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    with webdataset.TarWriter(str(damaged / "a.tar")) as sink:
        for n in range(4):
            sink.write({"__key__": f"s{n}", "wav": CLIPS[0], "json": {"caption": "A low tone."}})
    whole = (damaged / "a.tar").read_bytes()
    (damaged / "a.tar").write_bytes(whole[: len(whole) // 2])
    summary = convert("wds", damaged, tmp_path / "m.jsonl", ".", caption_columns=["caption"])
    assert summary["converted"] >= 1 and any("could not be read to its end" in r for r in summary["reasons"])


def test_converted_datasets_and_shards_train_and_fill_the_feature_cache(saved, shards, curriculum_env, tmp_path):
    from conftest import curriculum_dict, train_in_process, write_yaml

    from pal.common.manifest_lines import audio_paths
    from pal.encoders.ensemble import EnsembleConfig
    from pal.encoders.feature_cache import FeatureCache

    hub, tars = saved.parent / "hub.jsonl", saved.parent / "tars.jsonl"
    assert main(["data", "convert", "hf", str(saved), "--split", "train", "--caption-columns", "caption",
                 "--out", str(hub)]) == 0
    assert main(["data", "convert", "wds", str(shards), "--caption-columns", "caption", "--out", str(tars)]) == 0
    config = curriculum_dict(curriculum_env, stages=1, steps=2, batch_size=2, val_manifest=None, num_samples=0,
                             checkpoint_every=2, data=[{"manifest": str(hub)}, {"manifest": str(tars)}])
    (stage,) = train_in_process(write_yaml(tmp_path / "c.yaml", config), tmp_path / "run")
    assert stage["steps"] == 2 and stage["bad_samples"] == 0
    ensemble = EnsembleConfig.from_dict({"encoders": {"sslam": {"type": "sslam", "preset": "tiny"}}})
    cache = FeatureCache(tmp_path / "cache", ensemble)
    clips = audio_paths(hub) + audio_paths(tars)
    # the same two clips in the dataset and in the shards: one cache entry each
    assert cache.build(clips, progress=False) == {"cached": 2, "added": 2, "bad": 0}
    tokens, mask = cache.get(clips)["sslam"]
    assert tokens.shape[0] == 4 and mask.any(dim=1).all()
    assert torch.equal(tokens[0], tokens[2]) and torch.equal(tokens[1], tokens[3])


def test_a_dataset_with_two_audio_columns_converts_to_questions_about_two_clips(tmp_path, capsys):
    """`--audio-column a b`: each row a question about its two clips (`audios`, in column order), one `<audio>` per
    clip in front of the question; the manifest validates and each clip reads as its own bytes."""
    import datasets

    from pal.common.audio_source import audio_source
    from pal.data.manifest import validate_manifest

    stored = datasets.Features({"first": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                "second": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                "q": datasets.Value("string"), "a": datasets.Value("string")})
    pairs = datasets.Dataset.from_dict({"first": [{"bytes": CLIPS[0], "path": None}, {"bytes": CLIPS[3], "path": None}],
                                        "second": [{"bytes": CLIPS[1], "path": None}, {"bytes": CLIPS[0], "path": None}],
                                        "q": ["Which is higher?", "Which is lower?"], "a": ["the second", "the first"]},
                                       features=stored)
    folder = tmp_path / "pairs-hf"
    pairs.cast_column("first", datasets.Audio()).cast_column("second", datasets.Audio()).save_to_disk(str(folder))
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "convert", "hf", str(folder), "--audio-column", "first", "second", "--question-column", "q",
                 "--answer-column", "a", "--out", str(out)]) == 0
    rows = _rows(out)
    assert [r["audios"] for r in rows] == [[f"dataset://pairs-hf/train/{c}/{i}" for c in ("first", "second")]
                                           for i in (0, 1)]
    assert rows[0]["messages"][0]["content"] == "<audio>\n<audio>\nWhich is higher?"
    examples = validate_manifest(out)
    assert [audio_source(a) for a in examples[1].audios] == [CLIPS[3], CLIPS[0]]
    assert main(["data", "convert", "wds", str(tmp_path), "--audio-column", "wav", "flac", "--out", str(out)]) == 2
    assert "several audio columns are read from a Hugging Face dataset (hf) only" in capsys.readouterr().err
