"""`pal`: the one command-line entry point (DESIGN.md "Commands")."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
from pathlib import Path

from common.safe_write import OutputError, atomic_write_json
from eval.metrics.captioning import MetricUnavailable

# `pal bench NAME`: each module has `add_arguments(parser)` and `main(args)`.
BENCHMARKS = {
    "efficiency": ("bench.efficiency", "PLITS vs LAL vs PAL: train step, memory, prefill, decode"),
    "encoders": ("bench.encoders", "fbank vs ASTFeatureExtractor, SSLAM clips/s, feature cache"),
    "sslam": ("bench.sslam_pretrain", "SSLAM pre-training throughput (clips/s) of one training step"),
    "curriculum": ("bench.curriculum", "one curriculum step: PLITS/LAL/PAL, with/without cache"),
    "data": ("bench.data", "peak memory of a rank reading a 1M-row manifest through DataLoader workers"),
    "inference": ("bench.inference", "questions/s for 1 vs 8 questions per clip (one encoding shared)"),
    "serve": ("bench.serve", "pal serve: requests/s batched vs one at a time, the same answers"),
}


def _demo(args) -> int:
    from workflows.demo import run_demo

    args.out = args.out or ("runs/demo" if args.preset == "full" else f"runs/demo-{args.preset}")
    if args.nproc is None:
        from training.launch import default_nproc

        args.nproc = default_nproc()
    return run_demo(args)


def _serve(args) -> int:
    import os

    from serving.app import serve

    from serving.requests import RequestLimits

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("PAL_API_KEY"),
          model_id=args.name, max_audio_seconds=args.max_audio_seconds, cache_clips=args.cache_clips,
          max_request_mb=args.max_request_mb, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
          limits=RequestLimits(max_stop_chars=args.max_stop_chars, max_prompt_chars=args.max_prompt_chars))
    return 0


def _env(args) -> int:
    from training.engine import machine_report

    for key, value in machine_report().items():
        print(f"{key:22s} {value}")
    return 0


def _probe(args) -> int:
    from eval.probe import run_probe
    from eval.report import metric_cell

    result = run_probe(args.features, args.encoders, args.manifest, args.test, args.seed)
    print(f"linear probe: {result['train_clips']} training clips, {result['test_clips']} test clips, "
          f"{len(result['classes'])} classes")
    for name, scores in result["encoders"].items():
        print(f"{name:14s} balanced accuracy {metric_cell(scores['balanced_accuracy'])}   mAP {metric_cell(scores['mAP'])}")
        for label, cell in scores["classes"].items():
            one_sided = math.isnan(cell["value"])  # every test clip has the label, or none has
            print(f"    {label:28s} {'one-sided test set' if one_sided else metric_cell(cell)}"
                  f"   ({cell['positives']} positives)")
    if args.out:
        atomic_write_json(args.out, result)
        print(f"results: {args.out}")
    return 0


def _sslam_extract(args) -> int:
    from encoders.sslam.extract import extract_to_npz

    shapes, bad = extract_to_npz(args.checkpoint, args.audio, args.out, layer=args.layer, pool=args.pool,
                                 long_audio=args.long_audio, trust_checkpoint=args.trust_checkpoint)
    if shapes:
        print(f"wrote {len(shapes)} arrays to {args.out} (e.g. {next(iter(shapes.items()))})")
    for problem in bad.values():
        print(f"pal: skipped {problem}", file=sys.stderr)
    if bad:
        print(f"pal: error: {len(bad)} of {len(args.audio)} file(s) skipped"
              + ("; nothing written." if not shapes else f"; the other {len(shapes)} are in {args.out}."),
              file=sys.stderr)
        return 1
    return 0


def _part(text: str) -> tuple[int, int]:
    """`--shard i/n` → (i, n); the range is checked by encoders.feature_cache.manifest_part."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected i/n, e.g. 0/4 for the first of 4 parts.")
    return int(match[1]), int(match[2])


def _print_cache(out, stats: dict, action: str) -> None:
    print(f"feature cache {out}: {stats['cached']} clips cached ({stats['added']} {action}), "
          f"{stats['bad']} unreadable (listed under \"bad\" in {Path(out) / 'index.json'})")


