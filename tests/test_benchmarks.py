"""Standard benchmarks: each release's published format (a handful of rows written here by hand from the format, with
our own tone clips at the paths the files name) → `pal data convert` → our manifest; our scores equal the official
scorer's on the predictions file `pal eval score --export` writes. The official scorers cannot be installed (they
are scripts in the benchmarks' repositories, not packages), so their rules are re-implemented below, in the test
only, from the published scripts (docs/benchmarks.md): MMAU evaluation.py, MMAR code/evaluation.py,
AIR-Bench score_foundation.py, lmms-eval's Clotho-AQA exact match."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import tone, write_jsonl

from pal.cli.main import main

# ------------------------------------------------------------------------------------------ the official rules


def official_string_match(answer: str, prediction: str, choices: list[str]) -> bool:
    """MMAU's / MMAR's `string_match`, as published: lower-cased `\\b\\w+\\b` token sets."""
    def tokens(text):
        return set(re.findall(r"\b\w+\b", text.lower()))

    prediction_tokens, answer_tokens = tokens(prediction), tokens(answer)
    if not prediction_tokens:
        return False
    incorrect = set()
    for choice in choices:
        choice_tokens = tokens(choice)
        if choice_tokens != answer_tokens:
            incorrect |= choice_tokens - answer_tokens
    return answer_tokens.issubset(prediction_tokens) and not (prediction_tokens & incorrect)


def official_accuracy(rows: list[dict], prediction_key: str, axes: tuple[str, ...]) -> dict:
    """MMAU's / MMAR's evaluation.py: rows without the prediction key skipped; accuracy in total and by each axis."""
    counts = {axis: {} for axis in axes} | {"total": {"": [0, 0]}}
    for row in rows:
        if prediction_key not in row:
            continue
        ok = official_string_match(row["answer"], row[prediction_key], row["choices"])
        for axis in axes:
            cell = counts[axis].setdefault(row[axis], [0, 0])
            cell[0], cell[1] = cell[0] + ok, cell[1] + 1
        counts["total"][""][0] += ok
        counts["total"][""][1] += 1
    return {axis: {k: (c / n, n) for k, (c, n) in cells.items()} for axis, cells in counts.items()}


def official_air_bench(lines: list[dict]) -> tuple[dict, int]:
    """AIR-Bench's score_foundation.py: the letter from `response`; failures counted apart; accuracy per
    task_name_dataset_name over the rows a letter was read from."""
    per_task, failures = {}, 0
    for row in lines:
        predict = row["response"].strip().replace("\n", "")
        if predict == "None" or not predict:
            failures += 1
            continue
        if predict[0] in ("A", "B", "C", "D"):
            letter = predict[0]
        elif len(predict) > 1 and predict[-2] in ("A", "B", "C", "D"):
            letter = predict[-2]
        else:
            failures += 1
            continue
        gold = {row.get("choice_a"): "A", row.get("choice_b"): "B", row.get("choice_c"): "C",
                row.get("choice_d"): "D"}[row["answer_gt"]]
        cell = per_task.setdefault(f"{row['task_name']}_{row['dataset_name']}", [0, 0])
        cell[0], cell[1] = cell[0] + (letter == gold), cell[1] + 1
    return {task: (c / n, n) for task, (c, n) in per_task.items()}, failures


def lmms_eval_exact_match(prediction: str, target: str) -> bool:
    """lmms-eval's exact_match with ignore_case and ignore_punctuation (the prediction stripped first)."""
    def clean(text):
        return text.lower().translate(str.maketrans("", "", string.punctuation))

    return clean(prediction.strip()) == clean(target)


# ------------------------------------------------------------------------------------------ helpers


