"""`pal compare`: connectors under one controlled curriculum, K seeds each, evaluated on the same manifests, in one
report (Markdown and a self-contained HTML page).

Every config is trained with seeds 0..K-1 into `OUT/runs/<config>/seed<k>/` (what `pal train` writes, the config's
own seed replaced by k), and its last stage's model is evaluated on every test manifest into `eval-<manifest>.json`
there (what `pal eval` writes, with its controls). The text-only trained baseline, the first config's curriculum
on the same questions with the audio removed, is trained once per seed into `OUT/runs/text-only/seed<k>/`, and
every evaluation asks it the same questions beside its model. Finished runs and evaluations are reused, unfinished ones
resume, and a run that fails is reported with its error while the others go on. Runs happen one after another,
each in this process or, with `--nproc N`, in N local ranks under torchrun (one per GPU; on a 2-core CPU two 1-thread
ranks train faster than one process), each rank taking its share of every stage's batch so the global batch stays
the config's.

The report's numbers are read from the run folders. Over seeds: the mean, the sample standard deviation and the 95%
interval of the mean (Student t with K-1 degrees of freedom); against the first config: the per-seed paired
difference, its mean and 95% interval (paired t), so "no worse than" is a statement with an interval. Efficiency:
training examples/s and peak memory from each run's last-stage log, inference latency from its evaluation, and
memory and throughput against the number of audio tokens from `pal bench efficiency` (run once, in its own process).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from pal.common.safe_write import atomic_write_json, check_writable
from pal.eval.report import CONTROLS, Image, Section, Table, write_report
from pal.presets import connector_preset

# ----------------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------------


TEXT_ONLY = "text-only"  # the baseline's run folder name: `OUT/runs/text-only/seed<k>/`


def run_folder(out: Path, config: Path, seed: int) -> Path:
    return out / "runs" / config.stem / f"seed{seed}"


def train(config: Path, seed: int, folder: Path, text_only: bool = False, nproc: int = 1) -> Path:
    """The curriculum with this seed (resumed or skipped when done) → its last stage's model folder. `text_only`:
    the same curriculum on its manifests with the audio removed (pal/curriculum/text_only.py), the manifests written
    into `folder`. `nproc` > 1: in that many local ranks, each taking its share of every stage's batch. The config as
    each rank ran it is written beside the folder (`seed<k>.json`)."""
    from pal.curriculum.command import train_in_ranks
    from pal.curriculum.config import CurriculumConfig
    from pal.curriculum.text_only import text_only_curriculum

    curriculum = CurriculumConfig.from_yaml(config)
    curriculum.seed, curriculum.out = seed, str(folder)
    if text_only:
        curriculum = text_only_curriculum(curriculum, check_writable(folder) / "manifests")
    return train_in_ranks(curriculum, nproc, config, folder.parent / f"{folder.name}.json")


def train_and_evaluate(config: Path, seed: int, folder: Path, manifests: list[Path], batch_size: int,
                       max_new_tokens: int, text_only: Path | None = None, nproc: int = 1,
                       probe: dict | None = None) -> None:
    """One run: the curriculum with this seed, then each manifest evaluated with its controls (`text_only`: the
    text-only trained baseline's model folder for this seed; `probe`: `pal probe`'s result on the manifests' clips,
    for the hearing score's fraction of its ceiling)."""
    from pal.eval.evaluate import evaluate
    from pal.inference.audio_llm import AudioLLM, Decoding

    final = train(config, seed, folder, nproc=nproc)
    todo = [m for m in manifests if not (folder / f"eval-{m.stem}.json").is_file()]
    if todo:
        llm = AudioLLM.from_pretrained(final)
        baseline = AudioLLM.from_pretrained(text_only) if text_only is not None else None
        for manifest in todo:
            evaluate(llm, manifest, folder / f"eval-{manifest.stem}.json", Decoding(max_new_tokens=max_new_tokens),
                     batch_size, progress=False, text_only=baseline, probe=probe)


def read_run(folder: Path, manifests: list[Path]) -> dict:
    """What a finished run folder says: its last stage's end-of-training figures and its evaluations."""
    stages = sorted(folder.glob("stage*/log.jsonl"))
    ends = [json.loads(line) for line in stages[-1].read_text().splitlines()] if stages else []
    ends = [r for r in ends if r.get("event") == "end"]
    evals = {m.stem: json.loads((folder / f"eval-{m.stem}.json").read_text()) for m in manifests
             if (folder / f"eval-{m.stem}.json").is_file()}
    return {"train": ends[-1] if ends else None, "evals": evals}


def efficiency_report(out: Path, preset: str) -> Path:
    """`pal bench efficiency --preset P` (bench/efficiency.py; each measurement in its own worker process), which
    writes its report and its plot (step time, memory and decode latency against N_a) under `OUT/bench/`; reused if
    done. → the plot."""
    from pal.bench.efficiency import PRESETS, BenchSettings, write_report

    folder = out / "bench"
    if not (folder / "efficiency.json").is_file() or not (folder / "efficiency.png").is_file():
        write_report(BenchSettings(**PRESETS[preset]), folder, progress=lambda *_: None)
    return folder / "efficiency.png"


# ----------------------------------------------------------------------------------------------------------------------
# Statistics over seeds
# ----------------------------------------------------------------------------------------------------------------------


def seed_stats(values: list[float]) -> dict:
    """Mean, sample std and the 95% t-interval of the mean of per-seed values (no interval from one seed)."""
    from scipy import stats

    k = len(values)
    mean = sum(values) / k
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1)) if k > 1 else float("nan")
    half = stats.t.ppf(0.975, k - 1) * std / math.sqrt(k) if k > 1 else float("nan")
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "seeds": k}


