"""`pal compare --preset smoke`: four connectors × 2 seeds of real tiny training runs, one report. The report's
numbers are read back and checked against what the run folders hold, recomputed here with numpy and scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from pal.cli.main import main

CONFIGS = ["plits", "lal", "pal", "xattn"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", "--preset", "smoke", "--out", str(out), "--bench-preset", "tiny"]) == 0
    return out


def _table_rows(markdown: str, first_cells: list[str]) -> list[list[str]]:
    prefix = "| " + " | ".join(first_cells) + " |"
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith(prefix)]


def _expected(values: list[float], digits: int = 3) -> str:
    mean, std = np.mean(values), np.std(values, ddof=1)
    half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"


def test_report_has_every_section_and_plot(smoke):
    markdown = (smoke / "report.md").read_text()
    for heading in ("## Set-up", "## Metrics over seeds", "## Paired differences against plits", "## Efficiency"):
        assert heading in markdown
    for figure in ("metrics.png", "efficiency.png"):
        assert (smoke / "figures" / figure).stat().st_size > 1000 and f"figures/{figure}" in markdown
    assert (smoke / "report.html").read_text().count("data:image/png;base64,") == 2  # self-contained
    record = json.loads((smoke / "compare.json").read_text())
    assert {c: set(r) for c, r in record["runs"].items()} == {c: {"0", "1"} for c in CONFIGS}
    assert all(r["status"] == "done" for runs in record["runs"].values() for r in runs.values())
    assert {s: r["status"] for s, r in record["text_only"].items()} == {"0": "done", "1": "done"}
    manifest = smoke / "runs" / "text-only" / "seed0" / "manifests"
    assert all("audio" not in json.loads(line) for f in manifest.glob("*.jsonl") for line in f.read_text().splitlines())


def test_report_numbers_are_the_run_folders_numbers(smoke):
    markdown = (smoke / "report.md").read_text()
    evals = {c: [json.loads((smoke / "runs" / c / f"seed{s}" / "eval-test.json").read_text()) for s in (0, 1)]
             for c in CONFIGS}
    checked = 0
    for task, entry in evals["plits"][0]["tasks"].items():
        for metric, value in entry["metrics"].items():
            if not (isinstance(value, dict) and "value" in value):
                continue
            per = {c: [e["tasks"][task]["metrics"][metric]["value"] for e in evals[c]] for c in CONFIGS}
            control = {key: {c: [e["tasks"][task][key][metric]["value"] for e in evals[c]] for c in CONFIGS}
                       for key in ("text_only_trained", "mismatched_audio", "no_audio")}
            [row] = _table_rows(markdown, ["test", task, metric])[:1]
            assert row[3:] == ([_expected(per[c]) for c in CONFIGS] + [_expected(control["text_only_trained"]["plits"])]
                               + [_expected(control["mismatched_audio"][c]) for c in CONFIGS]
                               + [_expected(control["no_audio"][c]) for c in CONFIGS])
            # one text-only baseline per seed, the same answers in every run's evaluation
            assert all(control["text_only_trained"][c] == control["text_only_trained"]["plits"] for c in CONFIGS)
            paired = _table_rows(markdown, ["test", task, metric])[1]
            assert paired[3:] == [_expected(list(np.subtract(per[c], per["plits"]))) for c in CONFIGS[1:]]
            checked += 1
    assert checked >= 3  # accuracy, its yes/no part, and the order-free AUC of the yes/no questions
    assert _table_rows(markdown, ["test", "qa", "presence_AUC"])  # the hearing score beside the others
    for config in CONFIGS:  # training throughput and memory come from each run's last-stage log
        ends = [[json.loads(line) for line in (smoke / "runs" / config / f"seed{s}" / "stage1-connector" / "log.jsonl")
                 .read_text().splitlines() if '"end"' in line][-1] for s in (0, 1)]
        [row] = [r for r in _table_rows(markdown, [config]) if "±" in r[1]]
        assert row[1:3] == [_expected([e["examples_per_s"] for e in ends], 2), _expected([e["host_mb"] for e in ends], 2)]


def test_finished_runs_are_reused_and_a_failing_run_is_reported(smoke, capsys):
    model = smoke / "runs" / "plits" / "seed0" / "stage1-connector" / "final" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    broken = yaml.safe_load((smoke / "smoke" / "plits.yaml").read_text())
    broken["stages"][0]["data"] = [{"manifest": "missing.jsonl"}]
    (smoke / "smoke" / "broken.yaml").write_text(yaml.safe_dump(broken))
    code = main(["compare", "--configs", str(smoke / "smoke" / "plits.yaml"), str(smoke / "smoke" / "broken.yaml"),
                 "--manifests", str(smoke / "smoke" / "test.jsonl"), "--seeds", "1", "--out", str(smoke),
                 "--bench-preset", "none"])
    assert code == 1 and "run failed: broken seed 0" in capsys.readouterr().err
    record = json.loads((smoke / "compare.json").read_text())
    assert record["runs"]["plits"]["0"]["status"] == "done" and model.stat().st_mtime_ns == stamp  # reused
    assert record["runs"]["broken"]["0"]["status"] == "failed" and "missing.jsonl" in record["runs"]["broken"]["0"]["error"]
    assert "| broken | 0 | failed |" in (smoke / "report.md").read_text()


def test_runs_train_in_two_ranks_with_the_configs_global_batch(smoke, tmp_path):
    """--nproc 2: the run and its text-only baseline train in two ranks of 2, the smoke config's batch of 4 split."""
    out = tmp_path / "ranks"
    assert main(["compare", "--configs", str(smoke / "smoke" / "plits.yaml"), "--manifests",
                 str(smoke / "smoke" / "test.jsonl"), "--seeds", "1", "--out", str(out), "--bench-preset", "none",
                 "--nproc", "2"]) == 0
    for run in ("plits", "text-only"):
        log = (out / "runs" / run / "seed0" / "stage1-connector" / "log.jsonl").read_text().splitlines()
        end = next(json.loads(line) for line in log if json.loads(line).get("event") == "end")
        assert end["ranks"] == 2 and end["examples"] == 12 * 4, (run, end)  # 12 steps of 2 ranks × 2 questions
        resolved = json.loads((out / "runs" / run / "seed0.json").read_text())
        assert resolved["seed"] == 0 and [s["batch_size"] for s in resolved["stages"]] == [2]
    assert (out / "runs" / "plits" / "seed0" / "eval-test.json").is_file()