def _features(args) -> int:
    from common.manifest_lines import audio_paths
    from encoders.ensemble import EnsembleConfig
    from encoders.feature_cache import FeatureCache, manifest_part, part_folder

    if not (args.manifest and args.config and args.out):
        raise ValueError("`pal features` needs --manifest, --config and --out (or `pal features merge --out DIR "
                         "PART_DIR ...` to join parts).")
    audio, out = audio_paths(args.manifest), Path(args.out)
    if args.shard:
        audio, out = manifest_part(audio, *args.shard), part_folder(args.out, *args.shard)
    stats = FeatureCache(out, EnsembleConfig.from_yaml(args.config)).build(audio, batch_size=args.batch_size)
    _print_cache(out, stats, "new")
    if args.shard:
        print(f"part {args.shard[0]}/{args.shard[1]} done; once every part is, join them: "
              f"pal features merge --out {args.out} {args.out}/part-*-of-{args.shard[1]}")
    return 0


def _features_merge(args) -> int:
    from encoders.feature_cache import merge_caches

    _print_cache(args.merged, merge_caches(args.merged, args.parts), "merged in")
    return 0


def _sslam_pretrain(args) -> int:
    from recipes.sslam_pretrain import PretrainConfig, SSLAMPretrainRecipe

    config = PretrainConfig.from_yaml(args.config)
    if args.manifest:
        config.data.manifest = args.manifest
    if args.stage:
        config.objective.stage = args.stage
    if args.init:
        config.init = args.init
    config.trust_checkpoint = config.trust_checkpoint or args.trust_checkpoint
    recipe = SSLAMPretrainRecipe(config, args.out, resume=args.resume, restart=args.restart, max_steps=args.max_steps)
    result = recipe.run()
    if recipe.rank == 0:
        print(f"sslam pre-training done: {result}")
    return 0


def _sslam_export(args) -> int:
    from recipes.sslam_pretrain import export_student

    print(f"exported the student encoder to {export_student(args.checkpoint, args.out)}")
    return 0


def _train(args) -> int:
    from recipes.curriculum.command import arguments, run

    if args.nproc > 1:
        if "RANK" in os.environ:
            raise SystemExit("pal train --nproc: already running under a launcher (RANK is set); start `pal train "
                             "--nproc N` alone, or torchrun without --nproc.")
        from training.launch import launch

        return launch("recipes.curriculum", arguments(args), args.nproc)
    return run(args)


def _decoding(args):
    from inference.audio_llm import Decoding

    return Decoding(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                    top_p=args.top_p, num_beams=args.num_beams, seed=args.seed)


def _load_llm(args):
    from inference.audio_llm import AudioLLM

    return AudioLLM.from_pretrained(args.model, encoders=args.encoders, device_map=args.device_map)


def _infer(args) -> int:
    if bool(args.manifest) == bool(args.audio):
        raise ValueError("give --audio F --prompt \"...\" for one question, or --manifest M --out R.jsonl for many.")
    if args.manifest and not args.out:
        raise ValueError("--manifest needs --out R.jsonl (answers are appended there; a rerun resumes).")
    if args.audio and not args.prompt:
        raise ValueError("--audio needs --prompt \"your question\".")
    llm = _load_llm(args)
    if args.audio:
        from transformers import TextStreamer

        llm.ask(args.audio, args.prompt, _decoding(args),
                streamer=TextStreamer(llm.processor.tokenizer, skip_prompt=True, skip_special_tokens=True))
        return 0
    from eval.evaluate import run_manifest

    summary = run_manifest(llm, args.manifest, args.out, _decoding(args), args.batch_size)
    print(f"{summary['answered']} answers in {args.out} ({summary['new']} new)")
    for example_id, why in summary["skipped"].items():
        print(f"pal: skipped {example_id}: {why}", file=sys.stderr)
    return 1 if summary["skipped"] else 0


