"""`pal probe`: the linear-probe ceiling of each encoder on a manifest's labels."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from conftest import tone, write_jsonl

from pal.cli.main import main
from pal.eval.probe import probe


def test_separable_classes_probe_perfectly_and_noise_does_not():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (120, 2)).astype(bool)
    x = rng.standard_normal((120, 6))
    x[:, 0] += 8 * y[:, 0]  # class a is in feature 0; class b is in no feature
    result = probe(x[:80], y[:80], x[80:], y[80:], ["a", "b"])
    assert result["classes"]["a"]["value"] == 1.0 and result["classes"]["a"]["ci95"][0] > 0.9
    assert abs(result["classes"]["b"]["value"] - 0.5) < 0.2  # chance, give or take 40 test clips
    assert result["classes"]["a"]["positives"] == int(y[80:, 0].sum())
    assert 0.5 < result["mAP"]["value"] < 1.0 and result["mAP"]["ci95"][0] <= result["mAP"]["value"]


def test_a_rare_class_is_probed_for_balanced_accuracy_not_for_the_majority():
    """A class present in 10 % of the clips, one feature shifted by d = 1 standard deviation when it is present. The
    threshold that maximises balanced accuracy is the midpoint (equal variances), which scores Φ(d/2) = 0.691; a
    probe fitted for plain accuracy answers "absent" almost always and scores near 0.5, a ceiling that is not one."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    y = (rng.random((8000, 1)) < 0.1)
    x = rng.standard_normal((8000, 1)) + y
    result = probe(x[:4000], y[:4000], x[4000:], y[4000:], ["rare"])
    assert abs(result["classes"]["rare"]["value"] - norm.cdf(0.5)) < 0.03


def test_the_ceiling_is_the_read_out_that_cross_validates_best_and_overfitting_shows():
    """Class "xor" sounds when exactly one of features 0 and 1 is positive: no linear read-out separates it (AP near
    its prevalence, 0.5), a one-hidden-layer MLP does; class "easy" lies in feature 2. The MLP wins the training
    clips' cross-validation and is the ceiling, chosen without the test clips. Each read-out's regularisation is
    one of its grid's, and its training mAP sits above its test mAP with 30 noise features and 300 clips."""
    from pal.eval.probe import LINEAR_C, MLP_ALPHA

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 33))
    y = np.stack([(x[:, 0] > 0) ^ (x[:, 1] > 0), x[:, 2] > 0.5], axis=1)
    result = probe(x[:300], y[:300], x[300:], y[300:], ["xor", "easy"])
    linear, mlp = result["readouts"]["linear"], result["readouts"]["mlp"]
    assert result["readout"] == "mlp" and mlp["cv_mAP"] > linear["cv_mAP"]
    assert linear["C"] in LINEAR_C and mlp["alpha"] in MLP_ALPHA and set(linear["cv"]) == {str(c) for c in LINEAR_C}
    assert result["mAP"]["value"] == pytest.approx(mlp["test_mAP"]) and mlp["test_mAP"] > 0.85 > linear["test_mAP"]
    assert linear["train_mAP"] > linear["test_mAP"] and mlp["train_mAP"] > mlp["test_mAP"]
    assert np.array(result["scores"]).shape == (100, 2)
    assert result["classes"]["xor"]["value"] > 0.6  # the MLP's labels (thresholded at the training prevalence) beat chance


