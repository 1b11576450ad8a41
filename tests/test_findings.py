"""`pal compare --preset findings`: the six connectors' configs train one curriculum, and the claims' paired
differences, intervals and verdicts are the formulas' (Student t over seeds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from pal.workflows import findings


def test_every_connector_trains_the_demos_stage_one_on_the_same_data(tmp_path):
    from pal.common.typed_config import config_path
    from pal.curriculum.config import CurriculumConfig
    from pal.encoders.ensemble import EnsembleConfig

    encoders = EnsembleConfig.from_yaml("pal:encoders/demo.yaml")
    data = tmp_path / "data"
    configs, text_only = findings.write_configs(tmp_path / "out", data, encoders, tmp_path / "features")
    assert [c.stem for c in configs] == list(findings.CONNECTORS) and configs[0].stem == "plits"
    shipped = yaml.safe_load(config_path("pal:curriculum/demo-full.yaml").read_text())
    loaded = {c.stem: CurriculumConfig.from_yaml(c) for c in configs}
    for name, config in loaded.items():
        [stage] = yaml.safe_load((tmp_path / "out" / "configs" / f"{name}.yaml").read_text())["stages"]
        # The shipped stage 1 (connector only, its lr, batch, packing, precision), only its length and paths changed.
        assert {k: v for k, v in stage.items() if k not in ("steps", "checkpoint_every", "data", "val_manifest")} == \
            {k: v for k, v in shipped["stages"][0].items() if k not in ("steps", "checkpoint_every", "data", "val_manifest")}
        assert stage["steps"] == findings.STEPS and stage["data"] == [{"manifest": str(data / "classify_caption.jsonl")}]
        assert config.stages[0].trainable == ["connector"] and config.feature_cache == str(tmp_path / "features")
        assert config.model.lora == loaded["plits"].model.lora and config.model.llm == "default"
        heard = findings.CONNECTORS[name][1] or ["sslam", "whisper"]
        assert sorted(config.model.encoders.encoders) == heard, name
    assert loaded["lal"].model.connector["lal_config"]["start_layer"] == 4
    assert loaded["lal-layer0"].model.connector["lal_config"]["start_layer"] == 0
    assert loaded["pal"].model.connector["routes"] == {"sslam": "lal", "whisper": "plits"}
    assert loaded["xattn"].model.connector["connector"] == "xattn"
    # The text-only baseline trains LoRA on the same stage (the connector has nothing to learn without audio), and
    # the text-only rewrite keeps it.
    baseline = CurriculumConfig.from_yaml(text_only)
    assert baseline.stages[0].trainable == ["lora"] and baseline.stages[0].steps == findings.STEPS
    assert baseline.stages[0].data == loaded["plits"].stages[0].data


SCORES = {  # connector → per seed: (answer loss with the clip's own audio, reliance gap, training examples/s)
    "plits": [(2.30, 0.30, 10.0), (2.20, 0.35, 10.2), (2.40, 0.28, 9.8)],
    "lal": [(2.00, 0.40, 11.0), (2.10, 0.42, 11.1), (2.05, 0.41, 10.9)],
    "lal-layer0": [(2.50, 0.20, 11.0), (2.62, 0.22, 11.0), (2.51, 0.19, 10.8)],
    "lal-sslam-only": [(1.70, 0.50, 12.0), (1.72, 0.52, 12.1), (1.69, 0.49, 11.9)],
    "pal": [(1.90, 0.45, 10.5), (1.95, 0.44, 10.4), (1.92, 0.46, 10.6)],
    "xattn": [(2.90, 0.10, 9.0), (2.80, 0.12, 9.1), (2.85, 0.11, 9.2)],
}


def _fake_runs(out: Path) -> None:
    """Run folders as the preset leaves them: `loss_evaluation`'s JSON and the stage's log end event."""
    for name, seeds in SCORES.items():
        for seed, (loss, gap, speed) in enumerate(seeds):
            folder = out / "runs" / name / f"seed{seed}"
            (folder / "stage1-connector").mkdir(parents=True)
            classify = {"n": 80, "answer_loss": loss, "answer_loss_mismatched": loss + gap, "gap": {"value": gap}}
            result = {"reliance": {"by_task": {"classify": classify}}, "text_only_answer_loss": 3.0 + seed / 10}
            (folder / f"eval-{findings.MANIFEST}.json").write_text(json.dumps(result))
            (folder / "stage1-connector" / "log.jsonl").write_text(json.dumps(
                {"event": "end", "examples_per_s": speed, "host_mb": 3000.0 + seed}) + "\n")


def _t_cell(values: list[float], digits: int = 3, signed: bool = True) -> str:
    from scipy import stats

    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(mean)} [{f.format(mean - half)}, {f.format(mean + half)}]"


def test_the_claims_table_holds_the_paired_t_intervals_and_the_verdicts(tmp_path):
    _fake_runs(tmp_path)
    probe = {"test_clips": 80, "encoders": {"all encoders": {"balanced_accuracy": {"value": 0.75}}}}
    markdown, page = findings.findings_report(tmp_path, 3, probe)
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip().strip("|").split("|")]
                                          for line in markdown.read_text().splitlines() if line.startswith("|"))}
    for claim, a, b, _ in findings.CLAIMS:
        cells = rows[claim]
        assert cells[1] == f"{a} − {b}"
        assert cells[2] == _t_cell([x[0] - y[0] for x, y in zip(SCORES[a], SCORES[b])]), claim
        # another clip's loss is the own loss plus the gap
        assert cells[3] == _t_cell([x[0] + x[1] - y[0] - y[1] for x, y in zip(SCORES[a], SCORES[b])]), claim
        assert cells[4] == _t_cell([x[1] - y[1] for x, y in zip(SCORES[a], SCORES[b])]), claim
        assert cells[5] == _t_cell([x[2] / y[2] for x, y in zip(SCORES[a], SCORES[b])], 2, signed=False), claim
        assert cells[6] == _t_cell([1.0, 1.0, 1.0], 2, signed=False), claim  # the same memory in both
    # lal beats lal-layer0 on loss and gap with intervals clear of 0; lal-sslam-only beats lal (the ensemble does not
    # add); lal against plits: both intervals above the margins, but 1.1x the speed is not "far lower cost".
    assert rows["delayed injection helps"][-1] == "supported"
    assert rows["the ensemble adds to one encoder"][-1] == "refuted"
    assert rows["attention-only injection suffices (LAL no worse than PLITS)"][-1] == "supported"
    assert rows["LAL matches PLITS at far lower cost"][-1] == "refuted"
    # Each connector's scores over seeds, the text-only trained model's loss beside them.
    assert rows["xattn"][1] == _t_cell([x[0] for x in SCORES["xattn"]], signed=False)
    assert rows["xattn"][4] == _t_cell([3.0, 3.1, 3.2], signed=False)
    assert (tmp_path / "figures" / "findings.png").is_file() and "data:image/png;base64," in page.read_text()


@pytest.mark.parametrize("lows_highs, kind, expected", [
    ([(0.01, 0.2), (0.05, 0.3)], "better", "supported"),
    ([(-0.01, 0.2), (0.05, 0.3)], "better", "not resolved at this scale"),
    ([(-0.3, -0.01), (0.05, 0.3)], "better", "refuted"),
    ([(-0.09, 0.2), (-0.04, 0.3)], "no worse", "supported"),  # within the margins 0.10 and 0.05
    ([(-0.12, 0.2), (-0.04, 0.3)], "no worse", "not resolved at this scale"),
    ([(-0.03, -0.001), (-0.04, 0.3)], "no worse", "refuted"),
])
def test_verdict_rule(lows_highs, kind, expected):
    diffs = [({"mean": (low + high) / 2, "ci95": [low, high], "seeds": 3}, margin)
             for (low, high), (_, _, margin) in zip(lows_highs, findings.VERDICT_METRICS)]
    assert findings.verdict(diffs, kind) == expected
    assert findings.verdict([({"mean": 1.0, "ci95": [math.nan, math.nan], "seeds": 1}, 0.0)], kind).startswith(
        "not resolved")