def _print_gap(reliance: dict) -> None:
    gap = reliance["gap"]
    print(f"audio-reliance gap (answer loss with another clip's audio minus with its own, nats/token): "
          f"{gap['value']:+.4f} [{gap['ci95'][0]:+.4f}, {gap['ci95'][1]:+.4f}], n={reliance['n']}")
    for task, part in reliance.get("by_task", {}).items():
        low, high = part["gap"]["ci95"]
        print(f"  {task:9s} answer loss {part['answer_loss']:.4f}, with another clip's audio "
              f"{part['answer_loss_mismatched']:.4f}: gap {part['gap']['value']:+.4f} [{low:+.4f}, {high:+.4f}], "
              f"n={part['n']}")


def _gap_only(args) -> int:
    """`pal eval --gap-only`: the teacher-forced reliance gap alone, nothing generated (eval/reliance.py)."""
    from eval.reliance import reliance_on_manifest

    tasks = args.tasks.split(",") if args.tasks else None
    _print_gap(reliance_on_manifest(_load_llm(args), args.manifest, args.out, tasks, args.batch_size)["reliance"])
    print(f"results: {args.out}")
    return 0


def _eval(args) -> int:
    from eval.evaluate import evaluate
    from eval.report import CONTROLS

    if args.gap_only:
        return _gap_only(args)
    if args.tasks:
        raise ValueError("--tasks goes with --gap-only; `pal eval` answers every task of the manifest.")
    text_only = None
    if args.text_only_model:
        from inference.audio_llm import AudioLLM

        text_only = AudioLLM.from_pretrained(args.text_only_model, encoders=args.encoders)
    result = evaluate(_load_llm(args), args.manifest, args.out, _decoding(args), args.batch_size,
                      baseline=not args.no_baseline, text_only=text_only, workers=args.workers)
    for task, entry in result["tasks"].items():
        for name, metric in entry["metrics"].items():
            if isinstance(metric, dict) and "value" in metric:
                low, high = metric["ci95"]
                controls = "".join(f"   {label}: {entry[key][name]['value']:.4f}" for key, label in CONTROLS.items()
                                   if "value" in entry.get(key, {}).get(name, {}))
                print(f"{task:9s} {name:16s} {metric['value']:.4f}  [{low:.4f}, {high:.4f}]  n={metric['n']}{controls}")
            elif isinstance(metric, dict) and "unavailable" in metric:
                print(f"{task:9s} {name:16s} unavailable: {metric['unavailable']}")
    if result.get("reliance"):
        _print_gap(result["reliance"])
    print(f"results: {args.out}")
    for example_id, why in result["skipped"].items():
        print(f"pal: skipped {example_id}: {why}", file=sys.stderr)
    return 0


def _compare(args) -> int:
    from workflows.compare import compare, smoke_setup

    out = Path(args.out)
    if args.preset == "smoke":
        configs, manifests = smoke_setup(out / "smoke")
        seeds, bench = args.seeds or 2, args.bench_preset or "tiny"
    else:
        if not (args.configs and args.manifests):
            raise ValueError("give --configs A.yaml B.yaml ... and --manifests M.jsonl ... (or --preset smoke).")
        configs, manifests = [Path(c) for c in args.configs], [Path(m) for m in args.manifests]
        seeds, bench = args.seeds or 3, args.bench_preset or "quick"
    record = compare(configs, seeds, out, manifests, None if bench == "none" else bench, args.batch_size,
                     args.max_new_tokens, args.nproc)
    failed = [f"{c} seed {s}" for c, runs in {**record["runs"], "text-only baseline": record["text_only"]}.items()
              for s, r in runs.items() if r["status"] != "done"]
    print(f"report: {record['report'][0]} and {record['report'][1]}")
    for run in failed:
        print(f"pal: run failed: {run} (see {out / 'compare.json'})", file=sys.stderr)
    return 1 if failed else 0


def _data_demo(args) -> int:
    from data.demo_dataset import build

    card = build(args.out, seed=args.seed, clips=args.clips, seconds=args.seconds)
    print(f"demo dataset in {args.out}: {card['scenes']} scenes; files {card['files']}; see {args.out}/card.md")
    return 0


def _data_convert(args) -> int:
    from data.converters import convert

    summary = convert(args.format, args.input, args.out, args.audio_dir or ".", check_audio=not args.no_check_audio,
                      ontology=args.ontology, pattern=args.audio_pattern)
    print(f"{summary['converted']} examples written to {summary['out']}; {summary['rejected']} rows skipped")
    for reason, count in summary["reasons"].items():
        print(f"  {count} × {reason}")
    if summary["skipped"]:
        print(f"  each skipped row, where it stands and why: {summary['skipped']}")
    return 0 if summary["converted"] else 1