def test_pal_probe_on_a_feature_cache_of_tones(tmp_path, capsys):
    rows = []
    for i in range(32):
        freq, label = [(300, "low tone"), (2400, "high tone")][i % 2]
        tone(tmp_path / f"t{i}.wav", freq * (1 + 0.01 * (i % 7)))  # test pitches inside the training range
        rows.append({"id": f"c{i}", "audio": f"t{i}.wav", "task": "classify", "labels": [label],
                     "messages": [{"role": "user", "content": "<audio>\nWhat is it?"},
                                  {"role": "assistant", "content": label}]})
    write_jsonl(tmp_path / "train.jsonl", rows[:24])
    write_jsonl(tmp_path / "test.jsonl", rows[24:])
    (tmp_path / "enc.yaml").write_text(yaml.safe_dump({"encoders": {"sslam": {"type": "sslam", "preset": "tiny"}}}))
    assert main(["features", "build", "--manifest", str(tmp_path / "train.jsonl"), "--config", str(tmp_path / "enc.yaml"),
                 "--out", str(tmp_path / "cache")]) == 0
    assert main(["features", "build", "--manifest", str(tmp_path / "test.jsonl"), "--config", str(tmp_path / "enc.yaml"),
                 "--out", str(tmp_path / "cache")]) == 0
    assert main(["probe", "--features", str(tmp_path / "cache"), "--encoders", str(tmp_path / "enc.yaml"),
                 "--manifest", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl"),
                 "--out", str(tmp_path / "probe.json")]) == 0
    said = capsys.readouterr().out
    assert "24 training clips, 8 test clips, 2 classes" in said and "high tone" in said
    result = json.loads((tmp_path / "probe.json").read_text())
    # Pitch is what a random tiny SSLAM still carries (the fbank's energy moves between mel bins): probed perfectly.
    assert result["encoders"]["sslam"]["classes"]["high tone"]["value"] == 1.0


def test_balanced_accuracy_and_the_fraction_of_the_probe_ceiling_by_hand():
    """Four clips, classes a and b. Gold: {a}, {a, b}, {b}, {}. The model lists {a}, {a}, {}, {}: class a all right
    (1.0), class b never said ((0 + 1) / 2 = 0.5): 0.75. The probe predicts {a}, {a, b}, {b}, {b}: a 1.0, b hits
    both positives and rejects one of two negatives ((1 + 0.5) / 2 = 0.75): 0.875. The model reaches
    (0.75 - 0.5) / (0.875 - 0.5) = 2/3 of the probe's margin over chance."""
    from pal.eval.metrics.classification import balanced_accuracy, label_matrix
    from pal.eval.probe import probe_fraction

    classes = ["a", "b"]
    gold = [["a"], ["a", "b"], ["b"], []]
    listed = [{"a"}, {"a"}, set(), set()]
    probed = [["a"], ["a", "b"], ["b"], ["b"]]
    truth = label_matrix(gold, classes)
    assert balanced_accuracy(label_matrix(listed, classes), truth) == 0.75
    assert balanced_accuracy(label_matrix(probed, classes), truth) == 0.875
    found = probe_fraction(listed, gold, probed, classes)
    assert found["value"] == pytest.approx(2 / 3) and found["model"] == 0.75 and found["probe"] == 0.875
    assert found["n"] == 4 and found["ci95"][0] <= found["value"] <= found["ci95"][1]
    # A probe at chance is no ceiling: no fraction.
    assert probe_fraction(listed, gold, [[], [], [], []], classes) is None
    # A class present in every clip (or none) has no balanced accuracy and is left out of the mean.
    assert balanced_accuracy(label_matrix([{"a"}, set()], ["a", "b"]), label_matrix([["a", "b"], ["b"]], ["a", "b"])) == 1.0


