"""Closed-ended QA: normalised exact match, deterministic.

The kind of question is read off its gold answer (or its `choices`):
- yes/no: the first "yes" or "no" word of the answer;
- count: the first number of the answer, in digits or words ("three" = 3);
- multiple choice (`choices` given): matched as MMAR's / MMAU's official scripts do: every word of the gold choice is
  in the answer, and no word that only another choice has;
- a benchmark's own rule where its rows say so (`rule`): AIR-Bench's letter (the response's first character, else its
  second-to-last, if it is A-D), Clotho-AQA's single word (lmms-eval: case and punctuation removed, then equal);
- anything else (a word or short phrase): the answer, normalised (case, punctuation, articles, number words), equals
  the gold or holds it as a whole-word sequence.
An answer that cannot be parsed (no yes/no, no number) is wrong, never a random guess, and is counted separately.
"""

from __future__ import annotations

import re
import string

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


def choice_match(prediction: str, answer: str, choices: list[str]) -> bool:
    """MMAU's and MMAR's `string_match` (evaluation.py, identical in both): the answer's word set lies in the
    prediction's, which holds no word that only a wrong choice has; an empty prediction is wrong."""
    said, gold = set(words(prediction)), set(words(answer))
    options = [set(words(c)) for c in choices]
    wrong = set().union(*(option - gold for option in options if option != gold))
    return bool(said) and gold <= said and not (said & wrong)


def air_bench_letter(response: str) -> str | None:
    """AIR-Bench's score_foundation.py: newlines removed and the ends stripped; the first character if it is A-D
    (case-sensitive), else the second-to-last ("... is B."); else None, a failure (the string "None" too)."""
    said = response.strip().replace("\n", "")
    if said in ("", "None"):
        return None
    if said[0] in "ABCD":
        return said[0]
    return said[-2] if len(said) > 1 and said[-2] in "ABCD" else None


def single_word(text: str) -> str:
    """lmms-eval's exact match for Clotho-AQA: lower case, `string.punctuation` removed, ends stripped."""
    return text.strip().lower().translate(str.maketrans("", "", string.punctuation)).strip()


def judge(answer: str, gold: str, choices: list[str] | None = None, rule: str | None = None) -> tuple[bool, bool]:
    """→ (correct, parsed). An unparsed answer is never correct. `rule`: a benchmark's own ("letter" for AIR-Bench,
    whose gold answer is a letter; "word" for Clotho-AQA), else the kind read off the gold answer."""
    if rule == "letter":
        letter = air_bench_letter(answer)
        return letter == gold, letter is not None
    if rule == "word":
        said = single_word(answer)
        return said == single_word(gold), bool(said)
    kind = question_kind(gold, choices)
    if kind == "yes_no":
        said = next((w for w in words(answer) if w in ("yes", "no")), None)
        return said == normalise(gold)[0], said is not None
    if kind == "count":
        said = first_number(answer)
        return said == int(normalise(gold)[0]), said is not None
    if kind == "choice":
        return choice_match(answer, gold, choices), bool(words(answer))
    said, want = normalise(answer), normalise(gold)
    if not said:
        return False, False
    holds = any(said[i : i + len(want)] == want for i in range(len(said) - len(want) + 1))
    return said == want or holds, True


def exact_match(answers: list[str], golds: list[str], choices: list[list[str] | None] | None = None,
                rules: list[str | None] | None = None, seed: int = 0) -> dict:
    choices = choices or [None] * len(answers)
    rules = rules or [None] * len(answers)
    results = [judge(a, g, c, r) for a, g, c, r in zip(answers, golds, choices, rules)]
    kinds = [question_kind(g, None if r == "word" else c) for g, c, r in zip(golds, choices, rules)]
    out = {"accuracy": {**mean_with_ci([float(ok) for ok, _ in results], seed=seed),
                        "unparsed": sum(not parsed for _, parsed in results)}}
    for kind in sorted(set(kinds)):
        picked = [float(ok) for (ok, _), k in zip(results, kinds) if k == kind]
        out[f"accuracy_{kind}"] = mean_with_ci(picked, seed=seed)
    return out
