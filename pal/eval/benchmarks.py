"""Benchmark scores by each benchmark's official rule, broken down by its own axes, and the predictions file its own
scorer reads (`pal eval score --export NAME`). The rules and file layouts: docs/benchmarks.md.

    mmau, mmar   MMAU's / MMAR's string match (closed_qa.choice_match); accuracy overall and by task, difficulty,
                 category, sub-category (MMAR: modality, category, sub-category)
    air-bench    the letter rule (closed_qa.air_bench_letter); as the official scorer: accuracy over the responses a
                 letter was read from, failures counted apart, per task_name_dataset_name; beside it the accuracy
                 with failures counted wrong
    clotho-aqa   lmms-eval's exact single-word match; by answer type (yes/no, one word)
    librispeech  WER after Whisper's English normaliser (metrics/asr.py)

Every question of the manifest counts: one the model did not answer (audio that could not be read) is an empty
answer, as in the export.
"""

from __future__ import annotations

import json
from pathlib import Path

from pal.common.safe_write import atomic_write_text
from pal.data.benchmarks import BREAKDOWNS
from pal.data.manifest import Example

from .bootstrap import mean_with_ci
from .metrics.closed_qa import air_bench_letter, judge

RULES = {"mmau": None, "mmar": None, "air-bench": "letter", "clotho-aqa": "word"}  # None: the choice rule
# The file each benchmark's own scorer reads: (its extension, the field holding the model's answer). MMAU's
# evaluation.py a JSON list, MMAR's code/evaluation.py JSON lines, AIR-Bench's score_foundation.py JSON lines;
# LibriSpeech a Kaldi-style hypothesis file `UTTERANCE-ID TEXT` (sclite, compute-wer, jiwer).
EXPORTS = {"mmau": (".json", "model_output"), "mmar": (".jsonl", "answer_prediction"),
           "air-bench": (".jsonl", "response"), "librispeech": (".txt", None), "clotho-aqa": (".jsonl", "prediction")}


def rule_of(example: Example) -> str | None:
    """The closed-QA rule of a benchmark's row (None: our own reading of the gold answer)."""
    return RULES.get(example.benchmark["name"]) if example.benchmark else None


def _accuracy_by(picked: list[Example], correct: list[float], axes: tuple[str, ...], seed: int) -> dict:
    by = {}
    for axis in axes:
        values = sorted({e.benchmark["breakdown"].get(axis, "") for e in picked})
        by[axis] = {v: mean_with_ci([c for e, c in zip(picked, correct) if e.benchmark["breakdown"].get(axis, "") == v],
                                    seed=seed) for v in values}
    return by


def score_benchmark(name: str, picked: list[Example], answers: list[str], seed: int = 0) -> dict:
    """The metrics of one benchmark's questions (`answers` in their order, "" for one not answered)."""
    if name == "librispeech":
        from .metrics.asr import word_error_rate

        return word_error_rate(answers, [e.answer for e in picked])
    if name == "air-bench":
        letters = [air_bench_letter(a) for a in answers]
        parsed = [(e, float(letter == e.answer)) for e, letter in zip(picked, letters) if letter is not None]
        return {"accuracy": mean_with_ci([c for _, c in parsed], seed=seed),  # the official: failures left out
                "failures": sum(letter is None for letter in letters),
                "accuracy_failures_wrong": mean_with_ci([float(letter == e.answer) for e, letter in zip(picked, letters)],
                                                        seed=seed),
                "by": _accuracy_by([e for e, _ in parsed], [c for _, c in parsed], BREAKDOWNS[name], seed)}
    correct = [float(judge(a, e.answer, e.choices, RULES[name])[0]) for e, a in zip(picked, answers)]
    return {"accuracy": mean_with_ci(correct, seed=seed), "by": _accuracy_by(picked, correct, BREAKDOWNS[name], seed)}


def _by_benchmark(examples: list[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = {}
    for e in examples:
        if e.benchmark and e.benchmark["name"] in EXPORTS and e.answer is not None:
            groups.setdefault(e.benchmark["name"], []).append(e)
    return groups


def score_benchmarks(examples: list[Example], rows: dict[str, dict]) -> dict:
    """{benchmark: {"n", "metrics"}} over the manifest's converted benchmark rows that have a gold answer."""
    return {name: {"n": len(picked), "metrics": score_benchmark(name, picked, [rows.get(e.id, {}).get("answer", "")
                                                                           for e in picked])}
            for name, picked in sorted(_by_benchmark(examples).items())}


def export_path(out: Path, name: str) -> Path:
    """Where `pal eval score --out R.json --export NAME` writes the file (R.NAME.json, R.NAME.jsonl, ...)."""
    return out.with_name(f"{out.stem}.{name}{EXPORTS[name][0]}")


def check_export(name: str, examples: list[Example], manifest: str | Path) -> list[Example]:
    """The rows of `manifest` converted from benchmark `name`, or a ValueError saying why there is nothing to export."""
    if name not in EXPORTS:
        raise ValueError(f"--export {name}: expected one of {', '.join(EXPORTS)}.")
    picked = [e for e in examples if e.benchmark and e.benchmark["name"] == name]
    if not picked:
        raise ValueError(f"--export {name}: {manifest} holds no row converted from {name}; `pal data convert "
                         f"{name} ...` writes them.")
    return picked


def export_predictions(name: str, examples: list[Example], rows: dict[str, dict], out: Path) -> int:
    """Write the predictions file benchmark `name`'s own scorer reads: every converted row of it, its official fields
    as released plus the model's answer under the field the scorer reads. A question left unanswered gets an empty
    answer, never a missing field: MMAU's and MMAR's scorers skip rows without one, and would compute their totals
    over fewer questions than ours. → rows written."""
    picked = check_export(name, examples, "the manifest")
    answers = [rows.get(e.id, {}).get("answer", "") for e in picked]
    field = EXPORTS[name][1]
    if name == "librispeech":  # Kaldi-style: UTTERANCE-ID TEXT, one line each
        text = "".join(f"{e.benchmark['row']['utterance_id']} {' '.join(a.split())}\n" for e, a in zip(picked, answers))
    elif name == "mmau":  # evaluation.py reads one JSON list
        text = json.dumps([{**e.benchmark["row"], field: a} for e, a in zip(picked, answers)], indent=1) + "\n"
    else:  # JSON lines
        text = "".join(json.dumps({**e.benchmark["row"], field: a}) + "\n" for e, a in zip(picked, answers))
    atomic_write_text(out, text)
    return len(picked)


__all__ = ["EXPORTS", "RULES", "check_export", "export_path", "export_predictions", "rule_of", "score_benchmark",
           "score_benchmarks"]
