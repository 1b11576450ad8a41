"""`pal data convert`: each public format on a small sample written here → a valid manifest, rejects with reasons."""

from __future__ import annotations

import json

import pytest
from conftest import tone

from pal.cli.main import main


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def audio(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    for name in ("yt1_30.wav", "yt2_0.wav", "a.wav", "b.wav", "seg1_10.0.wav"):
        tone(folder / name, 440)
    return folder


def test_relative_folders_mean_the_working_directory_wherever_the_manifest_goes(tmp_path, audio, monkeypatch):
    """A newcomer's relative `--audio-dir` and an `--out` in another folder: the rows still find their audio (they
    were written relative to the working directory, which readers took as relative to the manifest's folder)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.csv").write_text("file_name,caption_1\na.wav,Birds sing.\n")
    assert main(["data", "convert", "clotho", "c.csv", "--audio-dir", "audio", "--out", "out/m.jsonl"]) == 0
    (row,) = _rows(tmp_path / "out" / "m.jsonl")
    assert row["audio"] == str(audio / "a.wav")
    from pal.data.manifest import validate_manifest

    assert [e.audio for e in validate_manifest(tmp_path / "out" / "m.jsonl")] == [str(audio / "a.wav")]


def test_audiocaps(tmp_path, audio, capsys):
    (tmp_path / "ac.csv").write_text("audiocap_id,youtube_id,start_time,caption\n"
                                     "1,yt1,30,A dog barks.\n2,yt1,30,A dog is barking loudly.\n"
                                     "3,yt2,0,Rain falls.\n4,yt9,0,Missing audio.\n5,yt2,,No start.\n")
    assert main(["data", "convert", "audiocaps", str(tmp_path / "ac.csv"), "--out", str(tmp_path / "m.jsonl"),
                 "--audio-dir", str(audio)]) == 0
    rows = _rows(tmp_path / "m.jsonl")
    assert [r["id"] for r in rows] == ["audiocaps-1", "audiocaps-2", "audiocaps-3"]
    assert rows[0]["references"] == ["A dog barks.", "A dog is barking loudly."] and rows[0]["task"] == "caption"
    out = capsys.readouterr().out
    assert "3 examples written" in out and "2 rows skipped" in out and "does not exist" in out
    skipped = json.loads((tmp_path / "m.skipped.json").read_text())
    assert {"where": "ac.csv line 6", "why": "missing ['start_time']"} in skipped
    assert [s["where"] for s in skipped][1] == "audiocaps-4" and "does not exist" in skipped[1]["why"]


def test_clotho_and_clotho_aqa(tmp_path, audio):
    from pal.data.convert import convert

    (tmp_path / "c.csv").write_text("file_name,caption_1,caption_2\na.wav,Birds sing.,Birds chirp outside.\n")
    summary = convert("clotho", tmp_path / "c.csv", tmp_path / "c.jsonl", audio)
    rows = _rows(tmp_path / "c.jsonl")
    assert summary["converted"] == 2 and rows[1]["messages"][1]["content"] == "Birds chirp outside."
    assert rows[0]["references"] == ["Birds sing.", "Birds chirp outside."]
    (tmp_path / "q.csv").write_text("file_name,QuestionText,answer,confidence\n"
                                    "b.wav,Is it raining?,yes,yes\nb.wav,Is it raining?,Yes,yes\n"
                                    "b.wav,Is it raining?,no,maybe\nb.wav,Is it loud?,no,no\n")
    summary = convert("clotho-aqa", tmp_path / "q.csv", tmp_path / "q.jsonl", audio)
    rows = _rows(tmp_path / "q.jsonl")
    assert summary == {**summary, "converted": 1, "rejected": 1}
    assert rows[0]["messages"][1]["content"] == "yes" and rows[0]["task"] == "qa"  # majority of yes, Yes, no


def test_openaqa_audioset_and_messages(tmp_path, audio):
    from pal.data.convert import convert

    (tmp_path / "ltu.json").write_text(json.dumps([
        {"instruction": "What is the sound?", "input": "", "audio_id": "a.wav", "task": "cla_label", "output": "Dog"},
        {"instruction": "Why might this happen?", "input": "", "audio_id": "a.wav", "task": "open-ended question",
         "output": "Someone is at the door."},
        {"instruction": "x", "audio_id": "a.wav"}]))
    summary = convert("openaqa", tmp_path / "ltu.json", tmp_path / "o.jsonl", audio)
    rows = _rows(tmp_path / "o.jsonl")
    assert summary["converted"] == 2 and rows[0]["task"] == "classify" and "task" not in rows[1]
    (tmp_path / "ontology.json").write_text(json.dumps([{"id": "/m/0bt9lr", "name": "Dog"},
                                                        {"id": "/m/05tny_", "name": "Bark"}]))
    (tmp_path / "seg.csv").write_text("# YTID, start_seconds, end_seconds, positive_labels\n"
                                      'seg1, 10.0, 20.0, "/m/0bt9lr,/m/05tny_"\nseg2, 0.0, 10.0, "/m/xx"\n')
    summary = convert("audioset", tmp_path / "seg.csv", tmp_path / "s.jsonl", audio, ontology=tmp_path / "ontology.json")
    rows = _rows(tmp_path / "s.jsonl")
    assert summary["converted"] == 1 and rows[0]["labels"] == ["Dog", "Bark"]
    assert "not in the ontology" in summary["reasons"].popitem()[0]
    (tmp_path / "msgs.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"messages": [{"role": "user", "content": "<audio>What is it?"}, {"role": "assistant", "content": "A bell."}],
         "audios": ["a.wav"]},
        {"messages": [{"role": "user", "content": "<audio><audio>Compare."}, {"role": "assistant", "content": "x"}],
         "audios": ["a.wav", "b.wav"]},
        {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "<audio>x"}],
         "audios": ["a.wav"]}]))
    summary = convert("messages", tmp_path / "msgs.jsonl", tmp_path / "g.jsonl", audio)
    assert summary["converted"] == 2 and summary["rejected"] == 1  # two clips in one question are kept, as `audios`
    assert [len(r.get("audios", [r.get("audio")])) for r in _rows(tmp_path / "g.jsonl")] == [1, 2]
    skipped = json.dumps(json.loads((tmp_path / "g.skipped.json").read_text()))
    assert "roles" in skipped


def test_bad_rows_are_set_aside_with_file_line_and_reason_and_every_good_row_is_written(tmp_path, audio, capsys):
    """One invalid JSON line, a `[1,2]` line, `"audios": [5]`: each skipped with where it stands and why; the good
    rows all written (each of these aborted the whole conversion with a traceback before)."""
    good = {"messages": [{"role": "user", "content": "<audio>What is it?"}, {"role": "assistant", "content": "A bell."}],
            "audios": ["a.wav"]}
    lines = [json.dumps({**good, "id": "g1"}), "{not json", "[1, 2]", json.dumps({**good, "audios": [5]}),
             json.dumps({**good, "id": "g2"}), json.dumps({**good, "messages": ["hi"]})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["data", "convert", "messages", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                 "--audio-dir", str(audio)]) == 0
    assert [r["id"] for r in _rows(tmp_path / "o.jsonl")] == ["g1", "g2"]
    skipped = json.loads((tmp_path / "o.skipped.json").read_text())
    assert [s["where"] for s in skipped] == ["m.jsonl line 2", "m.jsonl line 3", "m.jsonl line 4", "m.jsonl line 6"]
    assert "not valid JSON" in skipped[0]["why"] and "found list" in skipped[1]["why"]
    assert "audios = [5]: expected a list of audio file paths" in skipped[2]["why"]
    out = capsys.readouterr().out
    assert "2 examples written" in out and "4 rows skipped" in out and "o.skipped.json" in out


def test_a_file_that_cannot_be_read_or_an_unknown_pattern_column_is_named(tmp_path, audio, capsys):
    (tmp_path / "ac.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,yt1,30,A dog barks.\n")
    assert main(["data", "convert", "audiocaps", str(tmp_path / "ac.csv"), "--out", str(tmp_path / "m.jsonl"),
                 "--audio-dir", str(audio), "--audio-pattern", "{ytid}.wav"]) == 2
    err = capsys.readouterr().err
    assert "--audio-pattern '{ytid}.wav' names ['ytid'], which the file does not have" in err and "{youtube_id}" in err
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 4)
    assert main(["data", "convert", "clotho", str(tmp_path / "bin.csv"), "--out", str(tmp_path / "m.jsonl")]) == 2
    assert "bin.csv: not UTF-8 text (byte 128" in capsys.readouterr().err
    assert not (tmp_path / "m.jsonl").exists()  # nothing written for a file that could not be read


def test_a_converted_dataset_folder_moves_with_its_manifest_and_trains_from_there(tmp_path, audio, curriculum_env):
    """Audio inside the manifest's folder is written relative to it (the folder moved elsewhere still trains);
    audio outside it stays absolute."""
    import shutil

    from conftest import curriculum_dict, tone, train_in_process, write_yaml

    dataset = tmp_path / "dataset"
    (dataset / "clips").mkdir(parents=True)
    for name, freq in (("low.wav", 220), ("high.wav", 880)):
        tone(dataset / "clips" / name, freq)
    (dataset / "captions.csv").write_text("file_name,caption_1\nlow.wav,A low tone.\nhigh.wav,A high tone.\n")
    assert main(["data", "convert", "clotho", str(dataset / "captions.csv"), "--audio-dir", str(dataset / "clips"),
                 "--out", str(dataset / "train.jsonl")]) == 0
    assert [r["audio"] for r in _rows(dataset / "train.jsonl")] == ["clips/low.wav", "clips/high.wav"]
    (dataset / "elsewhere.csv").write_text("file_name,caption_1\na.wav,Birds sing.\n")
    assert main(["data", "convert", "clotho", str(dataset / "elsewhere.csv"), "--audio-dir", str(audio),
                 "--out", str(dataset / "elsewhere.jsonl")]) == 0
    assert [r["audio"] for r in _rows(dataset / "elsewhere.jsonl")] == [str(audio / "a.wav")]

    moved = shutil.move(dataset, tmp_path / "another-machine" / "dataset")
    config = curriculum_dict(curriculum_env, stages=1, steps=2, batch_size=2, val_manifest=None, num_samples=0,
                             checkpoint_every=2, data=[{"manifest": str(moved / "train.jsonl")}])
    (stage,) = train_in_process(write_yaml(tmp_path / "c.yaml", config), tmp_path / "run")
    assert stage["steps"] == 2 and stage["bad_samples"] == 0 and stage["set_aside"] == 0
