"""`pal compare --preset findings`: PAL's four claims tested on the demo data at our scale, three seeds each.

PAL (pal-spec §9, §11) claims that (1) injecting the audio from a delayed layer helps, (2) injection into attention
alone (LAL) suffices, no audio tokens in the sequence, (3) an ensemble of encoders adds to one, and (4) LAL matches
PLITS at far lower cost. This preset trains six connectors on the same data, features and budget:

| name | connector |
|---|---|
| plits | both encoders as tokens in the sequence (the reference) |
| lal | both encoders as LAL keys/values from layer 4 |
| lal-layer0 | the same from layer 0 (no delay) |
| lal-sslam-only | the SSLAM alone through LAL from layer 4 |
| pal | the demo's PAL: SSLAM via LAL from layer 4, Whisper-base via PLITS |
| xattn | gated cross-attention blocks every 4 layers (Flamingo style) |

The budget is the demo's stage 1 (connector only, LLM frozen, classification and captions, 8 packed clips a step)
for `STEPS` steps: by 64 steps the routes separate on the test's classification loss and gap (docs/findings.md, "When
the gap opens, per connector"), where 16-32 steps do not. The text-only trained baseline is the same stage on the
same questions without audio, training LoRA (the connector has nothing to learn without audio).

Every run is scored on the test split's classification answers teacher-forced (`loss_evaluation`): the loss with
the clip's own audio, with another clip's (the reliance gap), and the text-only trained model's loss of the same
answers without audio. Generated answers are not the default: after stage 1 alone a connector's listed labels are at
chance (PLITS, seed 0: listed-label balanced accuracy 0.505, 0.02 of the probe ceiling; docs/findings/) while the
losses separate the routes, and generating with every control cost ~9 of a run's 15 minutes on 2 cores.
`--generate` adds `pal eval score` with every control and the fraction of the encoders' linear-probe ceiling
(`pal probe`, fitted on the training scenes). Runs are reused, so the preset can run in parts (`--seeds 1`, then
`--seeds 3`).

The findings report (`OUT/findings.md` and `findings.html`) gives each connector's scores over seeds, and for each
claim the paired difference per seed with its 95% t-interval and a verdict by the rule in `verdict`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from pal.common.safe_write import atomic_write_json, check_writable
from pal.eval.report import Image, Section, Table, write_report

from .compare import compare, read_run, seed_stats

STEPS = 64
CONNECTORS = {  # name → (the connector block, the encoders it hears: None = both)
    "plits": ({"connector": "plits", "plits_config": {"mlp_downsample": 4}}, None),
    "lal": ({"connector": "lal", "lal_config": {"start_layer": 4, "audio_offset": 5}}, None),
    "lal-layer0": ({"connector": "lal", "lal_config": {"start_layer": 0, "audio_offset": 5}}, None),
    "lal-sslam-only": ({"connector": "lal", "lal_config": {"start_layer": 4, "audio_offset": 5}}, ["sslam"]),
    "pal": ({"connector": "pal", "routes": {"sslam": "lal", "whisper": "plits"},
             "lal_config": {"start_layer": 4, "audio_offset": 5}, "plits_config": {"mlp_downsample": 4}}, None),
    "xattn": ({"connector": "xattn", "xattn_config": {"every": 4}}, None),
}
# (claim, the config it favours, the config it is against, "better" or "no worse"); pal-spec §9 and §11.
CLAIMS = [("delayed injection helps", "lal", "lal-layer0", "better"),
          ("attention-only injection suffices (LAL no worse than PLITS)", "lal", "plits", "no worse"),
          ("the ensemble adds to one encoder", "lal", "lal-sslam-only", "better"),
          ("LAL matches PLITS at far lower cost", "lal", "plits", "cost")]
# The scores a verdict reads, with the direction that is better and the margin "no worse" allows.
# (metric, +1 when higher is better, the margin "no worse" allows). Read together (docs/findings.md): a change that
# only teaches the answers' prior lowers both losses and leaves the gap; audio that disturbs the LLM widens the gap
# while the loss rises.
VERDICT_METRICS = [("answer_loss", -1, 0.10), ("gap", +1, 0.05)]
MANIFEST = "test-classify"


def setup(out: Path, demo: Path | None = None, seed: int = 0) -> tuple[list[Path], Path, Path, dict]:
    """The demo's data, SSLAM and features (built in `OUT/demo` unless `demo` names a `pal demo` folder that has
    them), one config per connector, the text-only baseline's config, the test's classification questions and the
    probe → (configs, text-only config, test manifest, probe result). Reused if present."""
    from pal.eval.probe import run_probe
    from pal.workflows.demo import PRESETS, ensemble_config, step_data, step_features, step_sslam

    out = check_writable(out).resolve()  # the configs' paths must hold from the ranks' working directory too
    demo = (demo or out / "demo").resolve()
    data = step_data(demo, PRESETS["full"], seed)
    encoder = step_sslam(demo, data, PRESETS["full"])
    encoders = ensemble_config(encoder)
    features = step_features(demo, data, encoders)
    manifest = data / f"{MANIFEST}.jsonl"  # beside the clips: its audio paths are relative to the manifest
    rows = [line for line in (data / "test.jsonl").read_text().splitlines() if json.loads(line)["task"] == "classify"]
    manifest.write_text("".join(line + "\n" for line in rows))
    probe_file = out / "probe.json"
    if not probe_file.is_file():
        atomic_write_json(probe_file, run_probe(features, encoders, data / "train.jsonl", manifest))
    configs, text_only = write_configs(out, data, encoders, features, seed)
    return configs, text_only, manifest, json.loads(probe_file.read_text())


def write_configs(out: Path, data: Path, encoders, features: Path, seed: int = 0) -> tuple[list[Path], Path]:
    """`OUT/configs/<connector>.yaml`: the demo's stage 1 for `STEPS` steps on `data`, with the connector (and the
    encoders) of each of `CONNECTORS`, the rest the shipped demo's; and the text-only baseline's stage (LoRA trained,
    the audio removed by `pal compare`) → (configs in `CONNECTORS`' order, the baseline's config)."""
    from dataclasses import asdict

    from pal.common.typed_config import config_path

    shipped = yaml.safe_load(config_path("pal:curriculum/demo-full.yaml").read_text())
    stage = {**shipped["stages"][0], "steps": STEPS, "checkpoint_every": STEPS // 2,
             "data": [{"manifest": str(data / "classify_caption.jsonl")}], "val_manifest": str(data / "val.jsonl")}
    folder = check_writable(out / "configs")
    configs = []
    for name, (connector, heard) in CONNECTORS.items():
        specs = {k: {f: v for f, v in asdict(spec).items() if v is not None} for k, spec in encoders.encoders.items()
                 if heard is None or k in heard}
        config = {"model": {**shipped["model"], "connector": {"audio_norm": "standardize", **connector},
                            "encoders": {"encoders": specs, "dtype": encoders.dtype, "device": encoders.device}},
                  "seed": seed, "out": str(out / "runs" / name), "feature_cache": str(features), "stages": [stage]}
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        configs.append(path)
    text_only = yaml.safe_load(configs[0].read_text())
    text_only["stages"] = [{**stage, "name": "text-only", "trainable": ["lora"]}]
    (folder / "text-only-baseline.yaml").write_text(yaml.safe_dump(text_only, sort_keys=False))
    return configs, folder / "text-only-baseline.yaml"


# ----------------------------------------------------------------------------------------------------------------------
# Reading the runs
# ----------------------------------------------------------------------------------------------------------------------


def run_scores(folder: Path) -> dict | None:
    """One finished run's figures: the teacher-forced classification losses and gap, the text-only trained model's
    loss, the generated classification's scores when the run was evaluated with `--generate` (the model's and each
    control's), and training throughput and peak memory."""
    run = read_run(folder, [Path(f"{MANIFEST}.jsonl")])  # the last stage's end event and the evaluation
    result = run["evals"].get(MANIFEST)
    if result is None:
        return None
    scores = {}
    task = result.get("tasks", {}).get("classify", {})
    for key in ("metrics", "mismatched_audio", "no_audio", "text_only_trained"):
        for name in ("label_balanced_accuracy", "probe_fraction", "label_precision", "label_recall", "exact_set"):
            if name in task.get(key, {}):
                scores[(key, name)] = task[key][name]["value"]
    loss = result["reliance"]["by_task"]["classify"]
    scores[("metrics", "answer_loss")] = loss["answer_loss"]
    scores[("mismatched_audio", "answer_loss")] = loss["answer_loss_mismatched"]
    scores[("metrics", "gap")] = loss["gap"]["value"]
    if "text_only_answer_loss" in result:
        scores[("text_only_trained", "answer_loss")] = result["text_only_answer_loss"]
    if run["train"]:
        scores[("train", "examples_per_s")] = run["train"]["examples_per_s"]
        scores[("train", "peak_mb")] = run["train"].get("gpu_mb", run["train"]["host_mb"])
    return scores


