"""The training data path: manifests as memory-mapped Arrow tables, epochs that are real passes, length grouping,
batches as a pure function of (seed, stage, batch) split across ranks, DataLoader workers, and a run resumed
mid-epoch that ends with the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import curriculum_dict, train_in_process, write_yaml
from safetensors.torch import load_file


def _examples(n: int, prefix: str, lengths=None):
    from pal.data.manifest import Example

    lengths = lengths if lengths is not None else [1] * n
    return [Example(f"{prefix}{i}", None, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    "qa", int(lengths[i]), f"{prefix}.jsonl", i + 1) for i in range(n)]


def _data(sources, global_batch, group=False, seed=0):
    from pal.curriculum.stage_data import StageData
    from pal.data.manifest import examples_dataset

    return StageData([(examples_dataset(ex), w, ex[0].source) for ex, w in sources], seed, 0, global_batch, group)


def test_an_epoch_is_every_example_once_reshuffled_and_weights_repeat_per_epoch():
    a, b = _examples(10, "a"), _examples(6, "b")
    data = _data([(a, 1.0), (b, 0.5)], global_batch=4)
    assert data.batches_per_epoch == 4  # 10 + 3 rows per epoch, in batches of 4 (the last one wraps)
    ids = [[data[i].id for i in data.epoch(e).reshape(-1)] for e in range(2)]
    for epoch in ids:
        first = epoch[:13]  # the epoch proper; the 3 rows after it wrap around to its start
        assert sorted(i for i in first if i[0] == "a") == sorted(e.id for e in a)  # every a-example exactly once
        assert len({i for i in first if i[0] == "b"}) == 3 and epoch[13:] == epoch[:3]
    b0, b1 = ({i for i in epoch[:13] if i[0] == "b"} for epoch in ids)
    assert b0 | b1 == {e.id for e in b} and not b0 & b1  # a fresh half of b each epoch
    assert ids[0][:13] != ids[1][:13]  # reshuffled


def test_length_grouping_puts_similar_lengths_together():
    lengths = np.random.default_rng(0).integers(1, 200, 256)
    spread = {}
    for group in (False, True):
        data = _data([(_examples(256, "x", lengths), 1.0)], global_batch=8, group=group)
        batches = data.epoch(0)
        assert sorted(batches.reshape(-1).tolist()) == list(range(256))
        spread[group] = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread[True] < spread[False] / 4, spread


def test_global_batches_are_a_pure_function_and_ranks_split_them():
    from pal.curriculum.stage_data import RankBatches

    def make():
        return _data([(_examples(10, "a"), 1.0), (_examples(7, "b"), 2.0)], global_batch=6, group=True, seed=3)

    one, other = make(), make()
    forward = [one.global_batch(g).tolist() for g in range(12)]
    backward = [other.global_batch(g).tolist() for g in reversed(range(12))][::-1]  # epochs visited out of order
    assert forward == backward
    shares = [list(RankBatches(one, 5, 9, rank, 3)) for rank in range(2)]
    assert [r0 + r1 for r0, r1 in zip(*shares)] == forward[5:9]


def _processor(root):
    from transformers import AutoConfig

    from pal import PALConfig, PALProcessor
    from pal.llm import load_tokenizer

    return PALProcessor(load_tokenizer(root / "llm"), PALConfig(
        text_config=AutoConfig.from_pretrained(root / "llm").to_dict(), encoder_dims={"sslam": 8}), "right")


def test_manifest_table_is_memory_mapped_reused_and_rebuilt_when_the_manifest_changes(curriculum_env, tmp_path):
    from pal.data.manifest import ManifestError, check_lengths, example_from_row, manifest_table, validate_manifest

    manifest = tmp_path / "m.jsonl"
    rows = [json.loads(line) for line in (curriculum_env / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio"] = str(curriculum_env / row["audio"]) if "audio" in row else None
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    processor = _processor(curriculum_env)
    table, notes, _ = manifest_table(manifest, processor, 1024, "reject", 0.025, tmp_path / "tables")
    assert table.cache_files and not notes  # backed by a file on disk, mapped rather than read into memory
    expected, _ = check_lengths(validate_manifest(manifest, min_seconds=0.025), processor, 1024, "reject")
    assert [example_from_row(table[i], str(manifest)) for i in range(len(table))] == expected
    # the batched length measure counts what the processor's own encoding gives
    assert [e.length for e in expected] == [len(processor.encode(processor.segments(e.messages), 0, [], 0)[0])
                                            for e in expected]
    arrow = table.cache_files[0]["filename"]
    stamp = os.stat(arrow).st_mtime_ns
    again, _, _ = manifest_table(manifest, processor, 1024, "reject", 0.025, tmp_path / "tables")
    assert again.cache_files[0]["filename"] == arrow and os.stat(arrow).st_mtime_ns == stamp  # reused

    added = [{**rows[0], "id": "new", "audio": str(tmp_path / "gone.wav")}, rows[1]]
    manifest.write_text(manifest.read_text() + "".join(json.dumps(r) + "\n" for r in added))
    with pytest.raises(ManifestError) as err:  # the changed manifest is read again, not served from the old table
        manifest_table(manifest, processor, 1024, "reject", 0.025, tmp_path / "tables", bad_audio="error")
    assert str(err.value).splitlines()[1:] == [
        f"{manifest}:{len(rows) + 1}: audio file {tmp_path / 'gone.wav'} does not exist.",
        f"{manifest}:{len(rows) + 2}: duplicate id {rows[1]['id']!r} (first on line 2).",
    ]


def test_bind_local_device_uses_local_rank(monkeypatch):
    from pal.training.engine import bind_local_device

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "3")
    bind_local_device()
    assert chosen == [3]


def test_resumed_mid_epoch_with_two_workers_ends_with_the_uninterrupted_weights(curriculum_env, tmp_path):
    # 9 examples in global batches of 4: 3 batches per epoch, 2 epochs = 6 steps; the break after step 4 falls in
    # the middle of epoch 2.
    config = write_yaml(tmp_path / "c.yaml", curriculum_dict(
        curriculum_env, stages=1, steps=None, epochs=2, num_workers=2, checkpoint_every=100, val_manifest=None,
        eval_every=0, num_samples=0))
    straight = train_in_process(config, tmp_path / "straight")
    assert straight[0]["steps"] == 6
    train_in_process(config, tmp_path / "broken", max_steps=4)
    train_in_process(config, tmp_path / "broken", resume=True)
    a = load_file(tmp_path / "straight" / "stage1-connector" / "final" / "model.safetensors")
    b = load_file(tmp_path / "broken" / "stage1-connector" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "broken" / "stage1-connector" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_rows_with_unusable_audio_are_set_aside_up_to_a_ceiling(curriculum_env, tmp_path):
    """bad_audio: skip (the default): a clip shorter than the encoders' 25 ms and a missing file are set aside with
    their manifest, line and reason, and the rest trains; past max_bad_audio of the rows the manifest is refused."""
    import soundfile

    from pal.data.manifest import ManifestError, manifest_table

    rows = [json.loads(line) for line in (curriculum_env / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio"] = str(curriculum_env / row["audio"]) if "audio" in row else None
    soundfile.write(tmp_path / "blip.wav", np.zeros(160, dtype=np.float32), 16000)  # 10 ms
    bad = [{**rows[0], "id": "short", "audio": str(tmp_path / "blip.wav")},
           {**rows[0], "id": "gone", "audio": str(tmp_path / "gone.wav")}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + bad))
    processor = _processor(curriculum_env)
    table, notes, set_aside = manifest_table(manifest, processor, 1024, "reject", 0.025, tmp_path / "tables",
                                             max_bad_audio=0.25)
    assert sorted(table["id"]) == sorted(r["id"] for r in rows)
    assert set_aside == [
        {"manifest": str(manifest), "line": len(rows) + 1, "problem": f"audio {tmp_path / 'blip.wav'} is 10.0 ms "
                                                                      "long, shorter than the 25 ms the encoders need "
                                                                      "(SSLAM: one 25 ms fbank frame)."},
        {"manifest": str(manifest), "line": len(rows) + 2, "problem": f"audio file {tmp_path / 'gone.wav'} does not "
                                                                      "exist."}]
    assert any("2 row(s) with audio that cannot be used set aside" in note for note in notes)
    with pytest.raises(ManifestError, match=r"2 of \d+ rows \(\d+\.\d%\) have audio that cannot be used, over the 5%"):
        manifest_table(manifest, processor, 1024, "reject", 0.025, tmp_path / "tables", max_bad_audio=0.05)
    with pytest.raises(ManifestError, match="blip.wav is 10.0 ms long"):
        manifest_table(manifest, processor, 1024, "reject", 0.025, tmp_path / "tables", bad_audio="error")
