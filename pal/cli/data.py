"""`pal data demo` (the demo dataset) and `pal data convert` (a public dataset or a messages file → our manifest)."""


def register(commands) -> None:
    data = commands.add_parser("data", help="datasets: the demo dataset, converters of public datasets")
    which = data.add_subparsers(dest="data", required=True)
    demo = which.add_parser("demo", help="polyphonic scenes of real sounds with known composition")
    demo.add_argument("--out", required=True, help="output folder (clips/, manifests, card.md)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--clips", type=int, default=1000, help="number of scenes (80/10/10 train/val/test)")
    demo.add_argument("--seconds", type=float, default=4.0, help="length of each scene")
    demo.set_defaults(run=run_demo)

    from pal.data.convert import formats

    convert = which.add_parser("convert", help="a public dataset, a benchmark's release or a messages file → our "
                                               "manifest")
    convert.add_argument("format", choices=sorted(formats()))
    convert.add_argument("input", help="the dataset's CSV / JSON / JSONL (librispeech: the split's folder)")
    convert.add_argument("--out", required=True, help="manifest JSONL to write")
    convert.add_argument("--audio-dir", help="folder holding the audio files (default: the working directory; "
                                             "librispeech: the audio lies beside the transcripts)")
    convert.add_argument("--audio-pattern", help="audio file name from CSV columns, e.g. '{youtube_id}.wav'")
    convert.add_argument("--ontology", help="audioset: ontology.json")
    convert.add_argument("--no-check-audio", action="store_true", help="do not require the audio files to exist")
    convert.set_defaults(run=run_convert)


def run_demo(args) -> int:
    from pal.data.demo_dataset import build

    card = build(args.out, seed=args.seed, clips=args.clips, seconds=args.seconds)
    print(f"demo dataset in {args.out}: {card['scenes']} scenes; files {card['files']}; see {args.out}/card.md")
    return 0


def run_convert(args) -> int:
    from pal.data.convert import convert, summary_lines

    summary = convert(args.format, args.input, args.out, args.audio_dir or ".", check_audio=not args.no_check_audio,
                      ontology=args.ontology, pattern=args.audio_pattern)
    print("\n".join(summary_lines(summary)))
    return 0 if summary["converted"] else 1
