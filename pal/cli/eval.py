"""`pal eval score` (every task's metric with its interval, beside its controls) and `pal eval gap` (the
teacher-forced audio-reliance gap and the order-free hearing score, nothing generated)."""

import sys

from .model_options import add_model_arguments, decoding, load_model


def register(commands) -> None:
    evaluate = commands.add_parser("eval", help="score a trained model on a manifest, with its controls beside it")
    which = evaluate.add_subparsers(dest="eval", required=True)
    score = which.add_parser("score", help="answer every question, score each task with a 95%% interval, beside the "
                                           "same model with another clip's audio, with the audio removed, and the "
                                           "text-only trained baseline")
    _add_inputs(score, out_help="results JSON (answers go beside it, resumable)")
    score.add_argument("--no-baseline", action="store_true",
                       help="skip the controls (another clip's audio, audio removed, the reliance gap)")
    score.add_argument("--text-only-model", help="a model trained by the same curriculum with the audio removed from "
                       "its data: asked the same questions without audio, it is the prior a model reaches unheard")
    score.add_argument("--workers", type=int, default=1,
                       help="2: a second process answers the controls beside this one (CPU; each with half the "
                            "threads: faster on 2 cores)")
    score.add_argument("--export", action="append", default=[], metavar="BENCHMARK",
                       help="write the predictions file BENCHMARK's own scorer reads beside --out (mmau, mmar, "
                            "air-bench, librispeech, clotho-aqa; repeatable), for the answers and each control")
    score.set_defaults(run=run_score)

    gap = which.add_parser("gap", help="the teacher-forced scores only, nothing generated: the audio-reliance gap (each "
                                       "gold answer's loss with its own and with another clip's audio) per task, and "
                                       "the order-free hearing score (classes' mAP, yes/no AUC) beside its controls: "
                                       "the quick way to compare two recipes")
    _add_inputs(gap, out_help="results JSON")
    gap.add_argument("--tasks", help="only these tasks, comma-separated (e.g. classify)")
    for parser in (score, gap):
        parser.add_argument("--probe", help="`pal probe --test MANIFEST --out PROBE.json`'s result on this manifest's "
                            "clips: classification is also scored as a fraction of the encoders' probe ceiling")
    gap.add_argument("--text-only-model", help="the text-only trained model: its hearing score (asked without audio) "
                     "is the prior, beside the model's")
    gap.set_defaults(run=run_gap)


def _add_inputs(parser, out_help: str) -> None:
    add_model_arguments(parser)
    parser.add_argument("--manifest", required=True, help="JSONL with gold answers and a `task` per line")
    parser.add_argument("--out", required=True, help=out_help)


def read_probe(path: str) -> dict:
    """`pal probe --out`'s JSON, checked for what the fraction needs (each test clip's predicted labels)."""
    import json
    from pathlib import Path

    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--probe {path}: cannot be read as `pal probe --out` JSON ({err}).") from None
    if "test" not in found or any("predicted" not in e or "scores" not in e for e in found.get("encoders", {}).values()):
        raise ValueError(f"--probe {path}: no per-clip predictions and scores (keys 'test', encoders.*.predicted and "
                         "encoders.*.scores); it was written by an older `pal probe`: run `pal probe ... --test "
                         "MANIFEST --out` again.")
    return found


def run_score(args) -> int:
    from pal.eval.evaluate import evaluate
    from pal.eval.report import result_lines

    probe = read_probe(args.probe) if args.probe else None
    text_only = load_model(args, args.text_only_model) if args.text_only_model else None
    llm = load_model(args)
    result = evaluate(llm, args.manifest, args.out, decoding(args), args.batch_size,
                      baseline=not args.no_baseline, text_only=text_only, workers=args.workers,
                      export=tuple(args.export), probe=probe)
    print("\n".join(result_lines(result)))
    print(f"results: {args.out}")
    for name, files in result.get("exports", {}).items():
        print(f"{name} predictions for its official scorer: {files['with_audio']} (controls: "
              f"{', '.join(path for key, path in files.items() if key != 'with_audio') or 'none'})")
    _log_to_training_run(llm, result)
    for example_id, why in result["skipped"].items():
        print(f"pal: skipped {example_id}: {why}", file=sys.stderr)
    return 0


def run_gap(args) -> int:
    from pal.eval.reliance import reliance_on_manifest
    from pal.eval.report import gap_lines, hearing_lines

    tasks = args.tasks.split(",") if args.tasks else None
    probe = read_probe(args.probe) if args.probe else None
    text_only = load_model(args, args.text_only_model) if args.text_only_model else None
    llm = load_model(args)
    result = reliance_on_manifest(llm, args.manifest, args.out, tasks, args.batch_size, text_only, probe)
    print("\n".join(gap_lines(result["reliance"]) + hearing_lines(result["hearing"])))
    print(f"results: {args.out}")
    _log_to_training_run(llm, result)
    return 0


def _log_to_training_run(llm, result: dict) -> None:
    """The scores go to the experiment trackers of the run that trained the model, when it had any (`report_to`)."""
    from pal.training.trackers import log_eval_to_training_run

    if llm.folder is None:
        return
    try:
        names = log_eval_to_training_run(llm.folder, result)
    except Exception as err:  # the results are written: a tracker that cannot be reached here must not undo that
        print(f"pal eval: the scores were not logged to the training run's trackers ({type(err).__name__}: {err}); "
              "the results file holds them.", file=sys.stderr)
        return
    if names:
        print(f"logged under eval/ to the training run's trackers: {', '.join(names)}")