def loss_evaluation(final: Path, manifest: Path, out: Path, text_only: Path | None, batch_size: int = 8) -> dict:
    """The preset's evaluation without generating: each gold answer's teacher-forced loss with its clip's audio and
    with another clip's (the reliance gap, pal/eval/reliance.py), and the text-only trained model's loss of the same
    answers without audio → written to `out` in `pal eval`'s layout ("reliance", "text_only_answer_loss")."""
    from pal.data.manifest import read_questions
    from pal.eval.answer_loss import answer_losses
    from pal.eval.reliance import reliance_gap
    from pal.inference.audio_llm import AudioLLM

    examples = read_questions(manifest)
    result = {"model": {"folder": str(final)}, "manifest": {"path": str(manifest), "examples": len(examples)},
              "reliance": reliance_gap(AudioLLM.from_pretrained(final), examples, batch_size)}
    if text_only is not None:
        baseline = AudioLLM.from_pretrained(text_only)
        conversations = [baseline.conversation(e.prompt, with_audio=False) + [{"role": "assistant", "content": e.answer}]
                         for e in examples]
        losses = [answer_losses(baseline, conversations[i : i + batch_size], None)
                  for i in range(0, len(conversations), batch_size)]
        result["text_only_answer_loss"] = float(sum(x.sum().item() for x in losses) / len(examples))
        result["text_only_model"] = str(text_only)
    atomic_write_json(out, result)
    return result


