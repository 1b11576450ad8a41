"""`pal compare --preset findings`: PAL's four claims in PAL's own configurations, scored by the order-free hearing
mAP, under the protocol fixed before any run (docs/findings/protocol.md: read it first; this module carries it out).

Per seed k (which sets the demo data's draw, the SSLAM's pre-training, the probe, the connectors' initialisation and
the data order): the demo's data, SSLAM and features are built for that seed (`setup_seed`), one config per
connector of `CONNECTORS` is written (the demo's stage 1 for `STEPS` steps, a checkpoint every `CHECKPOINT_EVERY`),
and every run is trained (`pal compare`'s `train`, in `nproc` local ranks), then scored by `early_stopped_evaluation`:
the checkpoint with the best validation hearing mAP is the run's model, and the test split is scored once on it
(hearing mAP with its controls and the probe fraction, the classification answer loss and the reliance gap, the
text-only trained model's loss). `VARIANCE_SEEDS` trains lal-L4 again on seed 0's data and SSLAM with other
initialisation and order seeds, to say which source of variance dominates. Runs are reused, so the preset runs in
parts (`--seeds 1`, then `--seeds 3`, then 5).

The report (`OUT/findings.md`, `.html`) gives each connector's scores over seeds, the delay sweep, and each claim's
paired difference with its 95% t-interval, two one-sided p-values, and the verdict after Holm's correction over the
family of every claim's two tests (`verdicts`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from pal.common.safe_write import atomic_write_json, check_writable
from pal.eval.report import Image, Section, Table, write_report

from .compare import TEXT_ONLY, read_run, seed_stats, train

STEPS = 96  # the budget's ceiling; the model is the best checkpoint on validation (protocol, "The budget")
CHECKPOINT_EVERY = 24
MARGIN = 0.02  # hearing mAP a "no worse" claim allows
FAR = 1.2  # the examples/s ratio "far lower cost" asks for
ALPHA = 0.05  # family-wise, Holm
VARIANCE_SEEDS = (1001, 1002)  # lal-L4 again on seed 0's data and SSLAM: init and order only
VARIANCE_CONFIG = "lal-L4"
MATCHED = "lal-L4-matched"
MANIFEST, VALIDATION = "test-classify", "val-classify"


def _lal(layer: int, **extra) -> dict:
    # audio_offset 5: a fresh connector starts with the LLM nearly intact (docs/findings.md), as in the demo.
    return {"connector": "lal", "lal_config": {"start_layer": layer, "audio_offset": 5, **extra}}


CONNECTORS = {  # name → (the connector block, the encoders it hears); the protocol's table
    **{f"lal-L{layer}": (_lal(layer), ["sslam"]) for layer in (0, 2, 4, 8, 16)},
    "plits-same": ({"connector": "plits", "plits_config": {"mlp_downsample": 1}}, ["sslam"]),
    MATCHED: (_lal(4, projection="lowrank"), ["sslam"]),  # its rank is set to match plits-same (`matched_rank`)
    "plits-whisper": ({"connector": "plits", "plits_config": {"mlp_downsample": 4}}, ["whisper"]),
    "pal": ({"connector": "pal", "routes": {"sslam": "lal", "whisper": "plits"},
             "lal_config": {"start_layer": 4, "audio_offset": 5}, "plits_config": {"mlp_downsample": 4}},
            ["sslam", "whisper"]),
}
# (claim, the config it favours, the config it is against, kind): "better" (difference > 0), "no worse" (difference
# > −MARGIN), "cost" (examples/s ratio > FAR).
CLAIMS = [("delay helps", "lal-L4", "lal-L0", "better"),
          ("attention-only suffices, same tokens", "lal-L4", "plits-same", "no worse"),
          ("attention-only suffices, matched trainable parameters", MATCHED, "plits-same", "no worse"),
          ("the ensemble adds to the SSLAM alone", "pal", "lal-L4", "better"),
          ("the ensemble adds to Whisper-base alone", "pal", "plits-whisper", "better"),
          ("LAL at far lower cost", "lal-L4", "plits-same", "cost")]
HEARING = ("metrics", "hearing_mAP")


# ----------------------------------------------------------------------------------------------------------------------
# Set-up: each seed's data, SSLAM, features, manifests, probe and configs
# ----------------------------------------------------------------------------------------------------------------------


def setup_seed(out: Path, seed: int, demo: Path | None = None) -> dict:
    """The demo's data, SSLAM and features for this seed (in `OUT/demo-seed<k>`, or `demo` for seed 0), the test and
    validation classification manifests, the probe (fitted on the training scenes, tested on the test's) and the
    configs → {"configs": [paths in `CONNECTORS`' order], "text_only": path, "test", "validation": manifests,
    "probe": result}. Reused if present."""
    from pal.eval.probe import run_probe
    from pal.workflows.demo import PRESETS, ensemble_config, step_data, step_features, step_sslam

    out = check_writable(out).resolve()  # the configs' paths must hold from the ranks' working directory too
    folder = (demo if demo is not None and seed == 0 else out / f"demo-seed{seed}").resolve()
    data = step_data(folder, PRESETS["full"], seed)
    if not (data / "val_all.jsonl").is_file():
        raise ValueError(f"{data} has no val_all.jsonl (every validation question), which the budget is chosen on: it "
                         "was built by an older `pal data demo`. Delete the folder (or leave out --demo) to rebuild it.")
    encoders = ensemble_config(step_sslam(folder, data, PRESETS["full"], seed))
    features = step_features(folder, data, encoders)
    manifests = {}
    for name, source in ((MANIFEST, "test.jsonl"), (VALIDATION, "val_all.jsonl")):
        manifests[name] = data / f"{name}.jsonl"  # beside the clips: its audio paths are relative to the manifest
        rows = [line for line in (data / source).read_text().splitlines() if json.loads(line)["task"] == "classify"]
        manifests[name].write_text("".join(line + "\n" for line in rows))
    probe_file = out / f"probe-seed{seed}.json"
    if not probe_file.is_file():
        atomic_write_json(probe_file, run_probe(features, encoders, data / "train.jsonl", manifests[MANIFEST]))
    configs, text_only = write_configs(out / "configs" / f"seed{seed}", out / "runs", data, encoders, features, seed)
    return {"configs": configs, "text_only": text_only, "test": manifests[MANIFEST],
            "validation": manifests[VALIDATION], "probe": json.loads(probe_file.read_text())}


def connector_parameters(connector: dict, encoder_dims: dict[str, int]) -> int:
    """Trainable connector parameters of this connector block on the default LLM (SmolLM2-135M-Instruct), counted
    on the meta device: nothing is loaded or allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pal import PALForConditionalGeneration
    from pal.configuration_pal import PALConfig
    from pal.llm import resolve_llm_path
    from pal.trainable import set_trainable

    config = AutoConfig.from_pretrained(resolve_llm_path(None))
    with torch.device("meta"):
        model = PALForConditionalGeneration(PALConfig(text_config=config.to_dict(), encoder_dims=encoder_dims,
                                                      **connector), llm=AutoModelForCausalLM.from_config(config))
    return set_trainable(model, ["connector"])["connector"]


def matched_rank(encoder_dims: dict[str, int]) -> int:
    """The low-rank projection's rank that brings lal-L4-matched's trainable parameters closest to plits-same's
    (they grow by a fixed amount per unit of rank: two counts give the line)."""
    target = connector_parameters(CONNECTORS["plits-same"][0], encoder_dims)
    block = CONNECTORS[MATCHED][0]

    def count(rank: int) -> int:
        return connector_parameters({**block, "lal_config": {**block["lal_config"], "projection_rank": rank}},
                                    encoder_dims)

    one, two = count(1), count(2)
    return max(1, round(1 + (target - one) / (two - one)))


def write_configs(folder: Path, runs: Path, data: Path, encoders, features: Path, seed: int) -> tuple[list[Path], Path]:
    """`folder/<connector>.yaml`: the demo's stage 1 for `STEPS` steps on `data`, a checkpoint every
    `CHECKPOINT_EVERY` steps (all kept), with the connector and encoders of each of `CONNECTORS` (lal-L4-matched's
    rank from `matched_rank`), the rest the shipped demo's; and the text-only baseline's (LoRA trained, the audio
    removed by `pal compare`'s `train`) → (configs in `CONNECTORS`' order, the baseline's)."""
    from dataclasses import asdict, replace

    from pal.common.typed_config import config_path
    from pal.encoders.ensemble import AudioEncoderEnsemble

    shipped = yaml.safe_load(config_path("pal:curriculum/demo-full.yaml").read_text())
    stage = {**shipped["stages"][0], "steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY,
             "keep_last": STEPS // CHECKPOINT_EVERY, "data": [{"manifest": str(data / "classify_caption.jsonl")}],
             "val_manifest": str(data / "val.jsonl")}
    heard = CONNECTORS[MATCHED][1]  # built alone: the matched rank needs only its encoder's width
    rank = matched_rank(AudioEncoderEnsemble(replace(encoders, encoders={k: encoders.encoders[k] for k in heard})).dims)
    folder = check_writable(folder)
    configs = []
    for name, (connector, heard) in CONNECTORS.items():
        if name == MATCHED:
            connector = {**connector, "lal_config": {**connector["lal_config"], "projection_rank": rank}}
        specs = {k: {f: v for f, v in asdict(spec).items() if v is not None} for k, spec in encoders.encoders.items()
                 if k in heard}
        config = {"model": {**shipped["model"], "connector": {"audio_norm": "standardize", **connector},
                            "encoders": {"encoders": specs, "dtype": encoders.dtype, "device": encoders.device}},
                  "seed": seed, "out": str(runs / name / f"seed{seed}"), "feature_cache": str(features),
                  "stages": [stage]}
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        configs.append(path)
    text_only = yaml.safe_load((folder / "pal.yaml").read_text())
    text_only["stages"] = [{**stage, "name": "text-only", "trainable": ["lora"], "keep_last": 1,
                            "checkpoint_every": STEPS}]
    (folder / "text-only-baseline.yaml").write_text(yaml.safe_dump(text_only, sort_keys=False))
    return configs, folder / "text-only-baseline.yaml"


# ----------------------------------------------------------------------------------------------------------------------
# Scoring a run: the budget chosen on validation, the test scored once
# ----------------------------------------------------------------------------------------------------------------------


def checkpoint_steps(final: Path) -> dict[int, Path]:
    """{step: the checkpoint's `trainable.safetensors`} of the stage that wrote `final/`."""
    from pal.training.checkpointing import checkpoint_root, checkpoint_tags, tag_step

    stage = final.parent
    return {tag_step(tag): checkpoint_root(stage) / tag / "trainable.safetensors" for tag in checkpoint_tags(stage)
            if (checkpoint_root(stage) / tag / "trainable.safetensors").is_file()}


def load_checkpoint(llm, weights: Path) -> None:
    """A checkpoint's trained tensors (the fp32 masters `pal train` keeps) into a loaded model of the same run."""
    from safetensors.torch import load_file

    unexpected = llm.model.load_state_dict(load_file(weights), strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{weights}: tensors {unexpected[:3]} are not this model's; is it the same run's checkpoint?")


def early_stopped_evaluation(final: Path, validation: Path, test: Path, out: Path, text_only: Path | None,
                             probe: dict | None = None, batch_size: int = 8) -> dict:
    """Every checkpoint of the run scored by its hearing mAP on `validation`; the best (the earlier on a tie) is the
    run's model, and `test` is scored once on it: the hearing score with its controls (pal/eval/hearing.py; the
    fraction of `probe`'s ceiling), each gold answer's teacher-forced loss with its clip's audio and another clip's
    (pal/eval/reliance.py), and the text-only trained model's loss of the same answers without audio → written to
    `out` in `pal eval`'s layout, with "budget": {"validation_hearing_mAP": {step: value}, "chosen_step"}."""
    from pal.data.manifest import read_questions
    from pal.eval.answer_loss import answer_losses
    from pal.eval.evaluate import add_hearing
    from pal.eval.hearing import hearing_metrics, hearing_scores, hearing_with_controls
    from pal.eval.reliance import reliance_gap
    from pal.inference.audio_llm import AudioLLM

    llm = AudioLLM.from_pretrained(final)
    held, examples = read_questions(validation), read_questions(test)
    steps = checkpoint_steps(final)
    if not steps:
        raise ValueError(f"{final.parent} keeps no checkpoint with trainable.safetensors: nothing to choose from.")
    scores = {}
    for step in sorted(steps):
        load_checkpoint(llm, steps[step])
        scores[step] = hearing_metrics(hearing_scores(llm, held))["classify"]["hearing_mAP"]["value"]
    chosen = max(sorted(scores), key=lambda s: (scores[s], -s))
    load_checkpoint(llm, steps[chosen])
    baseline = AudioLLM.from_pretrained(text_only) if text_only is not None else None
    result = {"model": {"folder": str(final), "checkpoint": str(steps[chosen])},
              "manifest": {"path": str(test), "examples": len(examples)},
              "budget": {"validation": str(validation), "validation_hearing_mAP": {str(s): v for s, v in scores.items()},
                         "chosen_step": chosen},
              "reliance": reliance_gap(llm, examples, batch_size), "tasks": {}}
    add_hearing(result["tasks"], hearing_with_controls(llm, examples, baseline, probe))
    if baseline is not None:
        conversations = [baseline.conversation(e.prompt, with_audio=False) + [{"role": "assistant", "content": e.answer}]
                         for e in examples]
        losses = [answer_losses(baseline, conversations[i : i + batch_size], None)
                  for i in range(0, len(conversations), batch_size)]
        result["text_only_answer_loss"] = float(sum(x.sum().item() for x in losses) / len(examples))
        result["text_only_model"] = str(text_only)
    atomic_write_json(out, result)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Reading the runs
# ----------------------------------------------------------------------------------------------------------------------


def run_scores(folder: Path) -> dict | None:
    """One finished run's figures: the test hearing mAP (with another clip's audio, the text-only trained model's,
    the fraction of the probe ceiling), the chosen step, the classification answer loss and gap, the text-only trained
    model's loss, and training throughput and peak memory; None before its evaluation."""
    run = read_run(folder, [Path(f"{MANIFEST}.jsonl")])  # the last stage's end event and the evaluation
    result = run["evals"].get(MANIFEST)
    if result is None:
        return None
    scores = {}
    task = result.get("tasks", {}).get("classify", {})
    for key in ("metrics", "mismatched_audio", "no_audio", "text_only_trained"):
        for name in ("hearing_mAP", "hearing_probe_fraction"):
            if name in task.get(key, {}):
                scores[(key, name)] = task[key][name]["value"]
    if "hearing_mAP" in task.get("metrics", {}):
        scores[("metrics", "chance_mAP")] = task["metrics"]["hearing_mAP"]["chance"]
    if "budget" in result:
        scores[("budget", "chosen_step")] = result["budget"]["chosen_step"]
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


def collect(out: Path, seeds: int) -> dict:
    """{config: {seed: run_scores}} over the finished runs."""
    return {name: {s: found for s in range(seeds) if (found := run_scores(out / "runs" / name / f"seed{s}"))}
            for name in CONNECTORS}


def paired(runs: dict, a: str, b: str, key: tuple, ratio: bool = False) -> list[float]:
    """a − b (or a / b) per seed both finished, in seed order."""
    seeds = sorted(s for s in runs[a] if s in runs[b] and key in runs[a][s] and key in runs[b][s])
    return [runs[a][s][key] / runs[b][s][key] if ratio else runs[a][s][key] - runs[b][s][key] for s in seeds]


def one_sided_p(values: list[float], null: float, greater: bool) -> float:
    """The one-sided paired t-test's p-value of H1: mean > null (`greater`) or mean < null; NaN under 2 values."""
    from scipy import stats

    if len(values) < 2:
        return float("nan")
    if len(set(values)) == 1:  # no spread: the t statistic is infinite, or undefined at the null itself
        mean = values[0]
        return 0.0 if (mean > null if greater else mean < null) else 1.0
    return float(stats.ttest_1samp(values, null, alternative="greater" if greater else "less").pvalue)


def holm(p_values: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise `alpha` (NaN never is). Sorted
    ascending, the i-th smallest p (from 0) is rejected while every p so far is ≤ alpha / (m − i)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: math.inf if math.isnan(p_values[i]) else p_values[i])
    rejected = [False] * m
    for rank, i in enumerate(order):
        if math.isnan(p_values[i]) or p_values[i] > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def verdicts(runs: dict) -> list[dict]:
    """Each claim of `CLAIMS`: its per-seed values (hearing mAP differences, or the examples/s ratio for cost), their
    mean and 95% t-interval, the "supported" and "refuted" one-sided p-values, and the verdict after Holm's
    correction over all the claims' tests together (protocol, "The verdicts")."""
    found = []
    for claim, a, b, kind in CLAIMS:
        if kind == "cost":
            values, null = paired(runs, a, b, ("train", "examples_per_s"), ratio=True), FAR
        else:
            values, null = paired(runs, a, b, HEARING), (0.0 if kind == "better" else -MARGIN)
        found.append({"claim": claim, "compared": f"{a} / {b}" if kind == "cost" else f"{a} − {b}", "kind": kind,
                      "values": values, "null": null, "stats": seed_stats(values) if values else None,
                      "p_supported": one_sided_p(values, null, greater=True),
                      "p_refuted": one_sided_p(values, null, greater=False)})
    rejected = holm([f["p_supported"] for f in found] + [f["p_refuted"] for f in found])
    for i, f in enumerate(found):
        supported, refuted = rejected[i], rejected[len(found) + i]
        f["verdict"] = ("supported" if supported and not refuted else "refuted" if refuted and not supported
                        else "not resolved" + (" (fewer than 2 seeds)" if len(f["values"]) < 2 else ""))
    return found


def variance_sources(out: Path, runs: dict) -> dict:
    """lal-L4's test hearing mAP over the initialisation and order seeds on seed 0's data and SSLAM, and over the
    seeds (everything varied) → {"init_only": seed_stats, "all_sources": seed_stats} (a side without 2 runs: None)."""
    init = [runs[VARIANCE_CONFIG][0][HEARING]] if 0 in runs[VARIANCE_CONFIG] else []
    for extra in VARIANCE_SEEDS:
        found = run_scores(out / "runs" / VARIANCE_CONFIG / f"seed0-init{extra}")
        if found and HEARING in found:
            init.append(found[HEARING])
    every = [r[HEARING] for r in runs[VARIANCE_CONFIG].values() if HEARING in r]
    return {"init_only": seed_stats(init) if len(init) > 1 else None,
            "all_sources": seed_stats(every) if len(every) > 1 else None}


# ----------------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------------


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


def _plot(runs: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (sweep, bars) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.6]})
    layers = [(int(n.split("L")[1]), n) for n in CONNECTORS if n.startswith("lal-L") and n != MATCHED and runs[n]]
    for key, label in ((HEARING, "own audio"), (("mismatched_audio", "hearing_mAP"), "another clip's audio")):
        stats = [over_seeds(runs, n, key) for _, n in layers]
        xs = [layer for (layer, _), s in zip(layers, stats) if s]
        ys = [s["mean"] for s in stats if s]
        errors = [0.0 if math.isnan(s["ci95"][1]) else s["ci95"][1] - s["mean"] for s in stats if s]
        sweep.errorbar(xs, ys, yerr=errors, marker="o", capsize=4, label=label)
    chance = [r[("metrics", "chance_mAP")] for found in runs.values() for r in found.values()
              if ("metrics", "chance_mAP") in r]
    for ax in (sweep, bars):
        if chance:
            ax.axhline(sum(chance) / len(chance), color="grey", linestyle=":", label="chance (prevalence)")
        ax.grid(alpha=0.3)
    sweep.set_xlabel("LAL's first audio layer (SSLAM)")
    sweep.set_ylabel("test hearing mAP")
    sweep.set_title("delay sweep", fontsize=9)
    sweep.legend(fontsize=7)
    names = [n for n in CONNECTORS if runs[n]]
    stats = [over_seeds(runs, n, HEARING) for n in names]
    bars.bar(range(len(names)), [s["mean"] if s else math.nan for s in stats], color="#4c78a8",
             yerr=[0.0 if not s or math.isnan(s["ci95"][1]) else s["ci95"][1] - s["mean"] for s in stats], capsize=4)
    bars.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    bars.set_title("test hearing mAP per connector (early-stopped on validation)", fontsize=9)
    fig.suptitle("PAL's claims at our scale: means over seeds with 95% intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def findings_report(out: Path, seeds: int, probes: dict[int, dict], commit: str = "") -> tuple[Path, Path]:
    """`OUT/findings.md` and `.html` from the finished runs; `probes`: each seed's probe result."""
    runs = collect(out, seeds)
    done = {n: len(r) for n, r in runs.items()}
    ceilings = "; ".join(f"seed {s}: " + ", ".join(f"{n} {e['mAP']['value']:.3f} ({e.get('readout', 'linear')})"
                                                   for n, e in probe["encoders"].items())
                         for s, probe in sorted(probes.items()))
    intro = (f"The protocol of docs/findings/protocol.md{f' (run from commit {commit})' if commit else ''}: the "
             f"demo's stage 1 (connector only, LLM frozen) for up to {STEPS} steps, the checkpoint (every "
             f"{CHECKPOINT_EVERY} steps) with the best validation hearing mAP taken, each connector with seeds "
             f"0..{seeds - 1}, each seed its own data draw and SSLAM (finished: "
             + ", ".join(f"{n} {k}" for n, k in done.items()) + "). Scored on each seed's test classification "
             "clips by the order-free hearing mAP (each class's likelihood as the answer, average precision over the "
             "clips; chance is each class's prevalence), beside another clip's audio and the text-only trained "
             "model. The encoders' probe ceiling (test mAP; the read-out that cross-validated best on the training "
             f"scenes): {ceilings}. Each cell: the mean over seeds and its 95% t-interval.")
    scores = Table(["connector", "hearing mAP", "another clip's audio", "text-only trained model", "chance",
                    "fraction of the probe ceiling", "chosen step", "answer loss", "reliance gap",
                    "training examples/s", "peak memory MB"], [])
    for name in CONNECTORS:
        if not runs[name]:
            continue

        def cell(key, digits=3, signed=False, name=name):
            return _cell(over_seeds(runs, name, key), digits, signed)

        scores.rows.append([name, cell(HEARING), cell(("mismatched_audio", "hearing_mAP")),
                            cell(("text_only_trained", "hearing_mAP")), cell(("metrics", "chance_mAP")),
                            cell(("metrics", "hearing_probe_fraction")), cell(("budget", "chosen_step"), 0),
                            cell(("metrics", "answer_loss")), cell(("metrics", "gap"), signed=True),
                            cell(("train", "examples_per_s"), 2), cell(("train", "peak_mb"), 0)])
    claims = Table(["claim", "compared", "per seed", "mean [95% CI]", "p (supported)", "p (refuted)", "verdict"], [])
    for found in verdicts(runs):
        cost = found["kind"] == "cost"
        claims.rows.append([found["claim"], found["compared"], ", ".join(f"{v:.3f}" for v in found["values"]) or "–",
                            _cell(found["stats"], 2 if cost else 3, signed=not cost),
                            f"{found['p_supported']:.4f}", f"{found['p_refuted']:.4f}", found["verdict"]])
    memory = Table(["compared", "peak memory ratio per seed", "mean [95% CI]"], [])
    for _, a, b, kind in CLAIMS:
        if kind == "cost":
            ratios = paired(runs, a, b, ("train", "peak_mb"), ratio=True)
            memory.rows.append([f"{a} / {b}", ", ".join(f"{v:.2f}" for v in ratios) or "–",
                                _cell(seed_stats(ratios) if ratios else None, 2)])
    spread = variance_sources(out, runs)
    variance = Table(["lal-L4's test hearing mAP", "runs", "standard deviation"],
                     [[label, str(s["seeds"]) if s else "–", f"{s['std']:.4f}" if s else "–"] for label, s in
                      (("initialisation and order only (seed 0's data and SSLAM)", spread["init_only"]),
                       ("every source (each seed its data draw and SSLAM)", spread["all_sources"]))])
    rule = (f"Per seed, the favoured configuration's test hearing mAP minus the other's (cost: the ratio of training "
            f"examples/s). \"Better\": supported when the one-sided paired t-test of a positive difference is "
            f"rejected, refuted when that of a negative one is; \"no worse\": the same against −{MARGIN}; cost: "
            f"against a ratio of {FAR}. The {2 * len(CLAIMS)} one-sided tests are one family, corrected by Holm's "
            f"method at α = {ALPHA}; otherwise the claim is not resolved.")
    figures = check_writable(out / "figures")
    sections = [Section("Set-up", [intro]),
                Section("Scores per connector", [scores, Image(_plot(runs, figures / "findings.png"),
                                                               "means over seeds with 95% intervals")]),
                Section("PAL's claims", [claims, rule, memory]),
                Section("Which source of variance dominates", [variance])]
    return write_report(out, "PAL's findings at our scale", sections, name="findings")


# ----------------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------------


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _one_run(statuses: dict, key: str, folder: Path, work, *args):
    """`work(*args)` (train, or train and score, one run; finished work is reused) → its result, its status under
    statuses[key]; a failure is recorded there (None returned) and the other runs go on."""
    try:
        found = work(*args)
        statuses[key] = {"status": "done", "folder": str(folder)}
        return found
    except Exception as err:
        statuses[key] = {"status": "failed", "folder": str(folder), "error": f"{type(err).__name__}: {err}"}
        return None


def _train_and_score(config: Path, seed: int, folder: Path, setup: dict, text_only: Path | None, nproc: int,
                     batch_size: int) -> None:
    final = train(config, seed, folder, nproc=nproc)
    target = folder / f"eval-{MANIFEST}.json"
    if not target.is_file():
        early_stopped_evaluation(final, setup["validation"], setup["test"], target, text_only, setup["probe"],
                                 batch_size)


def run_findings(out: Path, seeds: int = 3, demo: Path | None = None, nproc: int = 2, batch_size: int = 8) -> dict:
    """Seed by seed: its set-up, the text-only baseline, every connector trained and scored (finished runs reused),
    then (seed 0) the variance runs; then the report → the record written to `OUT/compare.json`."""
    out = check_writable(out).resolve()
    record = {"protocol": "docs/findings/protocol.md", "commit": _commit(), "seeds": seeds,
              "runs": {name: {} for name in CONNECTORS}, "text_only": {}}
    probes = {}
    for seed in range(seeds):
        setup = setup_seed(out, seed, demo)
        probes[seed] = setup["probe"]
        folder = out / "runs" / TEXT_ONLY / f"seed{seed}"
        baseline = _one_run(record["text_only"], str(seed), folder, train, setup["text_only"], seed, folder, True,
                            nproc)
        for config in setup["configs"]:
            folder = out / "runs" / config.stem / f"seed{seed}"
            _one_run(record["runs"][config.stem], str(seed), folder, _train_and_score, config, seed, folder, setup,
                     baseline, nproc, batch_size)
            atomic_write_json(out / "compare.json", record)
        if seed == 0:  # lal-L4 with other initialisation and order seeds, seed 0's data and SSLAM
            config = next(c for c in setup["configs"] if c.stem == VARIANCE_CONFIG)
            for extra in VARIANCE_SEEDS:
                folder = out / "runs" / VARIANCE_CONFIG / f"seed0-init{extra}"
                _one_run(record["runs"][VARIANCE_CONFIG], f"0-init{extra}", folder, _train_and_score, config, extra,
                         folder, setup, baseline, nproc, batch_size)
                atomic_write_json(out / "compare.json", record)
    record["findings"] = [str(p) for p in findings_report(out, seeds, probes, record["commit"])]
    record["report"] = record["findings"]
    atomic_write_json(out / "compare.json", record)
    return record


__all__ = ["CLAIMS", "CONNECTORS", "early_stopped_evaluation", "findings_report", "holm", "run_findings", "setup_seed",
           "verdicts", "write_configs"]