def _clip(path: Path, freq: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tone(path, freq)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _convert(*argv) -> int:
    return main(["data", "convert", *map(str, argv)])


def _answer_rows(manifest: Path, answers: dict[str, str]) -> dict[str, dict]:
    """Answers as `pal eval` keeps them ({id: {"answer"}}), for the questions `answers` names (others unanswered)."""
    return {row["id"]: {"answer": answers[row["id"]]} for row in _rows(manifest) if row["id"] in answers}


def _score_and_export(name: str, manifest: Path, answers: dict[str, str], out: Path):
    from pal.data.manifest import read_questions
    from pal.eval.benchmarks import export_predictions, score_benchmarks

    examples = read_questions(manifest)
    rows = _answer_rows(manifest, answers)
    written = export_predictions(name, examples, rows, out)
    assert written == len(examples)
    return score_benchmarks(examples, rows)[name]["metrics"]


MMAU_ROWS = [  # the release's fields (mmau-test-mini.json), our clips at ./test-mini-audios/
    {"id": "q1", "audio_id": "./test-mini-audios/q1.wav", "question": "Which animal is heard?",
     "choices": ["A dog", "A cat", "A cow", "A bird"], "answer": "A dog", "dataset": "ours", "task": "sound",
     "split": "test-mini", "category": "Sound", "sub-category": "Animal", "difficulty": "easy"},
    {"id": "q2", "audio_id": "./test-mini-audios/q2.wav", "question": "Is the tempo fast?", "choices": ["yes", "no"],
     "answer": "no", "dataset": "ours", "task": "music", "split": "test-mini", "category": "Music",
     "sub-category": "Tempo", "difficulty": "medium"},
    {"id": "q3", "audio_id": "./test-mini-audios/q3.wav", "question": "How many speakers?",
     "choices": ["one", "two", "three", "four", "five"], "answer": "two", "dataset": "ours", "task": "speech",
     "split": "test-mini", "category": "Speech", "sub-category": "Counting", "difficulty": "hard"},
    {"id": "q4", "audio_id": "./test-mini-audios/q4.wav", "question": "Which instrument?",
     "choices": ["piano", "violin"], "answer": "violin", "dataset": "ours", "task": "music", "split": "test-mini",
     "category": "Music", "sub-category": "Instrument", "difficulty": "easy"},
    {"id": "q5", "audio_id": "./test-mini-audios/q5.wav", "question": "Which sound?", "choices": ["rain", "wind"],
     "answer": "snow", "dataset": "ours", "task": "sound", "split": "test-mini", "category": "Sound",
     "sub-category": "Weather", "difficulty": "easy"},  # the answer is not a choice: set aside
    {"id": "q6", "audio_id": "./test-mini-audios/missing.wav", "question": "Which sound?",
     "choices": ["rain", "wind"], "answer": "rain", "dataset": "ours", "task": "sound", "split": "test-mini",
     "category": "Sound", "sub-category": "Weather", "difficulty": "easy"},  # no such file: set aside, path named
]


@pytest.fixture
def mmau(tmp_path):
    for i in range(1, 6):
        _clip(tmp_path / "test-mini-audios" / f"q{i}.wav", 220 * i)
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(MMAU_ROWS, indent=1))
    return tmp_path