def metric_values(runs: dict, config: str, manifest: str, task: str, metric: str, key: str = "metrics") -> dict:
    """{seed: value} of one metric over a config's finished runs (`key="no_audio"`: the baseline)."""
    found = {}
    for seed, run in runs[config].items():
        entry = run.get("evals", {}).get(manifest, {}).get("tasks", {}).get(task, {}).get(key, {}).get(metric)
        if isinstance(entry, dict) and "value" in entry:
            found[seed] = entry["value"]
    return found


def summarize(runs: dict, manifests: list[str]) -> dict:
    """Per manifest, task and metric: every config's seed statistics, its no-audio baseline, and the paired
    difference against the first config over the seeds both finished."""
    configs = list(runs)
    rows = []
    for manifest in manifests:
        names = sorted({(task, metric) for config in configs for run in runs[config].values()
                        for task, entry in run.get("evals", {}).get(manifest, {}).get("tasks", {}).items()
                        for metric, value in entry.get("metrics", {}).items()
                        if isinstance(value, dict) and "value" in value})
        for task, metric in names:
            row = {"manifest": manifest, "task": task, "metric": metric, "configs": {}}
            first = metric_values(runs, configs[0], manifest, task, metric)
            for config in configs:
                values = metric_values(runs, config, manifest, task, metric)
                if not values:
                    continue
                entry = {"values": values, **seed_stats(list(values.values()))}
                for control in CONTROLS:
                    found = metric_values(runs, config, manifest, task, metric, control)
                    if found:
                        entry[control] = seed_stats(list(found.values()))
                paired = [values[s] - first[s] for s in values if s in first]
                if config != configs[0] and paired:
                    entry["minus_first"] = seed_stats(paired)
                row["configs"][config] = entry
            rows.append(row)
    return {"metrics": rows}


# ----------------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------------


