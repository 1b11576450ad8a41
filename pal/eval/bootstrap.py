"""Percentile bootstrap confidence intervals over examples (Efron & Tibshirani 1993, ch. 13).

A metric is given as a statistic of example indices, so corpus-level metrics (BLEU from summed n-gram counts,
METEOR from summed alignment statistics) are recomputed on each resample rather than approximated by a mean.
Resampling is seeded: the same inputs give the same interval.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


def bootstrap_ci(n: int, statistic: Callable[[np.ndarray], float], resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = 0) -> tuple[float, float]:
    """(low, high) of the `level` percentile interval of `statistic(indices)` over `resamples` resamples of n items.
    A resample on which the statistic is undefined (NaN: e.g. a per-class balanced accuracy when every drawn item
    holds the class) is left out; NaN when every one is."""
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_with_ci(values, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """{"value", "ci95", "n"} for the mean of per-example values (accuracy, per-example CIDEr-D, ...)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(len(values), lambda idx: float(values[idx].mean()), resamples, seed=seed)
    return {"value": float(values.mean()) if len(values) else float("nan"), "ci95": [low, high], "n": int(len(values))}
