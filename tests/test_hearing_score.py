"""The order-free hearing score (pal/eval/hearing.py): per-class average precision over clips of each class's
likelihood as the answer, the yes/no questions' AUC, the fraction of a probe's ceiling; checked by hand and against
whole rows run through the plain model."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from conftest import write_jsonl

from pal.cli.main import main
from pal.data.manifest import read_questions
from pal.eval.hearing import HearingScores, hearing_fraction, hearing_metrics, hearing_scores


def _scores(scores, truth, yes_no=(), said_yes=()) -> HearingScores:
    truth = np.array(truth, dtype=bool)
    return HearingScores(clips=[f"/c{i}.wav" for i in range(len(truth))], classes=["a", "b"],
                         scores=np.array(scores, dtype=float), truth=truth, yes_no=np.array(yes_no, dtype=float),
                         said_yes=np.array(said_yes, dtype=bool))


def test_average_precision_chance_and_auc_by_hand():
    """Four clips. Class a (gold on clips 0, 1) scored 0.9, 0.1, 0.5, 0.2: ranked c0 (hit), c2, c3, c1 (hit): AP =
    (1/1 + 2/4) / 2 = 0.75. Class b (gold on clips 1, 2) scored 0.3, 0.8, 0.7, 0.1: both first, AP = 1. mAP 0.875;
    chance = mean prevalence (0.5 + 0.5) / 2 = 0.5. A score that ignores the audio (every clip tied) has AP = the
    prevalence. Yes/no log-odds 2, -1, 0.5, -3 for gold yes, yes, no, no: 3 of the 4 (yes, no) pairs ordered right,
    AUC 0.75."""
    found = _scores([[0.9, 0.3], [0.1, 0.8], [0.5, 0.7], [0.2, 0.1]], [[1, 0], [1, 1], [0, 1], [0, 0]],
                    [2, -1, 0.5, -3], [True, True, False, False])
    metrics = hearing_metrics(found)
    mAP = metrics["classify"]["hearing_mAP"]
    assert mAP["value"] == pytest.approx(0.875) and mAP["chance"] == pytest.approx(0.5)
    assert mAP["classes"] == pytest.approx({"a": 0.75, "b": 1.0}) and mAP["n"] == 4
    assert mAP["ci95"][0] <= mAP["value"] <= mAP["ci95"][1]
    assert metrics["qa"]["presence_AUC"]["value"] == pytest.approx(0.75)
    tied = hearing_metrics(_scores(np.full((4, 2), -2.0), [[1, 0], [1, 1], [0, 1], [0, 0]]))
    assert tied["classify"]["hearing_mAP"]["value"] == pytest.approx(0.5) and "qa" not in tied


def test_the_fraction_of_the_ceiling_by_hand():
    """The model above (mAP 0.875) against a probe that ranks every class perfectly (mAP 1): (0.875 - 0.5) / (1 - 0.5)
    = 0.75. Clips are matched by path in any order; a class the probe never saw is left out."""
    found = _scores([[0.9, 0.3], [0.1, 0.8], [0.5, 0.7], [0.2, 0.1]], [[1, 0], [1, 1], [0, 1], [0, 0]])
    probe = {"classes": ["b", "a", "z"], "test": ["/c3.wav", "/c2.wav", "/c1.wav", "/c0.wav"],
             "encoders": {"sslam": {"readout": "mlp", "scores": [[0.0, 0.1, 0], [0.9, 0.2, 0], [0.8, 0.7, 0],
                                                                 [0.1, 0.8, 0]]}}}
    fraction = hearing_fraction(found, probe, ["sslam"])
    assert fraction["value"] == pytest.approx(0.75) and fraction["ceiling"] == pytest.approx(1.0)
    assert fraction["model"] == pytest.approx(0.875) and fraction["readout"] == "mlp" and fraction["n"] == 4
    # A ceiling at chance is no ceiling: no fraction.
    probe["encoders"]["sslam"]["scores"] = [[0.5, 0.5, 0]] * 4
    assert hearing_fraction(found, probe, ["sslam"]) is None


def _row(folder, i, task, question, answer, **extra) -> dict:
    return {"id": f"{task}{i}-{len(question)}", "audio": str(folder / f"tone{i}.wav"), "task": task,
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


def test_pal_eval_gap_gives_the_hearing_score_of_whole_rows_with_its_controls(trained_tiny, curriculum_env, tmp_path,
                                                                              capsys, monkeypatch):
    """The mAP and AUC that `pal eval gap` reports equal those computed here from each (clip, class) row run whole
    through the model, the log-probabilities of the class name's tokens read off its logits, ranked by scikit-learn;
    another clip's audio is the next clip's; the text-only model (here the same model asked without audio) ties
    every clip, so its mAP is the mean prevalence. Each clip's rows continue from its prompt run once (never whole)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    import pal.eval.answer_loss
    from pal.inference.audio_llm import AudioLLM

    row = functools.partial(_row, curriculum_env)
    gold = [["high", "tone"], ["low"], ["tone"], ["high"]]
    rows = [row(i, "classify", "What do you hear?", ", ".join(labels), labels=labels) for i, labels in enumerate(gold)]
    rows += [row(i, "qa", "Is the tone high? Answer yes or no.", answer)
             for i, answer in enumerate(["yes", "no", "no", "yes"])]
    manifest = write_jsonl(tmp_path / "test.jsonl", rows)
    out = tmp_path / "gap.json"
    whole_rows = []
    monkeypatch.setattr(pal.eval.answer_loss, "answer_losses", lambda *a, **k: whole_rows.append(a) or 1 / 0)
    assert main(["eval", "gap", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
                 "--text-only-model", str(trained_tiny), "--tasks", "classify,qa"]) == 0
    monkeypatch.undo()
    assert not whole_rows
    hearing = json.loads(out.read_text())["hearing"]

    llm = AudioLLM.from_pretrained(trained_tiny)
    tokenizer = llm.processor.tokenizer

    def log_likelihood(question: str, answer: str, clip: int | None) -> float:
        """log p(answer's own tokens | prompt, clip's audio) from one whole row's logits."""
        features = None
        if clip is not None:
            features, bad = llm.file_features([str(curriculum_env / f"tone{clip}.wav")])
            assert not bad
        conversation = llm.conversation(question, clip is not None)
        prompt = llm.processor([conversation], features)
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        inputs = {**prompt, "input_ids": torch.cat([prompt["input_ids"], torch.tensor([ids])], 1),
                  "attention_mask": torch.ones(1, prompt["input_ids"].shape[1] + len(ids), dtype=torch.long),
                  "audio_token_mask": torch.nn.functional.pad(prompt["audio_token_mask"], (0, len(ids)))}
        with torch.no_grad():
            logits = llm.model(**inputs).logits[0, -len(ids) - 1 : -1].float()
        return float(torch.log_softmax(logits, -1)[torch.arange(len(ids)), ids].sum())

    classes = ["high", "low", "tone"]
    truth = np.array([[c in labels for c in classes] for labels in gold])
    own, other = (lambda i: i), (lambda i: (i + 1) % 4)
    yes_no = (("yes", "Yes"), ("no", "No"))
    for control, clip_of in (("metrics", own), ("mismatched_audio", other)):
        scores = np.array([[log_likelihood("What do you hear?", c, clip_of(i)) for c in classes] for i in range(4)])
        odds = [np.logaddexp(*[log_likelihood("Is the tone high? Answer yes or no.", w, clip_of(i)) for w in yes_no[0]])
                - np.logaddexp(*[log_likelihood("Is the tone high? Answer yes or no.", w, clip_of(i)) for w in yes_no[1]])
                for i in range(4)]
        # The scores themselves, through the shared prefix, equal the whole rows' (the ranks below are coarse).
        examples = read_questions(manifest)
        heard = {e.id: str(curriculum_env / f"tone{clip_of(int(e.audio[-5]))}.wav") for e in examples}
        found = hearing_scores(llm, examples, heard)
        assert found.classes == classes and np.array_equal(found.truth, truth)
        np.testing.assert_allclose(found.scores, scores, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(found.yes_no, odds, rtol=1e-4, atol=1e-4)
        assert len(set(np.round(scores, 4).ravel())) == scores.size  # twelve rows, twelve different likelihoods
        mAP = np.mean([average_precision_score(truth[:, c], scores[:, c]) for c in range(3)])
        assert hearing[control]["classify"]["hearing_mAP"]["value"] == pytest.approx(mAP, abs=1e-6)
        assert hearing[control]["qa"]["presence_AUC"]["value"] == pytest.approx(
            roc_auc_score([True, False, False, True], odds), abs=1e-6)
    prevalence = truth.mean(0).mean()  # (2 + 1 + 2) / 4 / 3
    for control in ("text_only_trained", "no_audio"):
        assert hearing[control]["classify"]["hearing_mAP"]["value"] == pytest.approx(prevalence)
    assert hearing["metrics"]["classify"]["hearing_mAP"]["chance"] == pytest.approx(prevalence)
    printed = capsys.readouterr().out
    assert "hearing_mAP" in printed and "presence_AUC" in printed and "chance (each class's prevalence)" in printed
