"""Closed-ended QA: normalised exact match, deterministic.

The kind of question is read off its gold answer (or its `choices`):
- yes/no: the first "yes" or "no" word of the answer;
- count: the first number of the answer, in digits or words ("three" = 3);
- multiple choice (`choices` given): matched as MMAR's / MMAU's official scripts do: every word of the gold choice is
  in the answer, and no word that only another choice has;
- anything else (a word or short phrase): the answer, normalised (case, punctuation, articles, number words), equals
  the gold or holds it as a whole-word sequence.
An answer that cannot be parsed (no yes/no, no number) is wrong, never a random guess, and is counted separately.
"""

from __future__ import annotations

import re

from ..bootstrap import mean_with_ci

NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
ARTICLES = {"a", "an", "the"}


def words(text: str) -> list[str]:
    """Lower-case word tokens (MMAR's `\\b\\w+\\b`)."""
    return re.findall(r"\b\w+\b", text.lower())


def normalise(text: str) -> list[str]:
    return [str(NUMBERS.get(w, w)) for w in words(text) if w not in ARTICLES]


def first_number(text: str) -> int | None:
    for w in words(text):
        if w.isdigit():
            return int(w)
        if w in NUMBERS:
            return NUMBERS[w]
    return None


def question_kind(gold: str, choices: list[str] | None) -> str:
    if choices:
        return "choice"
    g = normalise(gold)
    if g in (["yes"], ["no"]):
        return "yes_no"
    if len(g) == 1 and g[0].isdigit():
        return "count"
    return "short"


def judge(answer: str, gold: str, choices: list[str] | None = None) -> tuple[bool, bool]:
    """→ (correct, parsed). An unparsed answer is never correct."""
    kind = question_kind(gold, choices)
    if kind == "yes_no":
        said = next((w for w in words(answer) if w in ("yes", "no")), None)
        return said == normalise(gold)[0], said is not None
    if kind == "count":
        said = first_number(answer)
        return said == int(normalise(gold)[0]), said is not None
    if kind == "choice":
        said, gold_words = set(words(answer)), set(words(gold))
        others = set().union(*(set(words(c)) for c in choices if c != gold)) - gold_words
        return bool(said) and gold_words <= said and not (said & others), bool(said)
    said, want = normalise(answer), normalise(gold)
    if not said:
        return False, False
    holds = any(said[i : i + len(want)] == want for i in range(len(said) - len(want) + 1))
    return said == want or holds, True


def exact_match(answers: list[str], golds: list[str], choices: list[list[str] | None] | None = None,
                seed: int = 0) -> dict:
    choices = choices or [None] * len(answers)
    results = [judge(a, g, c) for a, g, c in zip(answers, golds, choices)]
    kinds = [question_kind(g, c) for g, c in zip(golds, choices)]
    out = {"accuracy": {**mean_with_ci([float(ok) for ok, _ in results], seed=seed),
                        "unparsed": sum(not parsed for _, parsed in results)}}
    for kind in sorted(set(kinds)):
        picked = [float(ok) for (ok, _), k in zip(results, kinds) if k == kind]
        out[f"accuracy_{kind}"] = mean_with_ci(picked, seed=seed)
    return out
