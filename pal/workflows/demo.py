"""`pal demo`: the main job end to end on this CPU, each step skipped when already done (rerun to resume).

1. build the demo dataset (`pal data demo`): real sounds mixed into scenes whose composition is known;
2. pre-train a tiny SSLAM on its clips: stage 1 (EAT), then stage 2 (mixtures, source retention loss); export it;
3. cache the encoder features (the demo's SSLAM and the real Whisper-base) for every clip;
4. train SmolLM2-135M-Instruct with PAL through the three-stage curriculum (SSLAM via LAL from layer 4, Whisper-base
   via PLITS);
   then the text-only trained baseline: the same curriculum on the same questions with the audio removed;
5. fit the encoders' probe ceiling (`pal probe`: linear and MLP read-outs tuned by cross-validation) on the training
   scenes; evaluate the test split with `pal eval`, with the order-free hearing mAP as a fraction of the ceiling's
   margin over chance; beside every score, the same model given another clip's audio, the text-only trained baseline,
   and the model with the audio removed; then the fit check: the classification of as many training scenes, so that
   a low test score says whether the model underfits or does not generalise;
6. export the trained model into one folder to take away (`pal export`: weights, tokenizer, encoders, model card);
   write a report (Markdown and HTML: per-task metrics with intervals and the baseline, loss curves, example answers
   beside the true composition) and print the summary and a `pal infer` command to ask the model something.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import replace
from pathlib import Path

PRESETS = {
    # clips: scenes; sslam: (stage-1 steps, stage-2 steps); train_scale: each curriculum stage's steps times this (the
    # text-only baseline's too); eval: decoding settings for the test split
    "smoke": {"clips": 60, "sslam": (12, 6), "curriculum": "demo-smoke.yaml", "train_scale": 1, "max_new_tokens": 24,
              "batch": 8},
    "full": {"clips": 800, "sslam": (200, 100), "curriculum": "demo-full.yaml", "train_scale": 1, "max_new_tokens": 32,
             "batch": 16},
    # The full demo with twice the training: the recipe underfits at 30 minutes (docs/demo-results.md).
    "long": {"clips": 800, "sslam": (200, 100), "curriculum": "demo-full.yaml", "train_scale": 2, "max_new_tokens": 32,
             "batch": 16},
}
# Goals of the full preset on the test split (the hearing issue's), reported as met or missed, whatever they turn out
# to be: (task, metric, what, target, "≥" or "≤", which result: the model's "metrics" or a control's key).
GOALS = [("qa", "accuracy_yes_no", "presence yes/no accuracy", 0.90, "≥", "metrics"),
         ("classify", "exact_set", "event classification, exact label set", 0.60, "≥", "metrics"),
         ("qa", "accuracy_short", "spoken-word accuracy", 0.80, "≥", "metrics"),
         ("qa", "accuracy_count", "count accuracy", 0.60, "≥", "metrics"),
         ("caption", "CIDEr-D", "caption CIDEr-D", 1.0, "≥", "metrics"),
         ("asr", "wer", "speech WER", 0.40, "≤", "metrics"),
         ("qa", "accuracy_yes_no", "presence with another clip's audio (control)", 0.60, "≤", "mismatched_audio"),
         ("classify", "hearing_probe_fraction", "hearing: fraction of the probe ceiling's mAP margin", 0.80, "≥",
          "metrics")]


def say(message: str) -> None:
    print(message, flush=True)


def step_data(out: Path, preset: dict, seed: int) -> Path:
    data = out / "data"
    card = data / "card.json"
    if card.is_file() and json.loads(card.read_text()).get("clips") == preset["clips"]:
        say(f"[1/6] dataset: {data} is there")
        return data
    say(f"[1/6] dataset: building {preset['clips']} scenes in {data}")
    # In a fresh child process: building the scenes in this process left the curriculum's later steps several times
    # slower (docs/efficiency.md), and a child process gives its memory back. Its errors are raised here.
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from pal.data.demo_dataset import build

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as child:
        card = child.submit(build, data, seed=seed, clips=preset["clips"]).result()
    say(f"      {sum(card['scenes'].values())} scenes; see {data / 'card.md'}")
    return data


def step_sslam(out: Path, data: Path, preset: dict, seed: int = 0) -> Path:
    """The SSLAM pre-trained on the demo clips (stage 1, then stage 2), exported → its folder. `seed`: the
    pre-training's (masks, data order, initialisation)."""
    from pal.pretraining.config import PretrainConfig
    from pal.pretraining.export import export_student
    from pal.pretraining.recipe import SSLAMPretrainRecipe
    from pal.training.checkpointing import has_checkpoints, trained_steps

    encoder = out / "sslam" / "encoder"
    if (encoder / "config.json").is_file():
        say(f"[2/6] SSLAM: {encoder} is there")
        return encoder
    runs = {1: out / "sslam" / "stage1", 2: out / "sslam" / "stage2"}
    for stage, steps in zip((1, 2), preset["sslam"]):
        run = runs[stage]
        if trained_steps(run) >= steps:
            continue
        say(f"[2/6] SSLAM stage {stage}: {steps} steps on {data / 'clips.jsonl'}")
        config = PretrainConfig.from_yaml("pal:sslam/demo.yaml")
        config.data.manifest = str(data / "clips.jsonl")
        config.optim.max_steps = steps
        config.checkpoint.every = steps
        config.objective = replace(config.objective, stage=stage)
        config.seed = seed
        if stage == 2:
            config.init = str(runs[1])
        recipe = SSLAMPretrainRecipe(config, run, resume=has_checkpoints(run))
        recipe.run()
    export_student(runs[2], encoder)
    return encoder


