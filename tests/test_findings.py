"""`pal compare --preset findings` (docs/findings/protocol.md): the configs are PAL's, on one stage and budget; the
budget is chosen on validation; the claims' intervals, one-sided p-values and Holm's correction are the formulas'."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import curriculum_dict, train_in_process, write_jsonl, write_yaml

from pal.workflows import findings

SMOLLM2 = {"hidden": 576, "layers": 30}
SSLAM_TINY_WIDTH = 128  # pal:encoders/demo.yaml's SSLAM before the demo pre-trains its own


def test_every_connector_trains_the_demos_stage_one_on_the_same_data(tmp_path):
    """The protocol's table: each config is the shipped stage 1 with only its length, checkpoints and paths changed,
    the connector and encoders of its row; lal-L4-matched's rank gives the trainable parameters of plits-same,
    counted here by hand: PLITS's MLP D_e·d + d + d·d + d and its output norm d; the low-rank LAL's shared
    Linear(D_e, d) and, for each of the 26 layers from 4, a rank-r correction of 2·d·r."""
    from pal.common.typed_config import config_path
    from pal.curriculum.config import CurriculumConfig
    from pal.encoders.ensemble import EnsembleConfig

    encoders = EnsembleConfig.from_yaml("pal:encoders/demo.yaml")
    data = tmp_path / "data"
    configs, text_only = findings.write_configs(tmp_path / "configs", tmp_path / "runs", data, encoders,
                                                tmp_path / "features", seed=3)
    assert [c.stem for c in configs] == list(findings.CONNECTORS)
    shipped = yaml.safe_load(config_path("pal:curriculum/demo-full.yaml").read_text())
    loaded = {c.stem: CurriculumConfig.from_yaml(c) for c in configs}
    changed = ("steps", "checkpoint_every", "keep_last", "data", "val_manifest")
    for name, config in loaded.items():
        [stage] = yaml.safe_load((tmp_path / "configs" / f"{name}.yaml").read_text())["stages"]
        assert {k: v for k, v in stage.items() if k not in changed} == \
            {k: v for k, v in shipped["stages"][0].items() if k not in changed}
        assert stage["steps"] == 96 and stage["checkpoint_every"] == 24 and stage["keep_last"] == 4
        assert stage["data"] == [{"manifest": str(data / "classify_caption.jsonl")}]
        assert config.stages[0].trainable == ["connector"] and config.feature_cache == str(tmp_path / "features")
        assert config.seed == 3 and config.model.llm == "default"
        assert sorted(config.model.encoders.encoders) == sorted(findings.CONNECTORS[name][1]), name
    for layer in (0, 2, 4, 8, 16):
        assert loaded[f"lal-L{layer}"].model.connector["lal_config"]["start_layer"] == layer
    assert loaded["plits-same"].model.connector["plits_config"]["mlp_downsample"] == 1
    assert loaded["plits-whisper"].model.connector["plits_config"]["mlp_downsample"] == 4
    assert loaded["pal"].model.connector["routes"] == {"sslam": "lal", "whisper": "plits"}
    d, e = SMOLLM2["hidden"], SSLAM_TINY_WIDTH
    plits = e * d + d + d * d + d + d
    per_rank = (SMOLLM2["layers"] - 4) * 2 * d
    expected = round((plits - (e * d + d)) / per_rank)
    matched = loaded["lal-L4-matched"].model.connector["lal_config"]
    assert matched["projection"] == "lowrank" and matched["projection_rank"] == expected == 11
    assert abs(e * d + d + expected * per_rank - plits) <= per_rank / 2  # within half a rank's parameters
    assert findings.connector_parameters(findings.CONNECTORS["plits-same"][0], {"sslam": e}) == plits
    baseline = CurriculumConfig.from_yaml(text_only)
    assert baseline.stages[0].trainable == ["lora"] and baseline.stages[0].steps == 96


def test_holm_by_hand():
    """p = 0.01, 0.04, 0.03, 0.005 at α = 0.05: sorted 0.005 ≤ 0.05/4 and 0.01 ≤ 0.05/3 are rejected; 0.03 > 0.05/2
    stops the procedure, so 0.04 is not rejected either (though ≤ 0.05 alone)."""
    assert findings.holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert findings.holm([0.2, math.nan]) == [False, False]


HEARING = {  # connector → test hearing mAP per seed
    "lal-L0": [0.30, 0.32, 0.31, 0.29, 0.30], "lal-L2": [0.33, 0.34, 0.33, 0.35, 0.32],
    "lal-L4": [0.40, 0.42, 0.41, 0.43, 0.40], "lal-L8": [0.39, 0.40, 0.41, 0.38, 0.40],
    "lal-L16": [0.35, 0.33, 0.34, 0.36, 0.35], "plits-same": [0.41, 0.40, 0.42, 0.44, 0.41],
    "lal-L4-matched": [0.30, 0.45, 0.25, 0.50, 0.33], "plits-whisper": [0.50, 0.52, 0.51, 0.50, 0.53],
    "pal": [0.45, 0.44, 0.46, 0.47, 0.45],
}
SPEED = {"lal-L4": [6.0, 6.1, 5.9, 6.2, 6.0], "plits-same": [4.0, 4.1, 4.0, 4.1, 3.9]}


def _fake_runs(out: Path) -> None:
    """Run folders as the preset leaves them: `early_stopped_evaluation`'s JSON and the stage's log end event."""
    for name, values in HEARING.items():
        for seed, value in enumerate(values):
            folder = out / "runs" / name / f"seed{seed}"
            (folder / "stage1-connector").mkdir(parents=True)
            classify = {"n": 80, "answer_loss": 2.0, "answer_loss_mismatched": 2.1, "gap": {"value": 0.1}}
            tasks = {"classify": {"metrics": {"hearing_mAP": {"value": value, "chance": 0.2}},
                                  "mismatched_audio": {"hearing_mAP": {"value": 0.21}}}}
            result = {"reliance": {"by_task": {"classify": classify}}, "tasks": tasks, "budget": {"chosen_step": 48}}
            (folder / f"eval-{findings.MANIFEST}.json").write_text(json.dumps(result))
            speed = SPEED.get(name, [5.0] * 5)[seed]
            (folder / "stage1-connector" / "log.jsonl").write_text(json.dumps(
                {"event": "end", "examples_per_s": speed, "host_mb": 3000.0}) + "\n")


def test_the_claims_hold_their_paired_intervals_one_sided_p_values_and_holm_verdicts(tmp_path):
    """Five seeds. Each claim's p-values recomputed from the t distribution by hand; the verdicts from Holm's step-down
    over all twelve tests, by hand."""
    from scipy import stats

    _fake_runs(tmp_path)
    found = {f["claim"]: f for f in findings.verdicts(findings.collect(tmp_path, 5))}

    def p_greater(values, null):
        values = np.array(values)
        t = (values.mean() - null) / (values.std(ddof=1) / math.sqrt(len(values)))
        return stats.t.sf(t, len(values) - 1)

    family = []
    for claim, a, b, kind in findings.CLAIMS:
        if kind == "cost":
            values, null = [x / y for x, y in zip(SPEED[a], SPEED[b])], 1.2
        else:
            values, null = [x - y for x, y in zip(HEARING[a], HEARING[b])], 0.0 if kind == "better" else -0.02
        assert found[claim]["values"] == pytest.approx(values), claim
        assert found[claim]["p_supported"] == pytest.approx(p_greater(values, null), rel=1e-6), claim
        assert found[claim]["p_refuted"] == pytest.approx(1 - p_greater(values, null), rel=1e-6), claim
        family += [(found[claim]["p_supported"], claim, "supported"), (found[claim]["p_refuted"], claim, "refuted")]
    # Holm by hand: walk the sorted p-values while p ≤ α / (m − rank).
    decided = {}
    for rank, (p, claim, side) in enumerate(sorted(family)):
        if p > 0.05 / (len(family) - rank):
            break
        decided[claim] = side
    for claim, *_ in findings.CLAIMS:
        assert found[claim]["verdict"] == decided.get(claim, "not resolved"), claim
    # What the fabricated numbers hold: layer 4 hears better than layer 0 and the ensemble worse than Whisper-base
    # alone, clearly; the matched LAL varies too much to say; LAL is 1.5x as fast.
    assert found["delay helps"]["verdict"] == "supported"
    assert found["the ensemble adds to Whisper-base alone"]["verdict"] == "refuted"
    assert found["attention-only suffices, matched trainable parameters"]["verdict"] == "not resolved"
    assert found["LAL at far lower cost"]["verdict"] == "supported"
    # The report: every claim's row with the verdict, each connector's mean and t-interval, the protocol named.
    probes = {s: {"encoders": {"sslam": {"mAP": {"value": 0.7}, "readout": "mlp"}}} for s in range(5)}
    markdown, page = findings.findings_report(tmp_path, 5, probes, commit="abc1234")
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip().strip("|").split("|")]
                                          for line in markdown.read_text().splitlines() if line.startswith("|"))}
    for claim, *_ in findings.CLAIMS:
        assert rows[claim][-1] == found[claim]["verdict"]
    mean, half = np.mean(HEARING["pal"]), stats.t.ppf(0.975, 4) * np.std(HEARING["pal"], ddof=1) / math.sqrt(5)
    assert rows["pal"][1] == f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"
    text = markdown.read_text()
    assert "docs/findings/protocol.md (run from commit abc1234)" in text and "seed 0: sslam 0.700 (mlp)" in text
    assert (tmp_path / "figures" / "findings.png").is_file() and "data:image/png;base64," in page.read_text()


def test_fewer_than_two_seeds_resolve_nothing(tmp_path):
    _fake_runs(tmp_path)
    assert {f["verdict"] for f in findings.verdicts(findings.collect(tmp_path, 1))} == \
        {"not resolved (fewer than 2 seeds)"}


def test_the_budget_is_the_checkpoint_best_on_validation_and_the_test_is_scored_on_it(curriculum_env, tmp_path):
    """A tiny run of 6 steps keeping checkpoints at 3 and 6: each is scored on the validation clips, the better is
    loaded, and the test's hearing mAP is that checkpoint's (recomputed here with its weights loaded by hand)."""
    from safetensors.torch import load_file

    from pal.data.manifest import read_questions
    from pal.eval.hearing import hearing_metrics, hearing_scores
    from pal.inference.audio_llm import AudioLLM

    config = curriculum_dict(curriculum_env, stages=1, steps=6, checkpoint_every=3, keep_last=2, val_manifest=None,
                             num_samples=0, trainable=["connector", "llm"], optim={"lr": 5e-3, "warmup_steps": 1})
    train_in_process(write_yaml(tmp_path / "c.yaml", config), tmp_path / "run")
    final = tmp_path / "run" / "stage1-connector" / "final"
    labels = [["low"], ["middle"], ["high"], ["very high", "high"]]

    def manifest(name, clips):
        return write_jsonl(tmp_path / f"{name}.jsonl", [
            {"id": f"{name}{i}", "audio": str(curriculum_env / f"tone{i}.wav"), "task": "classify", "labels": labels[i % 4],
             "messages": [{"role": "user", "content": "<audio>\nWhich sounds can you hear?"},
                          {"role": "assistant", "content": ", ".join(labels[i % 4])}]} for i in clips])

    validation, test = manifest("val", range(4)), manifest("test", range(4, 8))
    result = findings.early_stopped_evaluation(final, validation, test, tmp_path / "eval.json", None)
    budget = result["budget"]
    assert set(budget["validation_hearing_mAP"]) == {"3", "6"}
    scores = {int(s): v for s, v in budget["validation_hearing_mAP"].items()}
    assert budget["chosen_step"] == max(sorted(scores), key=lambda s: (scores[s], -s))
    llm = AudioLLM.from_pretrained(final)
    by_hand, likelihoods = {}, {}
    for step in (3, 6):
        llm.model.load_state_dict(load_file(tmp_path / "run" / "stage1-connector" / "checkpoints" /
                                            f"step-{step:08d}" / "trainable.safetensors"), strict=False)
        found = {name: hearing_scores(llm, read_questions(m)) for name, m in (("val", validation), ("test", test))}
        by_hand[step] = {name: hearing_metrics(f)["classify"]["hearing_mAP"]["value"] for name, f in found.items()}
        likelihoods[step] = found["test"].scores
        assert by_hand[step]["val"] == pytest.approx(scores[step], abs=1e-9)
    assert not np.allclose(likelihoods[3], likelihoods[6])  # two checkpoints, two models: the weights were loaded
    assert result["tasks"]["classify"]["metrics"]["hearing_mAP"]["value"] == pytest.approx(
        by_hand[budget["chosen_step"]]["test"], abs=1e-9)
    assert json.loads((tmp_path / "eval.json").read_text())["budget"] == budget
