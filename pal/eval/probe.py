"""`pal probe`: the linear-probe ceiling of each frozen encoder on a manifest's labels.

What a connector could at best carry to the LLM: per clip, each encoder's real tokens are mean- and max-pooled
([2·D_e]), standardised, and one class-balanced logistic regression per class is fitted on the training clips
(scikit-learn). On the test clips we report each class's balanced accuracy (threshold 0.5) and the mAP over classes,
each with a bootstrap 95% interval over test clips; and the same for every encoder together. A trained audio LLM
whose answers stay at the dataset's prior while its encoders probe well has a connector or curriculum problem, not an
encoder one.

How much of that ceiling a trained model reaches (`probe_fraction`, in `pal eval score --probe PROBE.json`): the
model's listed labels scored by the same per-class balanced accuracy on the same test clips, as a fraction of the
probe's above chance, (model − 0.5) / (probe − 0.5), with a bootstrap interval over clips. Near 1: the connector
carries what a linear read-out of the features finds; near 0 with a high probe: the connector or the curriculum
loses it; a low probe: the encoder never had it.

Labels: the `labels` of a manifest's classification examples (the answer when there are none), joined per clip.
Without a test manifest, the clips are split 80/20 at random (seeded): clips, never examples, so a clip's questions
never straddle the split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pal.data.manifest import Example, read_questions
from pal.encoders.ensemble import EnsembleConfig
from pal.encoders.feature_cache import FeatureCache
from pal.encoders.identity import read_ensemble_record

from .bootstrap import bootstrap_ci, mean_with_ci
from .metrics.classification import balanced_accuracy, label_matrix, listed_labels, mean_average_precision

CHANCE = 0.5  # balanced accuracy of a read-out that ignores the audio


def clip_labels(examples: list[Example]) -> dict[str, set[str]]:
    """{clip path: its labels} from the classification examples that have audio."""
    out: dict[str, set[str]] = {}
    for e in examples:
        if e.task == "classify" and e.audio is not None:
            out.setdefault(e.audio, set()).update(e.labels or [e.answer])
    return out


def pooled_features(cache: FeatureCache, clips: list[str], batch: int = 64) -> dict[str, np.ndarray]:
    """{encoder: [C, 2·D_e]}: mean and max over each clip's real tokens."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(clips), batch):
        for name, (tokens, mask) in cache.get(clips[start : start + batch]).items():
            tokens, m = tokens.float(), mask.unsqueeze(-1)
            mean = (tokens * m).sum(1) / m.sum(1).clamp(min=1)
            peak = tokens.masked_fill(~m, float("-inf")).amax(1)
            parts.setdefault(name, []).append(np.concatenate([mean.numpy(), peak.numpy()], axis=1))
    return {name: np.concatenate(p) for name, p in parts.items()}


def probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: list[str],
          seed: int = 0) -> dict:
    """One standardised logistic regression per class → {"classes": {label: balanced accuracy with CI},
    "balanced_accuracy": mean over classes with CI, "mAP": with CI}."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    scores = np.zeros(y_test.shape)
    for c in range(len(classes)):
        if y_train[:, c].min() == y_train[:, c].max():  # a class always (or never) present: predict that
            scores[:, c] = float(y_train[0, c])
            continue
        # Classes weighted to balance: the score is balanced accuracy (the demo's presence questions are half yes,
        # half no), and a fit for plain accuracy would answer "absent" for a rare class and understate the ceiling.
        model = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
        model.fit(x_train, y_train[:, c])
        scores[:, c] = model.predict_proba(x_test)[:, 1]
    predicted = scores >= 0.5
    n = len(y_test)

    def balanced(c: int, idx: np.ndarray) -> float:
        truth = y_test[idx, c]
        return float(balanced_accuracy_score(truth, predicted[idx, c])) if truth.min() != truth.max() else float("nan")

    per_class = {}
    for c, label in enumerate(classes):
        low, high = bootstrap_ci(n, lambda idx, c=c: balanced(c, idx), seed=seed)
        per_class[label] = {"value": balanced(c, np.arange(n)), "ci95": [low, high], "n": n,
                            "positives": int(y_test[:, c].sum())}
    valid = [c for c in range(len(classes)) if y_test[:, c].min() != y_test[:, c].max()]
    mean_balanced = mean_with_ci([per_class[classes[c]]["value"] for c in valid], seed=seed)
    low, high = bootstrap_ci(n, lambda idx: mean_average_precision(scores[idx], y_test[idx]), seed=seed)
    return {"classes": per_class, "balanced_accuracy": mean_balanced,
            "mAP": {"value": mean_average_precision(scores, y_test), "ci95": [low, high], "n": n},
            "predicted": [[classes[c] for c in np.flatnonzero(row)] for row in predicted]}


def run_probe(features: str | Path, encoders: str | Path | EnsembleConfig, manifest: str | Path,
              test: str | Path | None = None, seed: int = 0) -> dict:
    """The probe of every encoder of the cache (and of all of them together) → {"train_clips", "test_clips",
    "classes", "test": [test clip paths, the rows of each probe's "predicted"], "encoders": {name: probe(...)}}."""
    if isinstance(encoders, EnsembleConfig):
        config = encoders
    elif Path(encoders).is_dir():  # a trained model's folder: the encoders it was trained with (encoders.json)
        config = read_ensemble_record(encoders)[0]
    else:
        config = EnsembleConfig.from_yaml(encoders)
    cache = FeatureCache(features, config)
    train = clip_labels(read_questions(manifest))
    if test is not None:
        held = clip_labels(read_questions(test))
    else:
        clips = sorted(train)
        order = np.random.default_rng(seed).permutation(len(clips))
        cut = int(round(0.8 * len(clips)))
        held = {clips[i]: train[clips[i]] for i in order[cut:]}
        train = {clips[i]: train[clips[i]] for i in order[:cut]}
    if len(train) < 2 or len(held) < 2:
        raise ValueError(f"{manifest}: {len(train)} training and {len(held)} test clips with classification labels; "
                         "a probe needs at least 2 of each (examples with task 'classify', audio and labels).")
    classes = sorted(set().union(*train.values(), *held.values()))
    targets = {split: np.array([[label in labels[clip] for label in classes] for clip in sorted(labels)])
               for split, labels in (("train", train), ("test", held))}
    x_train, x_test = pooled_features(cache, sorted(train)), pooled_features(cache, sorted(held))
    if len(x_train) > 1:
        x_train["all encoders"] = np.concatenate(list(x_train.values()), axis=1)
        x_test["all encoders"] = np.concatenate(list(x_test.values()), axis=1)
    return {"train_clips": len(train), "test_clips": len(held), "classes": classes, "test": sorted(held),
            "encoders": {name: probe(x_train[name], targets["train"], x_test[name], targets["test"], classes, seed)
                         for name in x_train}}


def probe_encoder(probe_result: dict, encoders: list[str]) -> str | None:
    """The probe that measures a model's encoders: its one encoder's, or all encoders together's."""
    name = encoders[0] if len(encoders) == 1 else "all encoders"
    return name if name in probe_result["encoders"] else None


def probe_fraction(listed: list[set[str]], gold: list[list[str]], probed: list[list[str]], classes: list[str],
                   seed: int = 0) -> dict | None:
    """How much of the probe's ceiling a model's listed labels reach, on the same examples: (model − chance) /
    (probe − chance), each the per-class balanced accuracy (chance 0.5), with a bootstrap 95% interval over examples
    (model and probe resampled together) → {"value", "ci95", "n", "model", "probe"}; None when the probe is at chance
    (no ceiling to be a fraction of)."""
    said, truth, ceiling = (label_matrix(x, classes) for x in (listed, gold, probed))

    def fraction(idx: np.ndarray) -> float:
        room = balanced_accuracy(ceiling[idx], truth[idx]) - CHANCE
        return (balanced_accuracy(said[idx], truth[idx]) - CHANCE) / room if room > 0.01 else float("nan")

    everything = np.arange(len(truth))
    if np.isnan(fraction(everything)):
        return None
    low, high = bootstrap_ci(len(truth), fraction, seed=seed)
    return {"value": fraction(everything), "ci95": [low, high], "n": len(truth),
            "model": balanced_accuracy(said, truth), "probe": balanced_accuracy(ceiling, truth)}


def answers_probe_fraction(examples: list[Example], answers: list[str], probe_result: dict,
                           encoders: list[str]) -> dict | None:
    """`probe_fraction` of classification answers (same order as `examples`) against `pal probe`'s result for the
    model's encoders, over the examples whose clip the probe was tested on; None when none is, or no probe fits."""
    name = probe_encoder(probe_result, encoders)
    if name is None:
        return None
    # Clips matched by their resolved paths: the probe and the evaluation may have read their manifests from
    # different working directories.
    predicted = {str(Path(clip).resolve()): found
                 for clip, found in zip(probe_result["test"], probe_result["encoders"][name]["predicted"])}
    kept = [(e, a, str(Path(e.audio).resolve())) for e, a in zip(examples, answers) if e.audio is not None]
    kept = [(e, a, clip) for e, a, clip in kept if clip in predicted]
    if not kept:
        return None
    classes = probe_result["classes"]
    found = probe_fraction(listed_labels([a for _, a, _ in kept], classes),
                           [e.labels or [e.answer] for e, _, _ in kept], [predicted[clip] for _, _, clip in kept],
                           classes)
    return found | {"encoder": name} if found else None


__all__ = ["answers_probe_fraction", "clip_labels", "pooled_features", "probe", "probe_encoder", "probe_fraction", "run_probe"]