def _cell(stats: dict | None, digits: int = 3) -> str:
    if not stats:
        return "–"
    if stats["seeds"] < 2:
        return f"{stats['mean']:.{digits}f} (1 seed)"
    low, high = stats["ci95"]
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _plot_metrics(summary: dict, configs: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["metrics"]
    columns = min(3, len(rows)) or 1
    lines = max(1, math.ceil(len(rows) / columns))
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    for ax, row in zip(axes.flat, rows):
        present = [c for c in configs if c in row["configs"]]
        means = [row["configs"][c]["mean"] for c in present]
        errors = [0.0 if math.isnan(row["configs"][c]["ci95"][1]) else row["configs"][c]["ci95"][1] - m
                  for c, m in zip(present, means)]
        ax.bar(range(len(present)), means, yerr=errors, capsize=4, color="#4c78a8")
        ax.set_xticks(range(len(present)), present, rotation=20, fontsize=8)
        ax.set_title(f"{row['manifest']}: {row['task']} {row['metric']}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle("metric means over seeds, 95% intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_report(out: Path, record: dict, runs: dict, summary: dict, bench: Path | None) -> tuple[Path, Path]:
    configs = list(runs)
    first = configs[0]
    status = [[config, str(seed), record["runs"][config][str(seed)]["status"],
               " ".join(record["runs"][config][str(seed)].get("error", "").replace("|", "/").split())[:200]]
              for config in configs for seed in range(record["seeds"])]
    baseline = next((r["from"] for r in record.get("text_only", {}).values() if "from" in r), first)
    setup = Section("Set-up", [
        f"{len(configs)} curricula × {record['seeds']} seeds on the same data; each evaluated on "
        f"{', '.join(record['manifests'])} with its controls: the text-only trained baseline ({baseline}'s curriculum "
        "on the same questions without audio, one per seed: the prior a model reaches without hearing), each "
        "question asked with another clip's audio, and with the audio removed (which the models never saw in "
        f"training). Run folders: `{out / 'runs'}`.",
        Table(["config", "seed", "status", "error"], status)])
    metrics = Table(["manifest", "task", "metric"] + [f"{c} mean ± std [95% CI]" for c in configs]
                    + ["text-only trained model"] + [f"{c} with another clip's audio" for c in configs]
                    + [f"{c} audio removed" for c in configs], [])
    paired = Table(["manifest", "task", "metric"] + [f"{c} − {first} [95% CI]" for c in configs[1:]], [])
    for row in summary["metrics"]:
        head = [row["manifest"], row["task"], row["metric"]]
        text_only = next((e["text_only_trained"] for e in row["configs"].values() if "text_only_trained" in e), None)
        metrics.rows.append(head + [_cell(row["configs"].get(c)) for c in configs] + [_cell(text_only)]
                            + [_cell(row["configs"].get(c, {}).get("mismatched_audio")) for c in configs]
                            + [_cell(row["configs"].get(c, {}).get("no_audio")) for c in configs])
        paired.rows.append(head + [_cell(row["configs"].get(c, {}).get("minus_first")) for c in configs[1:]])
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    sections = [setup,
                Section("Metrics over seeds", [metrics, Image(_plot_metrics(summary, configs, figures / "metrics.png"),
                                                              "means with 95% intervals over seeds")]),
                Section(f"Paired differences against {first}", [
                    "Per seed, each config's metric minus the first config's; the mean and its 95% interval over "
                    "seeds (paired t). An interval above zero: better than the first config on this metric.", paired])]
    efficiency = Table(["config", "training examples/s", "peak memory MB (host)", "peak GPU MB",
                        "inference s/question"], [])
    for config in configs:
        finished = [r for r in runs[config].values() if r.get("train")]
        speed = [r["train"]["examples_per_s"] for r in finished]
        host = [r["train"]["host_mb"] for r in finished]
        gpu = [r["train"]["gpu_mb"] for r in finished if "gpu_mb" in r["train"]]
        latency = [e["latency"]["seconds_per_question"] for r in runs[config].values()
                   for e in r.get("evals", {}).values() if e.get("latency")]
        efficiency.rows.append([config] + [_cell(seed_stats(v), 2) if v else "–" for v in (speed, host, gpu)]
                               + [_cell(seed_stats(latency), 4) if latency else "–"])
    blocks = [efficiency]
    if bench:  # copied beside the other figure, so the Markdown report's links stay inside OUT/figures
        blocks.append(Image(Path(shutil.copy(bench, figures / "efficiency.png")),
                            "step time, memory and decoding against the number of audio tokens (pal bench efficiency)"))
    sections.append(Section("Efficiency", blocks))
    return write_report(out, "Connector comparison", sections)


def compare(configs: list[Path], seeds: int, out: Path, manifests: list[Path], bench_preset: str | None = "quick",
            batch_size: int = 8, max_new_tokens: int = 32, nproc: int = 1, text_only_config: Path | None = None,
            probe: dict | None = None) -> dict:
    """Train (each run in `nproc` local ranks), evaluate and report; → the record written to `OUT/compare.json`.
    Seed by seed, every config's run of a seed before the next seed's, so that a comparison stopped part-way has
    every config at the same number of seeds. `text_only_config`: the curriculum whose text-only version is the
    baseline (default: the first config's). `probe`: `pal probe`'s result on the manifests' clips."""
    out = check_writable(out)
    names = [c.stem for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"configs {names}: each needs its own file name (it names its run folders).")
    record = {"configs": {c.stem: str(c) for c in configs}, "seeds": seeds,
              "manifests": [m.stem for m in manifests], "runs": {}}
    runs, baselines = {}, {}
    # The text-only trained baseline: the first config's curriculum without audio, one per seed; every run's
    # evaluation asks it the same questions (the "text-only trained" column).
    record["text_only"] = {}
    baseline_config = text_only_config or configs[0]
    for seed in range(seeds):
        folder = out / "runs" / TEXT_ONLY / f"seed{seed}"
        try:
            baselines[seed] = train(baseline_config, seed, folder, text_only=True, nproc=nproc)
            record["text_only"][str(seed)] = {"status": "done", "folder": str(folder), "from": baseline_config.stem}
        except Exception as err:
            record["text_only"][str(seed)] = {"status": "failed", "folder": str(folder),
                                              "error": f"{type(err).__name__}: {err}"}
    for config in configs:
        record["runs"][config.stem], runs[config.stem] = {}, {}
    for seed in range(seeds):
        for config in configs:
            folder = run_folder(out, config, seed)
            try:
                train_and_evaluate(config, seed, folder, manifests, batch_size, max_new_tokens, baselines.get(seed),
                                   nproc, probe)
                runs[config.stem][seed] = read_run(folder, manifests)
                record["runs"][config.stem][str(seed)] = {"status": "done", "folder": str(folder)}
            except Exception as err:  # a failed run is reported; the comparison goes on with the others
                record["runs"][config.stem][str(seed)] = {"status": "failed", "folder": str(folder),
                                                          "error": f"{type(err).__name__}: {err}"}
            atomic_write_json(out / "compare.json", record)
    summary = summarize(runs, record["manifests"])
    bench = efficiency_report(out, bench_preset) if bench_preset else None
    record["summary"] = summary
    record["report"] = [str(p) for p in build_report(out, record, runs, summary, bench)]
    atomic_write_json(out / "compare.json", record)
    return record


# ----------------------------------------------------------------------------------------------------------------------
# The smoke preset: the tests' tiny models on tones, four connectors, in a few minutes
# ----------------------------------------------------------------------------------------------------------------------

SMOKE_CONNECTORS = {  # pal/presets.py, sized for the tiny 2-layer LLM
    "plits": connector_preset("plits"),
    "lal": connector_preset("lal", lal_config={"start_layer": 1}),
    "pal": connector_preset("pal", lal_config={"start_layer": 1}, plits_config={"n_summary": 2, "qformer_heads": 2}),
    "xattn": connector_preset("xattn", xattn_config={"every": 1, "heads": 2, "ffn_mult": 2}),
}
_PITCHES = [(220, "low"), (440, "middle"), (880, "high"), (1760, "very high")]


def smoke_setup(folder: Path) -> tuple[list[Path], list[Path]]:
    """A tiny random Llama (SmolLM2's tokenizer and chat template), tone clips with closed questions about pitch,
    and one single-stage curriculum per connector → (configs, test manifests). Deterministic; reused if present."""
    import numpy as np
    import soundfile
    import torch
    import yaml

    from pal.llm import load_tokenizer, tiny_llama

    folder = check_writable(folder)
    llm = folder / "llm"
    if not (llm / "config.json").is_file():
        tokenizer = load_tokenizer(None)
        torch.manual_seed(0)
        tiny_llama(len(tokenizer)).save_pretrained(llm)
        tokenizer.save_pretrained(llm)
    rows = {"train": [], "test": []}
    for i in range(16):
        freq, word = _PITCHES[i % 4]
        t = np.arange(8000 + 400 * i) / 16000
        soundfile.write(folder / f"tone{i}.wav", ((0.1 + 0.02 * i) * np.sin(2 * np.pi * freq * t)).astype(np.float32),
                        16000)
        split = "test" if i >= 12 else "train"
        high = "yes" if freq >= 880 else "no"
        # Closed questions only: scored in milliseconds (captions would start Java twice per evaluation).
        rows[split] += [
            {"id": f"pitch{i}", "audio": f"tone{i}.wav", "task": "qa", "choices": [p for _, p in _PITCHES],
             "messages": [{"role": "user", "content": "<audio>\nIs the tone low, middle, high or very high?"},
                          {"role": "assistant", "content": word}]},
            {"id": f"high{i}", "audio": f"tone{i}.wav", "task": "qa",
             "messages": [{"role": "user", "content": "<audio>\nIs the tone high? Answer yes or no."},
                          {"role": "assistant", "content": high}]}]
    for split, found in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in found))
    configs = []
    for name, connector in SMOKE_CONNECTORS.items():
        config = {"model": {"llm": "llm", "encoders": {"encoders": {"sslam": {"type": "sslam", "preset": "tiny"}}},
                            "connector": {**connector, "audio_norm": "standardize"}},
                  "stages": [{"name": "connector", "data": [{"manifest": "train.jsonl"}], "trainable": ["connector", "llm"],
                              "optim": {"lr": 1e-2, "warmup_steps": 2}, "steps": 12, "batch_size": 4,
                              "precision": "fp32", "checkpoint_every": 12, "keep_last": 1, "log_every": 1,
                              "num_samples": 0, "num_workers": 0}]}
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        configs.append(path)
    return configs, [folder / "test.jsonl"]
