"""`pal probe`: the linear-probe ceiling of each encoder on a manifest's labels."""

from __future__ import annotations

import json

import numpy as np
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