def ensemble_config(encoder: Path):
    from pal.encoders.ensemble import EnsembleConfig

    config = EnsembleConfig.from_yaml("pal:encoders/demo.yaml")
    config.encoders["sslam"] = replace(config.encoders["sslam"], path=str(encoder), preset=None)
    return config


def step_features(out: Path, data: Path, encoders) -> Path:
    from pal.encoders.feature_cache import FeatureCache

    clips = sorted((data / "clips").glob("*.wav"))
    cache = FeatureCache(out / "features", encoders)
    say(f"[3/6] features: SSLAM and Whisper-base tokens of {len(clips)} clips into {out / 'features'}")
    stats = cache.build(clips, batch_size=8)
    if stats["bad"]:
        say(f"      {stats['bad']} clip(s) could not be read: see {out / 'features' / 'index.json'}")
    return out / "features"


def step_curriculum(out: Path, data: Path, preset: dict, encoders, features: Path, text_only: bool = False,
                    nproc: int = 1) -> Path:
    """Train the curriculum on the demo's manifests; `text_only`: the text-only trained baseline
    (pal/curriculum/text_only.py), in `curriculum-text-only/`. `nproc` > 1: in that many ranks under torchrun
    (training/launch.py), each taking its share of the YAML's batch, so the global batch and the data stay the same."""
    from pal.curriculum.command import train_in_ranks
    from pal.curriculum.config import CurriculumConfig
    from pal.curriculum.text_only import text_only_curriculum

    yaml = f"pal:curriculum/{preset['curriculum']}"
    config = CurriculumConfig.from_yaml(yaml)
    for stage in config.stages:
        for source in stage.data:
            source.manifest = str(data / Path(source.manifest).name)
        stage.val_manifest = str(data / "val.jsonl")
        if stage.steps is not None:
            stage.steps *= preset["train_scale"]
        else:
            stage.epochs *= preset["train_scale"]
    if text_only:
        config = text_only_curriculum(config, data / "text-only")
    name = "curriculum-text-only" if text_only else "curriculum"
    config.model.encoders, config.feature_cache, config.out = encoders, str(features), str(out / name)
    if text_only:
        say(f"[4/6] text-only trained baseline: the same curriculum without the audio, in {config.out}")
    else:
        say(f"[4/6] curriculum: {len(config.stages)} stages on SmolLM2-135M-Instruct, PAL (SSLAM via LAL from layer "
            f"{config.model.connector['lal_config']['start_layer']}, Whisper-base via PLITS)")
    # A folder trained by another recipe (or --nproc): `pal demo` has no --restart.
    return train_in_ranks(config, nproc, yaml, out / f"{name}.json",
                          advice=f"For `pal demo`: delete {config.out} to retrain it, or pass another --out.",
                          on_stage=lambda result: say(f"      stage {result}"))