def _add_model_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a trained model folder (a stage's final/)")
    parser.add_argument("--encoders", help="ensemble YAML, for a folder without encoders.json")
    parser.add_argument("--device-map", help='e.g. "auto": spread a large LLM over the GPUs (accelerate)')
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)


def build_parser(bench_name: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pal", description="Audio LLMs the PAL way (LAL, PLITS and the PAL hybrid).")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the main job end to end on the embedded default LLM")
    demo.add_argument("--preset", choices=["smoke", "full", "long"], default="full",
                      help="smoke: a few minutes; full (make demo): about 30 minutes on 2 CPU cores; long: the full "
                           "demo with each training stage twice as long, about 55 minutes, a model that hears more")
    demo.add_argument("--out", default=None,
                      help="output folder (default runs/demo, runs/demo-smoke or runs/demo-long); reruns resume")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--nproc", type=int, default=None,
                      help="training ranks (default: 2 on a CPU with 2 or more cores, where 2 one-thread ranks train "
                           "faster than one process; 1 otherwise); the global batch stays the config's")
    demo.set_defaults(func=_demo)

    probe = commands.add_parser("probe", help="linear-probe ceiling of each encoder on a manifest's labels")
    probe.add_argument("--features", required=True, help="a feature cache folder (`pal features`)")
    probe.add_argument("--encoders", required=True,
                       help="the ensemble YAML the cache was built with, or a trained model folder (its encoders.json)")
    probe.add_argument("--manifest", required=True, help="clips with classification labels (fit on these)")
    probe.add_argument("--test", help="held-out clips to score on (default: 20%% of --manifest's clips)")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--out", help="write the results as JSON here")
    probe.set_defaults(func=_probe)

    env = commands.add_parser("env", help="this machine's numeric path: CPU, bf16/AMX, what precision auto picks")
    env.set_defaults(func=_env)

    train = commands.add_parser("train", help="the three-stage curriculum on DeepSpeed")
    from recipes.curriculum.command import add_arguments

    add_arguments(train)
    train.add_argument("--nproc", type=int, default=1,
                       help="train in N local ranks under torchrun (GPUs, or CPU processes sharing the cores: on 2 "
                            "cores, 2 ranks of 1 thread are faster than one process); batch_size stays per rank")
    train.set_defaults(func=_train)

    infer = commands.add_parser("infer", help="ask a trained model about audio (one question, or a manifest)")
    _add_model_arguments(infer)
    infer.add_argument("--audio", help="an audio file")
    infer.add_argument("--prompt", help="the question")
    infer.add_argument("--manifest", help="a JSONL manifest of questions (answers need not be there)")
    infer.add_argument("--out", help="answers JSONL for --manifest (resumable)")
    infer.set_defaults(func=_infer)

    evaluate = commands.add_parser("eval", help="score a trained model on a manifest, with its controls beside it")
    _add_model_arguments(evaluate)
    evaluate.add_argument("--manifest", required=True, help="JSONL with gold answers and a `task` per line")
    evaluate.add_argument("--out", required=True, help="results JSON (answers go beside it, resumable)")
    evaluate.add_argument("--no-baseline", action="store_true",
                          help="skip the controls (another clip's audio, audio removed, the reliance gap)")
    evaluate.add_argument("--text-only-model", help="a model trained by the same curriculum with the audio removed from "
                          "its data: asked the same questions without audio, it is the prior a model reaches unheard")
    evaluate.add_argument("--workers", type=int, default=1,
                          help="2: a second process answers the controls beside this one (CPU; each with half the "
                               "threads: faster on 2 cores)")
    evaluate.add_argument("--gap-only", action="store_true",
                          help="only the teacher-forced audio-reliance gap (each gold answer's loss with its own and "
                               "with another clip's audio), per task, nothing generated: the quick way to compare "
                               "two recipes")
    evaluate.add_argument("--tasks", help="with --gap-only: only these tasks, comma-separated (e.g. classify)")
    evaluate.set_defaults(func=_eval)

    server = commands.add_parser("serve", help="a trained model behind an OpenAI-compatible chat API")
    server.add_argument("--model", required=True, help="a trained model folder (a stage's final/)")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (another than loopback needs "
                        "--api-key; default 127.0.0.1)")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--api-key", help="clients must send `Authorization: Bearer KEY` (default: the "
                        "PAL_API_KEY environment variable, else none)")
    server.add_argument("--name", help="the model id clients ask for (default: the run's stage folder name)")
    server.add_argument("--max-audio-seconds", type=float, default=60.0, help="longest clip accepted (default 60)")
    server.add_argument("--cache-clips", type=int, default=64,
                        help="clips kept with their encoder outputs and audio keys/values (default 64)")
    server.add_argument("--max-request-mb", type=float, default=25.0, help="largest request body (default 25)")
    server.add_argument("--max-batch", type=int, default=8, help="requests answered together at most (default 8)")
    server.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="how long a request waits for others to batch with (default 10)")
    server.add_argument("--max-stop-chars", type=int, default=64,
                        help="longest stop string a request may send (default 64; docs/serving.md)")
    server.add_argument("--max-prompt-chars", type=int, default=32000,
                        help="most text, all messages together, a request may send (default 32000)")
    server.set_defaults(func=_serve)

    comparison = commands.add_parser("compare", help="connectors under one curriculum: K seeds, one report")
    comparison.add_argument("--configs", nargs="+", help="curriculum YAMLs (the first is the reference)")
    comparison.add_argument("--manifests", nargs="+", help="test manifests every run is evaluated on")
    comparison.add_argument("--seeds", type=int, help="runs per config (default 3; smoke: 2)")
    comparison.add_argument("--out", required=True, help="folder: runs/, report.md, report.html (reruns resume)")
    comparison.add_argument("--preset", choices=["smoke"], help="smoke: tiny models on tones, four connectors")
    comparison.add_argument("--bench-preset", choices=["tiny", "quick", "full", "none"],
                            help="pal bench efficiency preset for the memory/throughput plots (default quick)")
    comparison.add_argument("--batch-size", type=int, default=8)
    comparison.add_argument("--max-new-tokens", type=int, default=32)
    comparison.add_argument("--nproc", type=int, default=1,
                            help="train each run in N local ranks (torchrun), each taking batch_size / N of every "
                                 "stage (a run folder trained with another N is refused: its stages' hash counts the "
                                 "batch per rank)")
    comparison.set_defaults(func=_compare)

    data = commands.add_parser("data", help="datasets: the demo dataset, converters of public datasets")
    data_commands = data.add_subparsers(dest="data", required=True)
    demo_data = data_commands.add_parser("demo", help="polyphonic scenes of real sounds with known composition")
    demo_data.add_argument("--out", required=True, help="output folder (clips/, manifests, card.md)")
    demo_data.add_argument("--seed", type=int, default=0)
    demo_data.add_argument("--clips", type=int, default=1000, help="number of scenes (80/10/10 train/val/test)")
    demo_data.add_argument("--seconds", type=float, default=4.0, help="length of each scene")
    demo_data.set_defaults(func=_data_demo)
    from data.converters import FORMATS

    converter = data_commands.add_parser("convert", help="a public dataset or a messages file → our manifest")
    converter.add_argument("format", choices=sorted(FORMATS))
    converter.add_argument("input", help="the dataset's CSV / JSON / JSONL")
    converter.add_argument("--out", required=True, help="manifest JSONL to write")
    converter.add_argument("--audio-dir", help="folder holding the audio files (default: the working directory)")
    converter.add_argument("--audio-pattern", help="audio file name from CSV columns, e.g. '{youtube_id}.wav'")
    converter.add_argument("--ontology", help="audioset: ontology.json")
    converter.add_argument("--no-check-audio", action="store_true", help="do not require the audio files to exist")
    converter.set_defaults(func=_data_convert)

    features = commands.add_parser("features", help="precompute frozen-encoder tokens for a manifest")
    features.add_argument("--manifest", help='JSONL with an "audio" path per line (required)')
    features.add_argument("--config", help="encoder ensemble YAML, see configs/encoders/ (required)")
    features.add_argument("--out", help="cache folder, resumes if it exists (required)")
    features.add_argument("--batch-size", type=int, default=8)
    features.add_argument("--shard", type=_part, metavar="i/n",
                          help="build only part i of n (clip k goes to part k mod n) into OUT/part-i-of-n; run each "
                               "part anywhere, then `pal features merge`")
    features.set_defaults(func=_features)
    merge = features.add_subparsers(dest="features", metavar="merge").add_parser(
        "merge", help="join part folders (--shard i/n) into one cache, as one run would have built it; rerun-safe")
    merge.add_argument("--out", required=True, dest="merged", metavar="DIR", help="the merged cache folder (may exist: adds to it)")
    merge.add_argument("parts", nargs="+", metavar="PART_DIR", help="folders written by `pal features --shard i/n`")
    merge.set_defaults(func=_features_merge)

    sslam = commands.add_parser("sslam", help="the SSLAM encoder")
    sslam_commands = sslam.add_subparsers(dest="sslam", required=True)
    extract = sslam_commands.add_parser("extract", help="SSLAM features of audio files into an .npz")
    extract.add_argument("--checkpoint", required=True, help=".pt, .safetensors or a folder of SSLAM weights")
    extract.add_argument("--audio", required=True, nargs="+", help="audio files (any format soundfile reads)")
    extract.add_argument("--out", required=True, help="output .npz; keys are the audio files' stems")
    extract.add_argument("--layer", type=int, default=None, help="hidden state to return (0..depth; default last)")
    extract.add_argument("--pool", choices=["none", "cls", "mean"], default="none")
    extract.add_argument("--long-audio", choices=["truncate", "split"], default="truncate",
                         help="audio over 10.24 s: keep the first window (reference) or encode every window")
    extract.add_argument("--trust-checkpoint", action="store_true",
                         help="allow full unpickling of a .pt that weights_only refuses (only for files you trust)")
    extract.set_defaults(func=_sslam_extract)

    pretrain = sslam_commands.add_parser("pretrain", help="SSLAM / EAT self-supervised pre-training on DeepSpeed")
    pretrain.add_argument("--config", required=True, help="recipe YAML (configs/sslam/*.yaml)")
    pretrain.add_argument("--out", required=True, help="run folder: logs, checkpoints, bad-file reports")
    pretrain.add_argument("--manifest", help='JSONL with an "audio" path per line (overrides data.manifest)')
    pretrain.add_argument("--stage", type=int, choices=[1, 2], help="override objective.stage")
    pretrain.add_argument("--init", help="stage 2: a stage-1 run folder or a released fairseq checkpoint")
    pretrain.add_argument("--trust-checkpoint", action="store_true",
                          help="allow full unpickling of an --init .pt that weights_only refuses (files you trust)")
    pretrain.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    pretrain.add_argument("--restart", action="store_true", help="discard the run folder's checkpoints and start over")
    pretrain.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (schedule unchanged)")
    pretrain.set_defaults(func=_sslam_pretrain)
    export = sslam_commands.add_parser("export", help="a pre-training checkpoint's student as loadable safetensors")
    export.add_argument("--checkpoint", required=True, help="a run folder (its latest checkpoint) or a checkpoint folder")
    export.add_argument("--out", required=True)
    export.set_defaults(func=_sslam_export)

    bench = commands.add_parser("bench", help="benchmarks")
    which = bench.add_subparsers(dest="bench", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        sub = which.add_parser(name, help=help_text)
        if name == bench_name:  # import only the benchmark asked for: each loads torch and models
            benchmark = importlib.import_module(module)
            benchmark.add_arguments(sub)
            sub.set_defaults(func=benchmark.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The `deepspeed` launcher appends --local_rank=N; LOCAL_RANK is in the environment as well, which we use.
    argv = [a for a in argv if not a.startswith(("--local_rank", "--local-rank"))]
    bench_name = argv[1] if len(argv) > 1 and argv[0] == "bench" else None
    args = build_parser(bench_name).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OutputError, MetricUnavailable) as err:  # AudioError, ManifestError: ValueErrors
        print(f"pal: error: {err}", file=sys.stderr)
        return 2

