"""`pal probe`: the ceiling of what a connector could carry from each frozen encoder, on a manifest's labels.

Per clip, each encoder's real tokens are mean- and max-pooled ([2·D_e]) and standardised; two read-outs are fitted on
the training clips (scikit-learn): a linear one (one class-balanced logistic regression per class) and a richer one
(an MLP with one hidden layer), each with its regularisation chosen by 3-fold cross-validation on the training clips.
The ceiling is the read-out with the higher cross-validated mAP (the test clips choose nothing). On the test clips we
report the ceiling's mAP over classes and each class's balanced accuracy, each with a bootstrap 95% interval over
test clips, and every read-out's training, cross-validated and test mAP (overfitting shows as a training mAP far
above the other two); the same for every encoder together. A trained audio LLM whose answers stay at the dataset's
prior while its encoders probe well has a connector or curriculum problem, not an encoder one.

How much of that ceiling a trained model reaches, in `pal eval --probe PROBE.json`: `hearing_probe_fraction`
(eval/hearing.py), the model's order-free hearing mAP over chance as a fraction of the ceiling's, from the per-clip
`scores` kept here; and `probe_fraction` (below), the model's generated labels scored by the same per-class balanced
accuracy as the ceiling's `predicted` labels, (model − 0.5) / (probe − 0.5). Near 1: the connector carries what a
read-out of the features finds; near 0 with a high ceiling: the connector or the curriculum loses it; a low
ceiling: the encoder never had it.

Labels: the `labels` of a manifest's classification examples (the answer when there are none), joined per clip.
Without a test manifest, the clips are split 80/20 at random (seeded): clips, never examples, so a clip's questions
never straddle the split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pal.common.audio_source import audio_identity
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


LINEAR_C = (0.001, 0.01, 0.1, 1.0, 10.0)  # inverse L2 strength of the logistic read-out, chosen by cross-validation
MLP_ALPHA = (1e-3, 1e-1, 1.0, 10.0)  # L2 strength of the MLP read-out, chosen by cross-validation
MLP_HIDDEN = 256
FOLDS = 3  # cross-validation folds: the fits are the probe's cost (a few hundred per encoder)


def _linear(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    # Classes weighted to balance: its labels are thresholded for balanced accuracy (the demo's presence questions are
    # half yes, half no), and a fit for plain accuracy would answer "absent" for a rare class and understate it.
    return OneVsRestClassifier(LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed))


def _mlp(alpha: float, seed: int):
    from sklearn.neural_network import MLPClassifier

    # Full-batch Adam (`_fit_scores` sets the batch to the clips): a few hundred clips make one batch, and it converges
    # in seconds where mini-batches take minutes.
    return MLPClassifier((MLP_HIDDEN,), alpha=alpha, learning_rate_init=0.01, max_iter=500, random_state=seed)


READOUTS = {"linear": (_linear, "C", LINEAR_C), "mlp": (_mlp, "alpha", MLP_ALPHA)}


def _fit_scores(make, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """A read-out fitted on the classes that vary in training → per-class probabilities [n_test, L] (a class always,
    or never, present in training scores that constant)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    varying = y_train.min(0) != y_train.max(0)
    scores = np.tile(y_train[0].astype(float), (len(x_test), 1))
    model = make()
    if "batch_size" in model.get_params():
        model.set_params(batch_size=len(x_train))
    # An MLP stopped at its iteration limit is an early-stopped one: the cross-validated mAP judges it, so the
    # library's warning (a screenful per probe) says nothing the probe's figures do not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if varying.sum() == 1:  # one class: a binary read-out (a one-column target would be read as binary anyway)
            found = model.fit(x_train, y_train[:, varying].ravel().astype(int)).predict_proba(x_test)[:, 1:]
        else:
            found = model.fit(x_train, y_train[:, varying].astype(int)).predict_proba(x_test) if varying.any() else None
    if found is not None:
        scores[:, varying] = found
    return scores


