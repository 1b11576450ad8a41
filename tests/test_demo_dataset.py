"""The demo dataset: deterministic, valid manifests, answers that follow from the known composition, held-out pairs
kept out of training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import soundfile

from curriculum.demo_dataset import CLASSES, HELD_OUT, NOUNS, build


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    card = build(root / "a", seed=3, clips=40)
    return root, card


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_files_and_valid_manifests(demo):
    from curriculum.manifest import validate_manifest

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
        by_scene.setdefault(row["audio"], {})[row["kind"]] = row
    for scene in by_scene.values():
        labels = scene["classify"]["labels"]
        assert len(set(labels)) == len(labels) and set(labels) <= set(CLASSES) and labels.count("speech") <= 1
        assert scene["classify"]["messages"][1]["content"] == ", ".join(labels)
        assert scene["count"]["messages"][1]["content"] == str(len(labels))
        question = scene["presence"]["messages"][0]["content"]
        asked = next(c for c in CLASSES if f"Is there {NOUNS[c]} in" in question)
        assert scene["presence"]["messages"][1]["content"] == ("yes" if asked in labels else "no")
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


def test_card_counts_match_the_manifests(demo):
    root, card = demo
    rows = _rows(root / "a" / "test.jsonl")
    assert card["files"]["test.jsonl"] == len(rows)
    assert sum(card["task_counts"]["test"].values()) == len(rows)
    assert "| speech |" in (root / "a" / "card.md").read_text()
