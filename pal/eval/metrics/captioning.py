"""Captioning: CIDEr-D, BLEU-4, METEOR and ROUGE-L through pycocoevalcap (the coco-caption code the audio-captioning
benchmarks report), after its PTB tokenizer; SPICE (and SPIDEr = mean of CIDEr-D and SPICE) when the Stanford CoreNLP
models SPICE needs are present, otherwise reported as unavailable with the reason.

The PTB tokenizer, METEOR and SPICE run on Java: without `java` on the PATH this module raises MetricUnavailable
instead of returning any number. Intervals: CIDEr-D and ROUGE-L are means of per-caption scores (CIDEr-D's IDF from the
whole reference set, as pycocoevalcap computes it); BLEU-4 and METEOR are corpus statistics, so each bootstrap
resample re-sums the per-caption n-gram counts (BLEU, pycocoevalcap's formula) or hands the resampled per-caption
alignment statistics to the METEOR jar, which aggregates them itself.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from ..bootstrap import bootstrap_ci, mean_with_ci

JRE_HINT = "install a Java runtime (Debian: `apt-get install default-jre-headless`; `make setup` does it as root)"


class MetricUnavailable(RuntimeError):
    """A metric that cannot be computed here; the message says why and what would make it available."""


def _bleu4_from_stats(testlen, reflen, guess, correct) -> float:
    """pycocoevalcap's corpus BLEU-4 from summed statistics (bleu_scorer.compute_score, option "closest")."""
    tiny, small = 1e-15, 1e-9
    bleu = 1.0
    for k in range(4):
        bleu *= (correct[k] + tiny) / (guess[k] + small)
    score = bleu ** (1 / 4)
    ratio = (testlen + tiny) / (reflen + small)
    return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


def _bleu(gts: dict, res: dict, ids: list, seed: int) -> dict:
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    scorer = BleuScorer(n=4)
    for i in ids:
        scorer += (res[i][0], gts[i])
    value = scorer.compute_score(option="closest", verbose=0)[0][3]
    testlen = np.array([c["testlen"] for c in scorer.ctest], dtype=np.float64)
    reflen = np.array([min((abs(r - c["testlen"]), r) for r in c["reflen"])[1] for c in scorer.ctest], dtype=np.float64)
    guess = np.array([c["guess"] for c in scorer.ctest], dtype=np.float64)
    correct = np.array([c["correct"] for c in scorer.ctest], dtype=np.float64)
    low, high = bootstrap_ci(len(ids), lambda idx: _bleu4_from_stats(testlen[idx].sum(), reflen[idx].sum(),
                                                                     guess[idx].sum(0), correct[idx].sum(0)), seed=seed)
    return {"value": float(value), "ci95": [low, high], "n": len(ids)}


def _meteor(gts: dict, res: dict, ids: list, seed: int) -> dict:
    """METEOR from the jar: per-caption alignment statistics once, then the jar's own aggregate over a list of them
    (the whole set, and each bootstrap resample with its repeated captions)."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        stats = [meteor._stat(res[i][0], gts[i]) for i in ids]
        jar = meteor.meteor_p

        def score(idx) -> float:
            jar.stdin.write(("EVAL ||| " + " ||| ".join(stats[i] for i in idx) + "\n").encode())
            jar.stdin.flush()
            for _ in idx:  # one line per caption, then the aggregate
                jar.stdout.readline()
            return float(jar.stdout.readline().strip())

        value = score(range(len(ids)))
        low, high = bootstrap_ci(len(ids), score, seed=seed)
    finally:
        del meteor
    return {"value": value, "ci95": [low, high], "n": len(ids)}


def spice_unavailable() -> str | None:
    """Why SPICE cannot run here, or None."""
    from pycocoevalcap.spice import spice

    lib = Path(spice.__file__).parent / "lib"
    needed = [lib / "stanford-corenlp-3.6.0.jar", lib / "stanford-corenlp-3.6.0-models.jar"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        return (f"SPICE needs {missing} in {lib}; pycocoevalcap downloads them from nlp.stanford.edu, which this "
                "machine cannot reach: copy them there to enable SPICE and SPIDEr.")
    return None


def captioning(candidates: list[str], references: list[list[str]], seed: int = 0) -> dict:
    """Corpus caption metrics with 95% bootstrap intervals; references: one or more per candidate."""
    if shutil.which("java") is None:
        raise MetricUnavailable(f"caption metrics need Java for the PTB tokenizer and METEOR: {JRE_HINT}.")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ids = list(range(len(candidates)))
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in references[i]] for i in ids})
    res = tokenizer.tokenize({i: [{"caption": candidates[i]}] for i in ids})
    _, cider = Cider().compute_score(gts, res)
    _, rouge = Rouge().compute_score(gts, res)
    out = {"CIDEr-D": mean_with_ci(cider, seed=seed), "BLEU-4": _bleu(gts, res, ids, seed),
           "METEOR": _meteor(gts, res, ids, seed), "ROUGE-L": mean_with_ci(rouge, seed=seed)}
    why = spice_unavailable()
    if why is None:
        from pycocoevalcap.spice.spice import Spice

        try:
            _, spice = Spice().compute_score(gts, res)
            spice = [s["All"]["f"] for s in spice]
            out["SPICE"] = mean_with_ci(spice, seed=seed)
            out["SPIDEr"] = mean_with_ci((np.asarray(cider) + np.asarray(spice)) / 2, seed=seed)
        except Exception as err:  # SPICE's jar runs on Java 8-13 only (docs/design.md#environment)
            why = f"SPICE failed: {err}"
    if why is not None:
        out["SPICE"] = out["SPIDEr"] = {"unavailable": why}
    return out