def _cross_validated_map(make, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The mean over folds of the held-out fold's mAP (training clips only)."""
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    found = []
    for fit, held in KFold(min(FOLDS, len(x)), shuffle=True, random_state=seed).split(x):
        if not y[held].any():
            continue
        scaler = StandardScaler().fit(x[fit])
        found.append(mean_average_precision(_fit_scores(make, scaler.transform(x[fit]), y[fit],
                                                        scaler.transform(x[held])), y[held]))
    return float(np.mean(found)) if found else float("nan")


def probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: list[str],
          seed: int = 0) -> dict:
    """Read-outs of pooled features [n, D] for multi-label targets [n, L] (bool): a linear one (one class-balanced
    logistic regression per class) and a richer one (an MLP, one hidden layer of 256), each with its regularisation
    chosen by 3-fold cross-validation on the training clips (mAP); the ceiling is the read-out whose cross-validated
    mAP is the higher, never chosen on the test clips.

    → {"readout": the ceiling's name, "readouts": {name: {hyperparameter, "cv_mAP", "train_mAP", "test_mAP"}} (a
    train mAP far above the test's: the read-out overfits), and the ceiling's test scores: "classes": {label:
    balanced accuracy with CI}, "balanced_accuracy", "mAP" (with CIs), "predicted" (each test clip's labels),
    "scores" ([test clips][classes] probabilities)}."""
    from functools import partial

    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    fitted_train, fitted_test = scaler.transform(x_train), scaler.transform(x_test)
    readouts, test_scores = {}, {}
    for name, (make, knob, grid) in READOUTS.items():
        cv = {value: _cross_validated_map(partial(make, value, seed), x_train, y_train, seed) for value in grid}
        best = max(grid, key=lambda v: -np.inf if np.isnan(cv[v]) else cv[v])
        both = _fit_scores(partial(make, best, seed), fitted_train, y_train, np.concatenate([fitted_train, fitted_test]))
        train_scores, test_scores[name] = both[: len(x_train)], both[len(x_train) :]
        readouts[name] = {knob: best, "cv_mAP": cv[best], "cv": {str(v): cv[v] for v in grid},
                          "train_mAP": mean_average_precision(train_scores, y_train) if y_train.any() else float("nan"),
                          "test_mAP": mean_average_precision(test_scores[name], y_test) if y_test.any() else float("nan")}
    ceiling = max(readouts, key=lambda r: -np.inf if np.isnan(readouts[r]["cv_mAP"]) else readouts[r]["cv_mAP"])
    scores = test_scores[ceiling]
    # Thresholds for the labels: 0.5 for the class-balanced logistic regression; the training prevalence for the
    # MLP's calibrated probabilities (where p / (1 - p) = π / (1 - π): the balanced-accuracy decision).
    threshold = 0.5 if ceiling == "linear" else y_train.mean(0)
    predicted = scores >= threshold
    n = len(y_test)

    def balanced(c: int, idx: np.ndarray) -> float:
        truth = y_test[idx, c]
        return float(balanced_accuracy(predicted[idx, c : c + 1], truth[:, None])) if truth.min() != truth.max() \
            else float("nan")

    per_class = {}
    for c, label in enumerate(classes):
        low, high = bootstrap_ci(n, lambda idx, c=c: balanced(c, idx), seed=seed)
        per_class[label] = {"value": balanced(c, np.arange(n)), "ci95": [low, high], "n": n,
                            "positives": int(y_test[:, c].sum())}
    valid = [c for c in range(len(classes)) if y_test[:, c].min() != y_test[:, c].max()]
    mean_balanced = mean_with_ci([per_class[classes[c]]["value"] for c in valid], seed=seed)
    low, high = bootstrap_ci(n, lambda idx: mean_average_precision(scores[idx], y_test[idx]) if y_test[idx].any()
                             else float("nan"), seed=seed)
    return {"readout": ceiling, "readouts": readouts, "classes": per_class, "balanced_accuracy": mean_balanced,
            "mAP": {"value": mean_average_precision(scores, y_test), "ci95": [low, high], "n": n},
            "predicted": [[classes[c] for c in np.flatnonzero(row)] for row in predicted],
            "scores": scores.round(6).tolist()}


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
    kept = [(e, a, audio_identity(e.audio)) for e, a in zip(examples, answers) if e.audio is not None]
    kept = [(e, a, clip) for e, a, clip in kept if clip in predicted]
    if not kept:
        return None
    classes = probe_result["classes"]
    found = probe_fraction(listed_labels([a for _, a, _ in kept], classes),
                           [e.labels or [e.answer] for e, _, _ in kept], [predicted[clip] for _, _, clip in kept],
                           classes)
    return found | {"encoder": name} if found else None


__all__ = ["answers_probe_fraction", "clip_labels", "pooled_features", "probe", "probe_encoder", "probe_fraction", "run_probe"]
