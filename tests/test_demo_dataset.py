"""The demo dataset: deterministic, valid manifests, answers that follow from the known composition, held-out
recordings and held-out pairs kept out of training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import soundfile

from pal.data.demo_dataset import CLASSES, HELD_OUT, NOUNS, build


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    card = build(root / "a", seed=3, clips=40)
    return root, card


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_files_and_valid_manifests(demo):
    from pal.data.manifest import validate_manifest

    root, card = demo
    build(root / "b", seed=3, clips=40)
    for name in ("train.jsonl", "test.jsonl", "clips/scene00007.wav", "card.json"):
        assert hashlib.sha256((root / "a" / name).read_bytes()).digest() == \
            hashlib.sha256((root / "b" / name).read_bytes()).digest(), name
    for name in ("classify_caption.jsonl", "closed_qa.jsonl", "open_qa.jsonl", "val.jsonl", "test.jsonl"):
        assert validate_manifest(root / "a" / name, min_seconds=0.025)
    assert card["scenes"] == {"train": 32, "val": 4, "test": 4}
    info = soundfile.info(root / "a" / "clips" / "scene00000.wav")
    assert (info.samplerate, info.frames) == (16000, 64000)


def test_answers_follow_from_the_composition(demo):
    root, _ = demo
    by_scene: dict[str, dict] = {}
    for row in _rows(root / "a" / "train.jsonl") + _rows(root / "a" / "test.jsonl"):
        row["evidence"] = row["split"] != "test"  # the test split keeps the bare answers the scorer reads
        by_scene.setdefault(row["audio"], {}).setdefault(row["kind"], []).append(row)
    for rows in by_scene.values():
        scene = {kind: found[0] for kind, found in rows.items()}
        labels = scene["classify"]["labels"]
        assert len(set(labels)) == len(labels) and set(labels) <= set(CLASSES) and labels.count("speech") <= 1
        assert scene["classify"]["messages"][1]["content"] == ", ".join(labels)
        evidence = scene["classify"]["evidence"]
        lettered = ", ".join(f"({'abcd'[i]}) {label}" for i, label in enumerate(labels))
        assert scene["count"]["messages"][1]["content"] == (f"I hear {lettered}: {len(labels)}." if evidence
                                                             else str(len(labels)))
        answers = []
        for presence in rows["presence"]:  # balanced: as many classes that sound as classes that do not
            asked = next(c for c in CLASSES if presence["messages"][0]["content"] == f"<audio>\nCan you hear "
                         f"{NOUNS[c]}? Answer yes or no.")
            answers.append("yes" if asked in labels else "no")
            assert presence["messages"][1]["content"] == (f"I hear {', '.join(labels)}; {asked}: {answers[-1]}."
                                                          if evidence else answers[-1])
        assert answers.count("yes") == answers.count("no") == min(2, len(labels))
        assert ("word" in scene) == ("speech" in labels) == ("transcript" in scene)
        if "order" in scene:
            assert scene["order"]["choices"] == labels[:2]
            assert scene["order"]["messages"][1]["content"] == f"The {labels[0]} comes first."
        caption = scene["caption"]["messages"][1]["content"]
        assert caption.endswith(".") and caption.count(", then ") + caption.count(" while ") == len(labels) - 1


def test_held_out_pairs_only_in_test(demo):
    root, _ = demo
    pairs = [set(p) for p in HELD_OUT]

    def holds(row):
        return any(p <= set(row["labels"]) for p in pairs)

    train = [r for r in _rows(root / "a" / "train.jsonl") if r["kind"] == "classify"]
    val = [r for r in _rows(root / "a" / "val.jsonl") if r["kind"] == "classify"]
    test = [r for r in _rows(root / "a" / "test.jsonl") if r["kind"] == "classify"]
    assert not any(holds(r) for r in train + val)
    assert sum(holds(r) for r in test) >= len(test) // 2


def test_test_scenes_hold_only_recordings_never_heard_in_training(demo):
    root, card = demo
    heard = {r for split in ("train.jsonl", "val.jsonl") for row in _rows(root / "a" / split)
             if row["kind"] == "classify" for r in row["recordings"]}
    test = [r for row in _rows(root / "a" / "test.jsonl") if row["kind"] == "classify" for r in row["recordings"]]
    assert test and not heard & set(test)
    for label, recordings in card["recordings"].items():  # several recordings per class, some held out
        assert recordings["training pool"] >= 1 and recordings["held out"] >= 1, label
    assert "| package | licence" in (root / "a" / "card.md").read_text()
    assert set(card["licences"]) >= {"minetest-data", "hydrogen-data", "sonic-pi-samples", "asterisk-core-sounds-en-wav"}


def test_card_counts_match_the_manifests(demo):
    root, card = demo
    rows = _rows(root / "a" / "test.jsonl")
    assert card["files"]["test.jsonl"] == len(rows)
    assert sum(card["task_counts"]["test"].values()) == len(rows)
    assert "| speech |" in (root / "a" / "card.md").read_text()


def test_held_out_synthesised_variants_lie_inside_what_training_hears(tmp_path):
    """The beeps and the noise are synthesised in a few variants: a held-out variant outside the training range
    (440 and 1760 Hz beeps against 660-1320 Hz, white noise against pink and brown) tested extrapolation. Now the
    test's beeps lie between training pitches and its noise mixes the training colours: its spectral centroid lies
    between brown noise's and pink noise's."""
    import numpy as np

    from pal.data.demo_dataset import collect_sources

    sources = collect_sources(tmp_path, seed=3)
    pitch = {x.name: float(x.name.split()[2]) for x in sources["beep"]}
    trained = sorted(pitch[x.name] for x in sources["beep"] if not x.held_out)
    held = sorted(pitch[x.name] for x in sources["beep"] if x.held_out)
    assert trained == [660, 880, 1000, 1320] and held  # the training pool as before
    assert all(trained[0] < f < trained[-1] and f not in trained for f in held), held

    def centroid(audio):
        power = np.abs(np.fft.rfft(audio)) ** 2
        return float((np.fft.rfftfreq(len(audio), 1 / 16000) * power).sum() / power.sum())

    noise = {x.name: x for x in sources["noise"]}
    assert {n for n, x in noise.items() if not x.held_out} == {"Noise.wav", "sox pinknoise", "sox brownnoise"}
    [mixed] = [x for x in noise.values() if x.held_out]
    assert centroid(noise["sox brownnoise"].audio) < centroid(mixed.audio) < centroid(noise["sox pinknoise"].audio)