def collect(out: Path, seeds: int) -> dict:
    """{config: {seed: run_scores}} over the finished runs."""
    return {name: {s: found for s in range(seeds) if (found := run_scores(out / "runs" / name / f"seed{s}"))}
            for name in CONNECTORS}


def paired(runs: dict, a: str, b: str, key: tuple, sign: int = 1, ratio: bool = False) -> dict | None:
    """sign·(a − b) (or a / b) per seed both finished, its mean and 95% t-interval over seeds."""
    seeds = [s for s in runs[a] if s in runs[b] and key in runs[a][s] and key in runs[b][s]]
    if not seeds:
        return None
    values = [runs[a][s][key] / runs[b][s][key] if ratio else sign * (runs[a][s][key] - runs[b][s][key])
              for s in seeds]
    return seed_stats(values)


def verdict(diffs: list[tuple[dict | None, float]], kind: str) -> str:
    """The verdict from each metric's paired difference (oriented: positive favours the claim) and its margin, with
    3 seeds' t-intervals: "better": supported when every interval lies above 0, refuted when one lies below 0;
    "no worse": supported when every interval lies above −margin, refuted when one lies below 0; otherwise not
    resolved (including fewer than 2 seeds)."""
    if any(d is None or d["seeds"] < 2 for d, _ in diffs):
        return "not resolved (fewer than 2 seeds)"
    lows = [d["ci95"][0] for d, _ in diffs]
    highs = [d["ci95"][1] for d, _ in diffs]
    if any(h < 0 for h in highs):
        return "refuted"
    floor = [0.0 if kind == "better" else -margin for _, margin in diffs]
    if all(low > f for low, f in zip(lows, floor)):
        return "supported"
    return "not resolved at this scale"


def _cell(stats: dict | None, digits: int = 3, signed: bool = False) -> str:
    if not stats:
        return "–"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if stats["seeds"] < 2:
        return f.format(stats["mean"]) + " (1 seed)"
    return f"{f.format(stats['mean'])} [{f.format(stats['ci95'][0])}, {f.format(stats['ci95'][1])}]"


def over_seeds(runs: dict, name: str, key: tuple) -> dict | None:
    values = [r[key] for r in runs[name].values() if key in r]
    return seed_stats(values) if values else None


# ----------------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------------


