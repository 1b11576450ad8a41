"""ASR: word error rate after Whisper's English text normaliser (`whisper-normalizer`), counted with jiwer.

WER = (substitutions + deletions + insertions) / reference words, over the whole set (not a mean of per-utterance
rates); the bootstrap resamples utterances and recomputes it from their counts.
"""

from __future__ import annotations

import numpy as np

from ..bootstrap import bootstrap_ci


def normalise(text: str) -> str:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()(text)


def word_error_rate(hypotheses: list[str], references: list[str], seed: int = 0) -> dict:
    import jiwer

    errors, words = [], []
    for hyp, ref in zip(hypotheses, references):
        ref_n, hyp_n = normalise(ref), normalise(hyp)
        if not ref_n.split():
            raise ValueError(f"reference {ref!r} is empty after normalisation: WER is undefined for it.")
        out = jiwer.process_words(ref_n, hyp_n if hyp_n.strip() else "")
        errors.append(out.substitutions + out.deletions + out.insertions)
        words.append(out.substitutions + out.deletions + out.hits)
    errors, words = np.array(errors, dtype=np.float64), np.array(words, dtype=np.float64)
    low, high = bootstrap_ci(len(errors), lambda idx: float(errors[idx].sum() / words[idx].sum()), seed=seed)
    return {"wer": {"value": float(errors.sum() / words.sum()), "ci95": [low, high], "n": len(errors)}}