@functools.cache
def trained_model(final: Path):
    """The trained model, loaded once for the evaluation and the fit check (`run_demo` empties the cache first)."""
    from pal.inference.audio_llm import AudioLLM

    return AudioLLM.from_pretrained(final)


def step_probe(out: Path, data: Path, encoders, features: Path) -> dict:
    """The encoders' probe ceiling on the test scenes (`pal probe`, fitted and tuned on the training scenes): what the
    evaluation reports the model's hearing as a fraction of. A probe file from before the tuned read-outs (no
    per-clip "scores") is fitted again."""
    from pal.common.safe_write import atomic_write_json, check_writable
    from pal.eval.probe import run_probe

    results = check_writable(out / "eval") / "probe.json"
    found = json.loads(results.read_text()) if results.is_file() else None
    if found and all("scores" in e for e in found["encoders"].values()):
        return found
    say(f"[5/6] probe ceiling of the encoders (linear and MLP read-outs, tuned by cross-validation): fitted on "
        f"{data / 'train.jsonl'}, tested on {data / 'test.jsonl'}")
    found = run_probe(features, encoders, data / "train.jsonl", data / "test.jsonl")
    atomic_write_json(results, found)
    return found


def step_eval(out: Path, data: Path, final: Path, preset: dict, text_only_final: Path | None = None,
              workers: int = 1, probe: dict | None = None) -> dict:
    from pal.eval.evaluate import evaluate
    from pal.inference.audio_llm import AudioLLM, Decoding

    results = out / "eval" / "results.json"
    if results.is_file():
        say(f"[5/6] evaluation: {results} is there")
        return json.loads(results.read_text())
    say(f"[5/6] evaluation: the test split, with its controls ({data / 'test.jsonl'})")
    llm = trained_model(final)
    text_only = AudioLLM.from_pretrained(text_only_final) if text_only_final is not None else None
    return evaluate(llm, data / "test.jsonl", results, Decoding(max_new_tokens=preset["max_new_tokens"]),
                    batch_size=preset["batch"], text_only=text_only, workers=workers, probe=probe)


def step_fit(out: Path, data: Path, final: Path, preset: dict) -> dict:
    """The classification questions of as many training scenes as the test split holds, asked of the trained model:
    what it learned of the scenes it trained on, beside what it carries to the held-out test. Both low: the recipe
    underfits (more or better training before more data); training high and test low: it does not generalise to
    recordings it never heard. The manifest is written from train.jsonl here, so a dataset built earlier gets it too."""
    from pal.eval.evaluate import evaluate
    from pal.inference.audio_llm import Decoding

    results = out / "eval" / "fit.json"
    if results.is_file():
        say(f"[5/6] fit to the training scenes: {results} is there")
        return json.loads(results.read_text())
    count = sum(1 for line in (data / "test.jsonl").read_text().splitlines() if json.loads(line)["task"] == "classify")
    rows = [line for line in (data / "train.jsonl").read_text().splitlines()
            if json.loads(line)["task"] == "classify"][:count]
    manifest = data / "fit.jsonl"  # beside the clips: the rows' audio paths are relative to the manifest
    manifest.write_text("".join(line + "\n" for line in rows))
    say(f"[5/6] fit to the training scenes: classification of {len(rows)} training scenes ({manifest})")
    return evaluate(trained_model(final), manifest, results,
                    Decoding(max_new_tokens=preset["max_new_tokens"]), batch_size=preset["batch"], baseline=False)


def step_curve(out: Path, data: Path, final: Path) -> list[dict] | None:
    """Where the hearing stops: the order-free hearing mAP of every validation scene after each stage of the
    curriculum (each stage's `final/`), beside chance → [{"stage", "steps", "hearing_mAP", "chance"}], written to
    `eval/curve.json`; None for a dataset without every validation question (built before `val_all.jsonl`)."""
    from pal.common.safe_write import atomic_write_json
    from pal.data.manifest import read_questions
    from pal.eval.hearing import hearing_metrics, hearing_scores
    from pal.inference.audio_llm import AudioLLM

    results = out / "eval" / "curve.json"
    if results.is_file():
        return json.loads(results.read_text())
    if not (data / "val_all.jsonl").is_file():
        return None
    say(f"[5/6] hearing after each stage: the validation scenes ({data / 'val_all.jsonl'})")
    examples = [e for e in read_questions(data / "val_all.jsonl") if e.task == "classify"]
    if not examples:
        return None
    curve, steps = [], 0
    for stage in sorted(final.parent.parent.glob("stage*/final")):
        log = stage.parent / "log.jsonl"
        ends = [json.loads(line) for line in log.read_text().splitlines() if '"event": "end"' in line]
        steps += ends[-1]["step"] if ends else 0
        found = hearing_metrics(hearing_scores(AudioLLM.from_pretrained(stage), examples)).get("classify")
        if found is None:  # no class sounds in any validation scene
            return None
        found = found["hearing_mAP"]
        curve.append({"stage": stage.parent.name, "steps": steps, "hearing_mAP": found["value"],
                      "ci95": found["ci95"], "chance": found["chance"]})
    atomic_write_json(results, curve)
    return curve


