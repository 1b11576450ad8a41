"""The order-free hearing score: how well a model's own likelihoods tell which classes sound in a clip, teacher-forced,
nothing generated.

- **mAP over classes.** Every clip that a classification example labels is scored for every class c of the manifest's
  label set by the log-likelihood of c's name as the start of the answer to that example's own question ("Which
  sounds can you hear? List them."), given the clip's audio: s(clip, c) = log p(tokens of c | prompt, audio), the
  turn's end left out (a clip with several sounds is not penalised for going on). Average precision ranks the clips
  for one class at a time, so the score depends neither on the order in which a gold answer lists its labels nor on
  how the model weighs one class against another; mAP is the mean over classes with a positive clip. Chance: a score
  that ignores the audio gives every clip the same value, and the AP of a tie is the class's prevalence
  (`chance_mAP`, their mean). This is the multi-label protocol of LTU, which PAL follows (docs/evaluation.md), with
  the model's likelihood in place of an embedding of a generated answer.
- **AUC of the yes/no questions** (the gold's first yes/no word, as closed-QA scoring reads it): the score of a question
  is log[p(yes) + p(Yes)] − log[p(no) + p(No)] of the answer's first word with the clip; ROC AUC over the questions,
  chance 0.5.

A clip's rows share one audio prefix: its prompt with the audio runs through the LLM once, and the classes' names (and
the yes/no words) continue from that cache (`answer_losses_about_one_clip`).

Controls, scored the same way: the model given another clip's audio (`mismatched_audio`'s derangement, the truth still
the asked clip's), and the text-only trained model asked without audio (its prior: every clip ties, so its mAP is the
chance mAP). With `pal probe`'s result, `hearing_probe_fraction` = (model mAP − chance mAP) / (ceiling mAP − chance
mAP) on the same clips, the ceiling being the best read-out of the model's encoders (eval/probe.py), with a paired
bootstrap interval over clips (model, ceiling and chance resampled together).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pal.common.audio_source import audio_identity
from pal.data.manifest import Example, mismatched_audio
from pal.encoders.audio import AudioError

from .bootstrap import bootstrap_ci
from .metrics.classification import mean_average_precision
from .metrics.closed_qa import normalise

YES, NO = ("yes", "Yes"), ("no", "No")
ROWS_PER_PASS = 64  # rows after one shared audio prefix: short answers, so many fit one pass
MIN_ROOM = 0.01  # no fraction of a ceiling that is within this of chance


@dataclass
class HearingScores:
    """What a model's likelihoods say of a manifest's labelled clips and yes/no questions."""

    clips: list[str]  # the labelled clips (resolved paths), one row of `scores` each
    classes: list[str]
    scores: np.ndarray  # [C, L] log-likelihood of each class's name as the answer's start
    truth: np.ndarray  # [C, L] bool, the clip's gold labels
    yes_no: np.ndarray  # [Q] log-odds of "yes" against "no"
    said_yes: np.ndarray  # [Q] bool, the gold decision


def labelled(examples: list[Example]) -> list[Example]:
    """The first classification example of each clip that has audio and gold labels."""
    found: dict[str, Example] = {}
    for e in examples:
        if e.task == "classify" and e.audio is not None and e.answer is not None:
            found.setdefault(e.audio, e)
    return list(found.values())


def yes_no_questions(examples: list[Example]) -> list[tuple[Example, bool]]:
    """(question, gold is yes) for every example with audio whose gold answer holds a yes/no word (the first counts)."""
    out = []
    for e in examples:
        if e.audio is None or e.answer is None or e.task == "classify":
            continue
        decision = next((w for w in normalise(e.answer) if w in ("yes", "no")), None)
        if decision is not None:
            out.append((e, decision == "yes"))
    return out


def gold_labels(e: Example) -> list[str]:
    return e.labels or [e.answer]


def hearing_scores(llm, examples: list[Example], heard: dict[str, str | None] | None = None,
                   with_audio: bool = True) -> HearingScores | None:
    """`llm` (an AudioLLM)'s scores of the labelled clips and yes/no questions of `examples`; None when there are
    neither. `heard`: {example id: the audio played instead of its own} (the mismatched control); `with_audio=False`:
    asked without audio (the text-only trained model)."""
    from .answer_loss import answer_losses_about_one_clip

    items, questions = labelled(examples), yes_no_questions(examples)
    if not items and not questions:
        return None
    classes = sorted({label for e in items for label in gold_labels(e)})
    tokenizer = llm.processor.tokenizer
    lengths = {text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in classes + [*YES, *NO]}
    heard = heard or {}
    by_clip: dict[str | None, list[tuple[list[dict], str, tuple[str, int, int]]]] = {}
    for i, e in enumerate(items):
        for c, label in enumerate(classes):
            by_clip.setdefault(heard.get(e.id, e.audio) if with_audio else None, []).append(
                (e.prompt, label, ("class", i, c)))
    for q, (e, _) in enumerate(questions):
        for k, word in enumerate(YES + NO):
            by_clip.setdefault(heard.get(e.id, e.audio) if with_audio else None, []).append(
                (e.prompt, word, ("yes_no", q, k)))
    log_likelihood = {"class": np.zeros((len(items), len(classes))), "yes_no": np.zeros((len(questions), 4))}
    for clip, rows in by_clip.items():
        features = None
        if clip is not None:
            features, bad = llm.file_features([clip])
            if bad:
                raise AudioError(next(iter(bad.values())))
        # Each distinct row once: without audio every row is in one group, and a class asked of any clip is one row.
        conversations = [llm.conversation(prompt, with_audio) + [{"role": "assistant", "content": answer}]
                         for prompt, answer, _ in rows]
        keys = [json.dumps(c) for c in conversations]
        distinct = {key: (c, row[1]) for key, c, row in zip(keys, conversations, rows)}
        scored: dict[str, float] = {}
        for start in range(0, len(distinct), ROWS_PER_PASS):
            part = list(distinct)[start : start + ROWS_PER_PASS]
            losses = answer_losses_about_one_clip(llm, [distinct[k][0] for k in part], features,
                                                  [lengths[distinct[k][1]] for k in part])
            scored.update({key: -loss for key, loss in zip(part, losses.tolist())})
        for key, (_, _, (kind, i, j)) in zip(keys, rows):
            log_likelihood[kind][i, j] = scored[key]
    words = log_likelihood["yes_no"]
    return HearingScores(
        clips=[audio_identity(e.audio) for e in items], classes=classes, scores=log_likelihood["class"],
        truth=np.array([[label in gold_labels(e) for label in classes] for e in items], dtype=bool).reshape(
            len(items), len(classes)),
        yes_no=np.logaddexp(words[:, 0], words[:, 1]) - np.logaddexp(words[:, 2], words[:, 3]),
        said_yes=np.array([yes for _, yes in questions], dtype=bool))


def chance_map(truth: np.ndarray) -> float:
    """The mAP of a score that ignores the audio: the mean prevalence over classes with a positive clip."""
    present = truth.sum(0) > 0
    return float(truth[:, present].mean(0).mean()) if present.any() else float("nan")


def _map_or_nan(scores: np.ndarray, truth: np.ndarray) -> float:
    return mean_average_precision(scores, truth) if truth.any() else float("nan")


def _auc_or_nan(scores: np.ndarray, truth: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else float("nan")


def hearing_metrics(found: HearingScores, seed: int = 0) -> dict[str, dict]:
    """{task: {metric: {"value", "ci95", "n", ...}}}: classification's `hearing_mAP` (with its chance level and each
    class's AP) and the yes/no questions' `presence_AUC`, each with a bootstrap 95% interval over clips / questions."""
    from sklearn.metrics import average_precision_score

    out: dict[str, dict] = {}
    if found.truth.any():
        s, t = found.scores, found.truth
        low, high = bootstrap_ci(len(t), lambda idx: _map_or_nan(s[idx], t[idx]), seed=seed)
        per_class = {label: float(average_precision_score(t[:, c], s[:, c]))
                     for c, label in enumerate(found.classes) if t[:, c].any()}
        out["classify"] = {"hearing_mAP": {"value": _map_or_nan(s, t), "ci95": [low, high], "n": len(t),
                                           "chance": chance_map(t), "classes": per_class}}
    value = _auc_or_nan(found.yes_no, found.said_yes)
    if not np.isnan(value):
        y, gold = found.yes_no, found.said_yes
        low, high = bootstrap_ci(len(y), lambda idx: _auc_or_nan(y[idx], gold[idx]), seed=seed)
        out["qa"] = {"presence_AUC": {"value": value, "ci95": [low, high], "n": len(y)}}
    return out


def hearing_fraction(found: HearingScores, probe_result: dict, encoders: list[str], seed: int = 0) -> dict | None:
    """(model mAP − chance mAP) / (ceiling mAP − chance mAP) over the labelled clips the probe was tested on, the
    ceiling being the probe of the model's encoders (their one encoder's, or all together's) → {"value", "ci95", "n",
    "model", "ceiling", "chance", "encoder", "readout"}; None when no clip or class is shared, or the ceiling is within
    0.01 of chance."""
    from .probe import probe_encoder

    name = probe_encoder(probe_result, encoders)
    if name is None or "scores" not in probe_result["encoders"][name]:
        return None
    ceiling_rows = {str(Path(c).resolve()): row for c, row in
                    zip(probe_result["test"], probe_result["encoders"][name]["scores"])}
    rows = [i for i, clip in enumerate(found.clips) if clip in ceiling_rows]
    columns = [(c, probe_result["classes"].index(label)) for c, label in enumerate(found.classes)
               if label in probe_result["classes"]]
    if not rows or not columns:
        return None
    model = found.scores[np.ix_(rows, [c for c, _ in columns])]
    truth = found.truth[np.ix_(rows, [c for c, _ in columns])]
    ceiling = np.array([ceiling_rows[found.clips[i]] for i in rows])[:, [p for _, p in columns]]

    def fraction(idx: np.ndarray) -> float:
        if not truth[idx].any():
            return float("nan")
        chance = chance_map(truth[idx])
        room = _map_or_nan(ceiling[idx], truth[idx]) - chance
        return (_map_or_nan(model[idx], truth[idx]) - chance) / room if room > MIN_ROOM else float("nan")

    everything = np.arange(len(rows))
    value = fraction(everything)
    if np.isnan(value):
        return None
    low, high = bootstrap_ci(len(rows), fraction, seed=seed)
    return {"value": value, "ci95": [low, high], "n": len(rows), "model": _map_or_nan(model, truth),
            "ceiling": _map_or_nan(ceiling, truth), "chance": chance_map(truth), "encoder": name,
            "readout": probe_result["encoders"][name].get("readout", "linear")}


def hearing_with_controls(llm, examples: list[Example], text_only=None, probe: dict | None = None,
                          controls: bool = True) -> dict[str, dict]:
    """The hearing scores of `llm` and of its controls, keyed as `pal eval`'s results key a task's entry: {"metrics":
    {task: {metric: ...}}, "mismatched_audio": {...}, "no_audio": {...}, "text_only_trained": {...}}; empty when the
    manifest has no labelled clip and no yes/no question. `controls=False`: the model alone (and `text_only`)."""
    encoders = list(llm.ensemble.config.encoders) if getattr(llm, "ensemble", None) is not None else []
    asked = [e for e in examples if e.audio is not None]
    runs = {"metrics": hearing_scores(llm, asked)}
    if runs["metrics"] is None:
        return {}
    if controls:
        swapped = mismatched_audio(asked)
        if swapped is not None:
            runs["mismatched_audio"] = hearing_scores(llm, asked, {e.id: s.audio for e, s in zip(asked, swapped)})
        runs["no_audio"] = hearing_scores(llm, asked, with_audio=False)
    if text_only is not None:
        runs["text_only_trained"] = hearing_scores(text_only, asked, with_audio=False)
    out: dict[str, dict] = {}
    for key, found in runs.items():
        metrics = hearing_metrics(found)
        if probe is not None and "classify" in metrics:
            fraction = hearing_fraction(found, probe, encoders)
            if fraction is not None:
                metrics["classify"]["hearing_probe_fraction"] = fraction
        out[key] = metrics
    return out


__all__ = ["HearingScores", "chance_map", "hearing_fraction", "hearing_metrics", "hearing_scores",
           "hearing_with_controls", "labelled", "yes_no_questions"]
