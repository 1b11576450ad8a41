"""`pal infer`: ask a trained model about audio: one question, streamed, or every question of a manifest (resumable)."""

import sys

from .model_options import add_model_arguments, decoding, load_model


def register(commands) -> None:
    infer = commands.add_parser("infer", help="ask a trained model about audio (one question, or a manifest)")
    add_model_arguments(infer)
    infer.add_argument("--audio", action="append",
                       help="an audio file; repeat it to ask about several clips (one `<audio>` each in --prompt, "
                            "in order; put in front where the prompt has none)")
    infer.add_argument("--prompt", help="the question")
    infer.add_argument("--manifest", help="a JSONL manifest of questions (answers need not be there)")
    infer.add_argument("--out", help="answers JSONL for --manifest (resumable)")
    infer.set_defaults(run=run)


def run(args) -> int:
    if bool(args.manifest) == bool(args.audio):
        raise ValueError("give --audio F --prompt \"...\" for one question, or --manifest M --out R.jsonl for many.")
    if args.manifest and not args.out:
        raise ValueError("--manifest needs --out R.jsonl (answers are appended there; a rerun resumes).")
    if args.audio and not args.prompt:
        raise ValueError("--audio needs --prompt \"your question\".")
    llm = load_model(args)
    if args.audio:
        from transformers import TextStreamer

        answer = llm.ask(args.audio if len(args.audio) > 1 else args.audio[0], args.prompt, decoding(args),
                         streamer=TextStreamer(llm.processor.tokenizer, skip_prompt=True, skip_special_tokens=True))
        if not answer.strip():  # a blank line alone would look like a failure
            print("pal: the model's answer is empty (it ended the answer at once).", file=sys.stderr)
        return 0
    from pal.eval.evaluate import run_manifest

    summary = run_manifest(llm, args.manifest, args.out, decoding(args), args.batch_size)
    print(f"{summary['answered']} answers in {args.out} ({summary['new']} new)")
    for example_id, why in summary["skipped"].items():
        print(f"pal: skipped {example_id}: {why}", file=sys.stderr)
    return 1 if summary["skipped"] else 0