# The fit check's verdict: training scenes below the classification goal's exact-set target are not learned; a test
# score this far below the training one is not carried over (80 scenes each: about the width of either's interval).
FIT_LEARNED, FIT_GAP = 0.60, 0.15


def fit_sentence(fit: dict, result: dict) -> str:
    """The fit check in one sentence: the exact label set on training scenes beside the test's, and what the two
    together say."""
    from pal.eval.report import metric_cell

    trained = fit["tasks"]["classify"]["metrics"]["exact_set"]
    held_out = result["tasks"]["classify"]["metrics"]["exact_set"]
    if trained["value"] < FIT_LEARNED:
        verdict = ("the model has not learned even the scenes it trained on: the recipe underfits, so more or better "
                   "training comes before more data")
    elif trained["value"] - held_out["value"] >= FIT_GAP:
        verdict = "it learned its training scenes but carries less of it to recordings it never heard"
    else:
        verdict = "it learned its training scenes and carries that to recordings it never heard"
    said = (f"Fit: the exact label set of {trained['n']} training scenes {metric_cell(trained)}, of the held-out test "
            f"scenes {metric_cell(held_out)}; {verdict}.")
    heard = [found["tasks"]["classify"]["metrics"].get("hearing_mAP") for found in (fit, result)]
    if all(heard):  # the same order-free score on both: what the model learned against what it carries over
        said += (f" The order-free hearing mAP of the training scenes {metric_cell(heard[0])}, of the test scenes "
                 f"{metric_cell(heard[1])} (chance {heard[0]['chance']:.3f} and {heard[1]['chance']:.3f}).")
    return said


def probe_sentence(result: dict) -> str:
    """The order-free hearing score as a fraction of the encoders' probe ceiling, beside its controls; then the
    listed labels' fraction."""
    from pal.eval.report import metric_cell

    entry = result["tasks"].get("classify", {})
    hearing = entry.get("metrics", {}).get("hearing_probe_fraction")
    if not hearing:
        return "The probe ceiling was not measured."
    controls = [f"{label} {entry[key]['hearing_probe_fraction']['value']:.3f}"
                for key, label in (("mismatched_audio", "with another clip's audio"),
                                   ("text_only_trained", "the text-only trained model"))
                if "hearing_probe_fraction" in entry.get(key, {})]
    said = (f"Hearing, order-free (each class's likelihood as the answer, average precision over the test scenes): "
            f"the model's mAP {hearing['model']:.3f} against chance {hearing['chance']:.3f} (each class's prevalence) "
            f"and the ceiling {hearing['ceiling']:.3f} (the {hearing['encoder']} {hearing['readout']} read-out of the "
            f"encoders' features, tuned by cross-validation on the training scenes): {metric_cell(hearing)} of the "
            f"ceiling's margin over chance" + (f" ({'; '.join(controls)})." if controls else "."))
    listed = entry.get("metrics", {}).get("probe_fraction")
    if listed:
        said += (f" Its generated labels reach a balanced accuracy of {listed['model']:.3f} against the ceiling's "
                 f"{listed['probe']:.3f}: {metric_cell(listed)} of its margin over 0.5.")
    return said


def _gap(out: Path) -> str:
    ends = [json.loads(line) for stage in sorted((out / "curriculum").glob("stage*/log.jsonl"))
            for line in stage.read_text().splitlines() if '"event": "end"' in line]
    gaps = [f"{e['reliance_gap']:+.3f}" for e in ends if "reliance_gap" in e]
    return " → ".join(gaps) + " nats per answer token over the stages" if gaps else "not measured"