def test_mmau_converts_with_its_fields_and_scores_as_its_evaluation_script(mmau, capsys):
    manifest = mmau / "mmau.jsonl"
    assert _convert("mmau", mmau / "mmau-test-mini.json", "--out", manifest, "--audio-dir", mmau) == 0
    printed = capsys.readouterr().out
    assert "4 examples written" in printed and "2 rows skipped" in printed
    skipped = json.loads((mmau / "mmau.skipped.json").read_text())
    assert "not one of the choices" in skipped[0]["why"] and "(q5)" in skipped[0]["where"]
    assert skipped[1]["where"] == "mmau-q6" and str(mmau / "test-mini-audios" / "missing.wav") in skipped[1]["why"]
    rows = _rows(manifest)
    assert [r["benchmark"]["row"] for r in rows] == MMAU_ROWS[:4]  # every official field, unchanged
    first = rows[0]
    assert first["choices"] == MMAU_ROWS[0]["choices"] and first["task"] == "qa"
    assert first["audio"] == "test-mini-audios/q1.wav"  # relative to the manifest's folder, where it lies
    prompt = first["messages"][0]["content"]
    assert prompt.startswith("<audio>\nWhich animal is heard?") and all(f"- {c}" in prompt for c in first["choices"])
    assert first["messages"][1]["content"] == "A dog"
    assert first["benchmark"]["breakdown"] == {"task": "sound", "difficulty": "easy", "category": "Sound",
                                               "sub-category": "Animal"}

    # Answers with the rule's edges: the choice in a sentence (right), a word of a wrong choice too (wrong), a bare
    # letter (wrong by the official rule), and q4 not answered at all (an empty answer in the export: wrong).
    answers = {"mmau-q1": "I hear a dog barking.", "mmau-q2": "no, it is not fast", "mmau-q3": "B"}
    ours = _score_and_export("mmau", manifest, answers, mmau / "R.mmau.json")
    exported = json.loads((mmau / "R.mmau.json").read_text())
    assert [r["model_output"] for r in exported] == [answers["mmau-q1"], answers["mmau-q2"], "B", ""]
    assert [{k: v for k, v in r.items() if k != "model_output"} for r in exported] == MMAU_ROWS[:4]
    official = official_accuracy(exported, "model_output", ("task", "difficulty", "sub-category"))
    assert ours["accuracy"]["value"] == official["total"][""][0] == 0.5
    assert ours["accuracy"]["n"] == official["total"][""][1] == 4
    for axis in ("task", "difficulty", "sub-category"):
        assert {k: (v["value"], v["n"]) for k, v in ours["by"][axis].items()} == official[axis], axis
    low, high = ours["accuracy"]["ci95"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def test_mmau_test_split_without_answers_is_answered_and_exported_but_not_scored(tmp_path):
    _clip(tmp_path / "a" / "x.wav", 440)
    row = {k: v for k, v in MMAU_ROWS[0].items() if k != "answer"} | {"audio_id": "a/x.wav"}
    (tmp_path / "mmau-test.json").write_text(json.dumps([row]))
    assert _convert("mmau", tmp_path / "mmau-test.json", "--out", tmp_path / "m.jsonl", "--audio-dir", tmp_path) == 0
    (converted,) = _rows(tmp_path / "m.jsonl")
    assert [m["role"] for m in converted["messages"]] == ["user"]
    from pal.data.manifest import read_questions
    from pal.eval.benchmarks import export_predictions, score_benchmarks

    examples = read_questions(tmp_path / "m.jsonl")
    assert score_benchmarks(examples, {}) == {}
    export_predictions("mmau", examples, {"mmau-q1": {"answer": "a dog"}}, tmp_path / "R.json")
    assert json.loads((tmp_path / "R.json").read_text()) == [row | {"model_output": "a dog"}]


def test_mmar_jsonl_scores_as_its_evaluation_script(tmp_path):
    rows = [{"id": f"m{i}", "audio_path": f"./audio/m{i}.wav", "question": q, "choices": c, "answer": a,
             "modality": mod, "category": cat, "sub-category": sub, "language": "en", "source": "ours", "url": "",
             "timestamp": "", "thinking": "", "cue": "", "rubric": ""}
            for i, (q, c, a, mod, cat, sub) in enumerate([
                ("Which is louder?", ["the left", "the right"], "the left", "sound", "Signal Layer", "Loudness"),
                ("What genre?", ["jazz", "rock", "folk"], "rock", "music", "Perception Layer", "Genre"),
                ("Who speaks first?", ["man", "woman"], "woman", "mix-sound-speech", "Semantic Layer", "Order"),
                # as 4 rows of the official release: a trailing empty choice; its scorer counts the row
                ("How many beats?", ["two", "three", ""], "three", "music", "Signal Layer", "Counting"),
            ])]
    for i in range(4):
        _clip(tmp_path / "audio" / f"m{i}.wav", 300 + 100 * i)
    write_jsonl(tmp_path / "MMAR-meta.jsonl", rows)
    assert _convert("mmar", tmp_path / "MMAR-meta.jsonl", "--out", tmp_path / "m.jsonl", "--audio-dir", tmp_path) == 0
    converted = _rows(tmp_path / "m.jsonl")
    assert len(converted) == 4 and not (tmp_path / "m.skipped.json").exists()
    assert converted[3]["choices"] == ["two", "three"] and "- \n" not in converted[3]["messages"][0]["content"]
    assert converted[3]["benchmark"]["row"] == rows[3] and "1 empty choice" in converted[3]["benchmark"]["notes"][0]
    answers = {"mmar-m0": "The left one is louder.", "mmar-m1": "rock or jazz", "mmar-m2": "The woman.",
               "mmar-m3": "Three."}
    ours = _score_and_export("mmar", tmp_path / "m.jsonl", answers, tmp_path / "R.mmar.jsonl")
    exported = _rows(tmp_path / "R.mmar.jsonl")
    assert [r["answer_prediction"] for r in exported] == list(answers.values())
    official = official_accuracy(exported, "answer_prediction", ("modality", "category", "sub-category"))
    assert official["total"][""][1] == 4  # every row of the release is scored, the empty choice's included
    assert ours["accuracy"]["value"] == official["total"][""][0] == pytest.approx(3 / 4)
    for axis in ("modality", "category", "sub-category"):
        assert {k: (v["value"], v["n"]) for k, v in ours["by"][axis].items()} == official[axis], axis


def test_air_bench_foundation_prompt_letters_and_failures_as_its_scorer(tmp_path):
    meta = [
        {"path": "s1.wav", "question": "What is the sound?", "choice_a": "dog", "choice_b": "cat", "choice_c": "bird",
         "choice_d": "cow", "answer_gt": "cat", "task_name": "Sound_AQA", "dataset_name": "clotho", "uniq_id": 1},
        {"path": "s2.wav", "question": "Is it music?", "choice_a": "yes", "choice_b": "no", "answer_gt": "yes",
         "task_name": "Sound_AQA", "dataset_name": "clotho", "uniq_id": 2},
        {"path": "g1.wav", "question": "When does it start?", "choice_a": "[0.0, 1.0]", "choice_b": "[2.0, 3.0]",
         "answer_gt": "[2.0, 3.0]", "task_name": "Audio_Grounding", "dataset_name": "AudioGrounding", "uniq_id": 3},
        {"path": "s3.wav", "question": "Which?", "choice_a": "x", "choice_b": "y", "answer_gt": "x",
         "task_name": "Sound_AQA", "dataset_name": "clotho", "uniq_id": 4},
        {"path": "s4.wav", "question": "Which?", "choice_a": "x", "choice_b": "y", "answer_gt": "z",
         "task_name": "Sound_AQA", "dataset_name": "clotho", "uniq_id": 5},  # the answer is no choice: set aside
    ]
    for name in ("s1.wav", "s2.wav", "s3.wav"):
        _clip(tmp_path / "Sound_AQA_clotho" / name, 500)
    # Audio_Grounding's release holds .flac where its metadata says .wav
    t = np.arange(8000) / 16000
    (tmp_path / "Audio_Grounding_AudioGrounding").mkdir()
    soundfile.write(tmp_path / "Audio_Grounding_AudioGrounding" / "g1.flac", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    (tmp_path / "Foundation_meta.json").write_text(json.dumps(meta))
    assert _convert("air-bench", tmp_path / "Foundation_meta.json", "--out", tmp_path / "m.jsonl",
                    "--audio-dir", tmp_path) == 0
    rows = _rows(tmp_path / "m.jsonl")
    assert len(rows) == 4 and rows[2]["audio"].endswith("Audio_Grounding_AudioGrounding/g1.flac")
    assert rows[1]["messages"][0]["content"] == (
        "<audio>\nChoose the most suitable answer from options A, B, C, and D to respond the question in next line, "
        "you may only choose A or B or C or D.\nIs it music?\nA. yes\nB. no\nC. None\nD. None")
    assert [r["messages"][1]["content"] for r in rows] == ["B", "A", "B", "A"]

    answers = {"air-bench-1": "B", "air-bench-2": "The answer is B.", "air-bench-3": "I cannot tell",
               "air-bench-4": "A\n"}
    ours = _score_and_export("air-bench", tmp_path / "m.jsonl", answers, tmp_path / "R.air-bench.jsonl")
    exported = _rows(tmp_path / "R.air-bench.jsonl")
    assert [r["response"] for r in exported] == list(answers.values())
    per_task, failures = official_air_bench(exported)
    assert ours["failures"] == failures == 1
    assert {k: (v["value"], v["n"]) for k, v in ours["by"]["task"].items()} == per_task
    assert ours["accuracy"]["value"] == pytest.approx(2 / 3) and ours["accuracy"]["n"] == 3  # 1 + 0 + 1 of 3 read
    assert ours["accuracy_failures_wrong"]["value"] == pytest.approx(2 / 4)


def test_clotho_aqa_single_word_match_as_lmms_eval(tmp_path):
    tone(tmp_path / "b.wav", 440)
    tone(tmp_path / "c.wav", 660)
    (tmp_path / "q.csv").write_text("file_name,QuestionText,answer,confidence\n"
                                    "b.wav,Is it raining?,yes,yes\nb.wav,Is it raining?,Yes,yes\n"
                                    "b.wav,Is it raining?,no,yes\nc.wav,What animal?,dog,yes\n"
                                    "c.wav,What animal?,dog,no\nb.wav,What falls?,rain,yes\n")
    assert _convert("clotho-aqa", tmp_path / "q.csv", "--out", tmp_path / "m.jsonl", "--audio-dir", tmp_path) == 0
    rows = _rows(tmp_path / "m.jsonl")
    assert rows[0]["messages"][0]["content"] == "<audio>\nIs it raining?\nAnswer the question using a single word only."
    assert rows[0]["benchmark"]["row"]["answers"] == ["yes", "yes", "no"]
    answers = {"clotho-aqa-0": " Yes.", "clotho-aqa-1": "a dog", "clotho-aqa-2": "Rain!"}
    ours = _score_and_export("clotho-aqa", tmp_path / "m.jsonl", answers, tmp_path / "R.jsonl")
    golds = [r["messages"][1]["content"] for r in rows]
    expected = [lmms_eval_exact_match(answers[r["id"]], gold) for r, gold in zip(rows, golds)]
    assert expected == [True, False, True] and ours["accuracy"]["value"] == pytest.approx(2 / 3)
    assert ours["by"]["answer_type"]["yes_no"]["value"] == 1.0 and ours["by"]["answer_type"]["one_word"]["n"] == 2


def test_librispeech_split_folder_and_hypothesis_file(tmp_path):
    chapter = tmp_path / "test-clean" / "1089" / "134686"
    chapter.mkdir(parents=True)
    t = np.arange(16000) / 16000
    for utterance in ("1089-134686-0000", "1089-134686-0001"):
        soundfile.write(chapter / f"{utterance}.flac", 0.3 * np.sin(2 * np.pi * 300 * t), 16000)
    (chapter / "1089-134686.trans.txt").write_text("1089-134686-0000 HE HOPED THERE WOULD BE STEW FOR DINNER\n"
                                                   "1089-134686-0001 STUFF IT INTO YOU\n"
                                                   "1089-134686-0002 NO AUDIO FOR THIS ONE\n")
    assert _convert("librispeech", tmp_path / "test-clean", "--out", tmp_path / "m.jsonl") == 0
    rows = _rows(tmp_path / "m.jsonl")
    assert [r["task"] for r in rows] == ["asr", "asr"] and rows[0]["audio"] == "test-clean/1089/134686/1089-134686-0000.flac"
    answers = {"librispeech-1089-134686-0000": "He hoped there would be stew for dinner.",
               "librispeech-1089-134686-0001": "Stuff it in to you"}
    ours = _score_and_export("librispeech", tmp_path / "m.jsonl", answers, tmp_path / "R.txt")
    # 12 reference words; "into" → "in to": one substitution and one insertion.
    assert ours["wer"]["value"] == pytest.approx(2 / 12)
    assert (tmp_path / "R.txt").read_text().splitlines() == [
        "1089-134686-0000 He hoped there would be stew for dinner.", "1089-134686-0001 Stuff it in to you"]


def test_eval_score_exports_the_official_file_beside_each_control(trained_tiny, mmau, capsys):
    manifest = mmau / "mmau.jsonl"
    assert _convert("mmau", mmau / "mmau-test-mini.json", "--out", manifest, "--audio-dir", mmau) == 0
    out = mmau / "results.json"
    assert main(["eval", "score", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
                 "--export", "mmar"]) == 2
    assert re.search(r"--export mmar: .*mmau\.jsonl holds no row converted from mmar", capsys.readouterr().err)
    assert not out.exists() and not out.with_name("results.answers.jsonl").exists()  # refused before answering
    assert main(["eval", "score", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
                 "--max-new-tokens", "6", "--export", "mmau"]) == 0
    result = json.loads(out.read_text())
    entry = result["benchmarks"]["mmau"]
    for key, suffix in (("with_audio", "answers"), ("mismatched_audio", "mismatched"), ("no_audio", "no_audio")):
        path = Path(result["exports"]["mmau"][key])
        assert path == (out.with_name("results.mmau.json") if key == "with_audio"
                        else out.with_name(f"results.{suffix}.mmau.json"))
        exported = json.loads(path.read_text())
        answered = {r["id"]: r["answer"] for r in _rows(out.with_name(f"results.{suffix}.jsonl"))}
        assert [r["model_output"] for r in exported] == [answered[f"mmau-{r['id']}"] for r in exported]
        official = official_accuracy(exported, "model_output", ("task", "difficulty", "sub-category"))
        metrics = entry["metrics"] if key == "with_audio" else entry[key]
        assert metrics["accuracy"]["value"] == official["total"][""][0] and metrics["accuracy"]["n"] == 4
        assert {k: v["value"] for k, v in metrics["by"]["difficulty"].items()} == \
            {k: v[0] for k, v in official["difficulty"].items()}