def test_pal_eval_score_reports_the_classification_as_a_fraction_of_the_probe(trained_tiny, curriculum_env, tmp_path,
                                                                              capsys):
    """`pal eval score --probe`: the listed labels of the answers file against a probe result written here by hand;
    the expected fraction from scikit-learn's balanced accuracy per class."""
    from sklearn.metrics import balanced_accuracy_score

    from pal.eval.metrics.classification import listed_labels

    labels = ["high pitched tone", "low pitched tone", "speech"]
    gold = [["high pitched tone"], ["low pitched tone"], ["high pitched tone", "speech"], ["speech"]]
    rows = [{"id": f"c{i}", "audio": str(curriculum_env / f"tone{i}.wav"), "task": "classify", "labels": g,
             "messages": [{"role": "user", "content": "<audio>\nWhich sounds can you hear? List them."},
                          {"role": "assistant", "content": ", ".join(g)}]} for i, g in enumerate(gold)]
    manifest = write_jsonl(tmp_path / "test.jsonl", rows)
    probed = [["high pitched tone"], ["low pitched tone", "speech"], ["high pitched tone"], ["speech"]]
    ceiling_scores = [[0.9, 0.2, 0.1], [0.3, 0.8, 0.6], [0.7, 0.1, 0.4], [0.2, 0.3, 0.9]]  # [clip][class]
    probe_file = tmp_path / "probe.json"
    probe_file.write_text(json.dumps({"classes": labels, "test": [r["audio"] for r in rows], "encoders": {
        "sslam": {"predicted": probed, "scores": ceiling_scores, "readout": "mlp"}}}))
    out = tmp_path / "results.json"
    assert main(["eval", "score", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
                 "--max-new-tokens", "12", "--probe", str(probe_file)]) == 0
    result = json.loads(out.read_text())
    answers = [json.loads(line)["answer"] for line in (tmp_path / "results.answers.jsonl").read_text().splitlines()]

    def sklearn_balanced(sets):
        return np.mean([balanced_accuracy_score([c in g for g in gold], [c in s for s in sets]) for c in labels])

    model, ceiling = sklearn_balanced(listed_labels(answers, labels)), sklearn_balanced(probed)
    found = result["tasks"]["classify"]["metrics"]["probe_fraction"]
    assert found["probe"] == pytest.approx(ceiling) and found["model"] == pytest.approx(model)
    assert found["value"] == pytest.approx((model - 0.5) / (ceiling - 0.5)) and found["encoder"] == "sslam"
    assert "probe_fraction" in result["tasks"]["classify"]["mismatched_audio"]  # beside its controls too
    # The hearing mAP's margin over chance as a fraction of the probe scores' (their AP by scikit-learn).
    from sklearn.metrics import average_precision_score

    truth = np.array([[c in g for c in labels] for g in gold])
    ceiling_map = np.mean([average_precision_score(truth[:, c], np.array(ceiling_scores)[:, c]) for c in range(3)])
    chance = truth.mean(0).mean()
    hearing = result["tasks"]["classify"]["metrics"]
    assert hearing["hearing_mAP"]["chance"] == pytest.approx(chance)
    fraction = hearing["hearing_probe_fraction"]
    assert fraction["ceiling"] == pytest.approx(ceiling_map) and fraction["readout"] == "mlp"
    assert fraction["value"] == pytest.approx((hearing["hearing_mAP"]["value"] - chance) / (ceiling_map - chance))
    assert "hearing_probe_fraction" in result["tasks"]["classify"]["mismatched_audio"]
    assert "the sslam probe's" in capsys.readouterr().out  # printed beside the score: the formula's two terms
    # The probe's clips named relative to another working directory are the same clips (the answers are reused).
    probe_file.write_text(json.dumps({"classes": labels, "test": [os.path.relpath(r["audio"]) for r in rows],
                                      "encoders": {"sslam": {"predicted": probed, "scores": ceiling_scores}}}))
    assert main(["eval", "score", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
                 "--max-new-tokens", "12", "--probe", str(probe_file)]) == 0
    assert json.loads(out.read_text())["tasks"]["classify"]["metrics"]["probe_fraction"]["value"] == found["value"]
    # A probe file from before per-clip predictions were kept says what to do.
    probe_file.write_text(json.dumps({"classes": labels, "encoders": {"sslam": {"balanced_accuracy": {}}}}))
    capsys.readouterr()
    assert main(["eval", "score", "--model", str(trained_tiny), "--manifest", str(manifest), "--out",
                 str(tmp_path / "again.json"), "--probe", str(probe_file)]) == 2
    said = capsys.readouterr().err
    assert str(probe_file) in said and "run `pal probe ... --test MANIFEST --out` again" in said
    assert not (tmp_path / "again.json").exists()