def goals(result: dict) -> list[list[str]]:
    rows = []
    for task, name, what, target, direction, source in GOALS:
        metric = result["tasks"].get(task, {}).get(source, {}).get(name)
        if not metric or "value" not in metric:
            rows.append([what, f"{direction} {target}", "not measured", "–"])
            continue
        value = metric["value"]
        met = value >= target if direction == "≥" else value <= target
        rows.append([what, f"{direction} {target}", f"{value:.3f}", "met" if met else f"missed by {abs(target - value):.3f}"])
    return rows


def examples(out: Path, data: Path, count: int = 8) -> list[list[str]]:
    """A few test answers beside the truth: the clip, the question, the true caption, the model's answer, its answer
    with another clip's audio, and the text-only trained baseline's answer."""
    from pal.data.manifest import read_questions
    from pal.eval.evaluate import read_rows

    with_audio = read_rows(out / "eval" / "results.answers.jsonl")
    mismatched = read_rows(out / "eval" / "results.mismatched.jsonl")
    text_only = read_rows(out / "eval" / "results.text_only.jsonl")
    # The manifest's own reader: its audio paths are absolute, as in the answer files.
    truth = {e.audio: e.answer for e in read_questions(data / "test.jsonl") if e.task == "caption"}
    picked = [r for r in with_audio.values() if r["task"] in ("caption", "qa", "asr")]
    rows = []
    for r in picked[:: max(1, len(picked) // count)][:count]:
        rows.append([Path(r["audio"]).name, r["question"].replace("<audio>\n", ""), truth.get(r["audio"], ""),
                     r["reference"] or "", r["answer"], mismatched.get(r["id"], {}).get("answer", ""),
                     text_only.get(r["id"], {}).get("answer", "")])
    return rows


def step_export(out: Path, final: Path) -> Path:
    """The trained model as one folder to take away (`pal export`): weights, tokenizer, encoders, model card."""
    import shutil

    from pal.inference.export import export_model

    model = out / "model"
    if model.is_dir() and model.stat().st_mtime >= (final / "config.json").stat().st_mtime:
        say(f"[6/6] export: {model} is there")
        return model
    shutil.rmtree(model, ignore_errors=True)  # an export of an earlier training of this run
    say(f"[6/6] export: the trained model, its encoders and its model card into {model}")
    return export_model(final, model)


def step_report(out: Path, data: Path, result: dict, fit: dict, final: Path, preset_name: str, seconds: float,
                curve: list[dict] | None = None, times: dict[str, float] | None = None):
    from pal.eval.report import Image, Section, Table, metric_cell, metrics_table, reliance_table, write_report

    card = json.loads((data / "card.json").read_text())
    curves = sorted((out / "curriculum").glob("stage*/loss.png"))
    sections = [
        Section("What the model hears", [
            f"Preset {preset_name}: {card['clips']} scenes ({card['scenes']}) of real recorded sounds "
            f"({len(card['classes'])} classes, several recordings each: see data/card.md), speech and sox tones; "
            "SSLAM pre-trained here on the training clips; SmolLM2-135M-Instruct trained through the "
            "three-stage curriculum with PAL (SSLAM via LAL from layer 4, Whisper-base via PLITS), each clip's "
            "questions packed into one sequence. The test split's scenes hold only recordings never heard in "
            "training, and half of them a pair of classes never heard together. Beside every score, three controls: "
            "the same model asked each question with "
            "another clip's audio (a model that hears drops towards chance there); the text-only trained baseline, "
            "the same curriculum on the same questions without audio (the answers' prior, reached without hearing); "
            "and the model with the audio removed (which it never saw in training, so it may babble). "
            "The last stage's audio-reliance gap (validation loss with another clip's audio "
            f"minus with its own): {_gap(out)}. "
            f"{fit_sentence(fit, result)} {probe_sentence(result)} Everything took {seconds / 60:.1f} minutes.",
            metrics_table(result)]),
        Section("Goals", [Table(["goal", "target", "measured", "status"], goals(result))]),
        Section("Which answers use the audio", [
            ("Each test question's gold answer scored teacher-forced (nats per answer token) with its clip's own audio "
             "and with another clip's; the gap is the second minus the first. A task whose gap is near zero is "
             "answered from the question and the data's prior, however good its score."),
            reliance_table(result["reliance"])] if result.get("reliance") else ["not measured"]),
        Section("Training", [Image(p, p.parent.name) for p in curves] + ([
            "The order-free hearing mAP of the validation scenes after each stage (each class's likelihood as the "
            "answer, ranked over the scenes; chance is each class's prevalence): where the model's hearing grows "
            "and where it stops.",
            Table(["after stage", "steps so far", "validation hearing mAP [95% CI]", "chance"],
                  [[c["stage"], str(c["steps"]), metric_cell({"value": c["hearing_mAP"], "ci95": c["ci95"]}),
                    f"{c['chance']:.3f}"] for c in curve])] if curve else [])),
        *([Section("Where the time went", [
            "Each step's wall-clock time, over every run that worked in this folder (a rerun that finds a step done "
            "adds about none; timings.json holds the same).",
            Table(["step", "minutes"], [[name, f"{t / 60:.1f}"] for name, t in times.items()])])] if times else []),
        Section("Examples from the test split", [Table(["clip", "question", "what it holds", "gold", "answer",
                                                        "with another clip's audio", "text-only trained model"],
                                                       examples(out, data))]),
        Section("Ask it yourself", [f"pal infer --model {final} --audio {data / 'clips' / 'scene00000.wav'} "
                                    "--prompt \"Describe what you hear in one sentence.\""]),
    ]
    return write_report(out, "PAL demo", sections)


class StepTimes(dict):
    """{step: seconds} spent on each step of `pal demo` in one output folder, over every run that worked on it: each
    step timed as it runs and added to what earlier runs recorded, so a rerun that finds a step done (about no time)
    or a resumed one (the rest of the work) leaves the time the work took."""

    @classmethod
    def of_folder(cls, path: Path) -> StepTimes:
        """The times recorded in `path` (timings.json) by earlier runs; none when there is no readable record."""
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        return cls({k: float(v) for k, v in recorded.items() if isinstance(v, (int, float))}
                   if isinstance(recorded, dict) else {})

    def __call__(self, name: str, step, *args, **kwargs):
        started = time.time()
        try:
            return step(*args, **kwargs)
        finally:
            self[name] = self.get(name, 0.0) + time.time() - started


def run_demo(args) -> int:
    from pal.common.safe_write import atomic_write_json

    start = time.time()
    trained_model.cache_clear()  # a model folder retrained since an earlier run in this process is read again
    preset = PRESETS[args.preset]
    out = Path(args.out)
    timed = StepTimes.of_folder(out / "timings.json")
    data = timed("dataset", step_data, out, preset, args.seed)
    encoder = timed("SSLAM pre-training", step_sslam, out, data, preset)
    encoders = ensemble_config(encoder)
    features = timed("features", step_features, out, data, encoders)
    final = timed("curriculum", step_curriculum, out, data, preset, encoders, features, nproc=args.nproc)
    text_only = timed("text-only baseline", step_curriculum, out, data, preset, encoders, features, text_only=True,
                      nproc=args.nproc)
    probe = timed("probe", step_probe, out, data, encoders, features)
    result = timed("evaluation", step_eval, out, data, final, preset, text_only, workers=args.nproc, probe=probe)
    fit = timed("fit check", step_fit, out, data, final, preset)
    curve = timed("stage curve", step_curve, out, data, final)
    model = timed("export", step_export, out, final)
    timed["total"] = timed.get("total", 0.0) + time.time() - start
    atomic_write_json(out / "timings.json", dict(timed))
    md, page = step_report(out, data, result, fit, final, args.preset, timed["total"], curve, timed)
    say("[6/6] report: " + f"{md} and {page}")
    say("")
    from pal.eval.report import metrics_table

    table = metrics_table(result)
    widths = [max(len(str(c)) for c in col) for col in zip(table.header, *table.rows)]
    for row in [table.header] + table.rows:
        say("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    say("\n" + fit_sentence(fit, result))
    say(f"\nThe model, to take away: {model} (its card: {model / 'README.md'})")
    say(f"Ask the model: pal infer --model {model} --audio {data / 'clips' / 'scene00000.wav'} "
        "--prompt \"Describe what you hear in one sentence.\"")
    return 0