def _plot(runs: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(("metrics", "answer_loss"), "classification answer loss, own audio (nats/token)"),
              (("metrics", "gap"), "reliance gap: another clip's loss − own (nats/token)"),
              (("train", "examples_per_s"), "training examples/s")]
    names = [n for n in CONNECTORS if runs[n]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.5))
    for ax, (key, title) in zip(axes, panels):
        stats = [over_seeds(runs, n, key) for n in names]
        means = [s["mean"] if s else math.nan for s in stats]
        errors = [0.0 if not s or math.isnan(s["ci95"][1]) else s["ci95"][1] - s["mean"] for s in stats]
        ax.bar(range(len(names)), means, yerr=errors, capsize=4, color="#4c78a8")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.axhline(0, color="black", linewidth=0.6)
    fig.suptitle("PAL's claims at our scale: means over seeds with 95% intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def findings_report(out: Path, seeds: int, probe: dict) -> tuple[Path, Path]:
    runs = collect(out, seeds)
    done = {n: len(r) for n, r in runs.items()}
    ceiling = {name: e["balanced_accuracy"]["value"] for name, e in probe["encoders"].items()}
    intro = (f"The demo data's stage 1 ({STEPS} steps of 8 packed clips, connector only, LLM frozen) trained for "
             f"each connector with seeds 0..{seeds - 1} (finished: " + ", ".join(f"{n} {k}" for n, k in done.items())
             + f"); every run scored on the {probe['test_clips']} test scenes' classification answers, teacher-forced "
             "(nats per answer token), with the clip's own audio and with another clip's, and beside the text-only "
             "trained model's loss of the same answers without audio (the same stage on the same questions without "
             "audio, LoRA trained, one per seed). The encoders' linear-probe ceiling on those scenes (balanced "
             "accuracy over classes, fitted on the training scenes): " + ", ".join(f"{n} {v:.3f}" for n, v in
                                                                                   ceiling.items())
             + ". Each cell: the mean over seeds and its 95% t-interval.")
    scores = Table(["connector", "answer loss, own audio", "another clip's audio", "reliance gap",
                    "text-only trained model", "listed labels, balanced accuracy (generated)",
                    "fraction of the probe ceiling", "training examples/s", "peak memory MB"], [])
    for name in CONNECTORS:
        if not runs[name]:
            continue

        def cell(key, digits=3, signed=False, name=name):
            return _cell(over_seeds(runs, name, key), digits, signed)

        scores.rows.append([name, cell(("metrics", "answer_loss")), cell(("mismatched_audio", "answer_loss")),
                            cell(("metrics", "gap"), signed=True), cell(("text_only_trained", "answer_loss")),
                            cell(("metrics", "label_balanced_accuracy")), cell(("metrics", "probe_fraction")),
                            cell(("train", "examples_per_s"), 2), cell(("train", "peak_mb"), 0)])
    claims = Table(["claim", "compared", "answer loss, difference", "another clip's loss, difference",
                    "reliance gap, difference", "examples/s ratio", "peak memory ratio", "verdict"], [])
    for claim, a, b, kind in CLAIMS:
        diffs = [(paired(runs, a, b, ("metrics", metric), sign), margin) for metric, sign, margin in VERDICT_METRICS]
        speed = paired(runs, a, b, ("train", "examples_per_s"), ratio=True)
        memory = paired(runs, a, b, ("train", "peak_mb"), ratio=True)
        found = verdict(diffs, "no worse" if kind == "cost" else kind)
        if kind == "cost" and found == "supported" and not (speed and speed["seeds"] > 1 and speed["ci95"][0] > 1.2):
            found = "not resolved at this scale" if speed and speed["ci95"][1] > 1.2 else "refuted"
        claims.rows.append([claim, f"{a} − {b}", _cell(paired(runs, a, b, ("metrics", "answer_loss")), signed=True),
                            _cell(paired(runs, a, b, ("mismatched_audio", "answer_loss")), signed=True),
                            _cell(paired(runs, a, b, ("metrics", "gap")), signed=True), _cell(speed, 2),
                            _cell(memory, 2), found])
    rule = ("Verdicts: per seed, the first config's score minus the second's (same seed, same data), the mean and "
            "its 95% t-interval over seeds, on the classification answer loss with the clip's own audio (lower is "
            "better) and on the reliance gap (higher is better). \"Better\" claims are supported when both intervals "
            "favour the claim, refuted when one lies wholly against it; \"no worse\" claims are supported when both "
            "lie above minus a margin (0.10 nats of loss, 0.05 of gap) and refuted when one lies wholly against; "
            "\"far lower cost\" also needs the examples/s ratio over 1.2 across its interval. Otherwise: not "
            "resolved at this scale.")
    figures = check_writable(out / "figures")
    sections = [Section("Set-up", [intro]),
                Section("Scores per connector", [scores, Image(_plot(runs, figures / "findings.png"),
                                                               "means over seeds with 95% intervals")]),
                Section("PAL's claims", [claims, rule])]
    return write_report(out, "PAL's findings at our scale", sections, name="findings")


def run_findings(out: Path, seeds: int = 3, demo: Path | None = None, nproc: int = 2, batch_size: int = 8,
                 max_new_tokens: int = 32, generate: bool = False) -> dict:
    """Set up, train and evaluate every connector × seed (reusing finished runs), then both reports. `generate`:
    evaluate with `pal eval score` (answers generated, every control, the fraction of the probe ceiling; about 9
    minutes a run on 2 cores) instead of the teacher-forced losses alone (about 1 minute)."""
    import functools

    configs, text_only, manifest, probe = setup(out, demo)
    evaluator = None if generate else functools.partial(loss_evaluation, batch_size=batch_size)
    record = compare(configs, seeds, out, [manifest], bench_preset=None, batch_size=batch_size,
                     max_new_tokens=max_new_tokens, nproc=nproc, text_only_config=text_only, probe=probe,
                     evaluator=evaluator)
    record["findings"] = [str(p) for p in findings_report(out, seeds, probe)]
    atomic_write_json(out / "compare.json", record)
    return record
