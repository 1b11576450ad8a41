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
    convert.add_argument("input", help="the dataset's CSV / JSON / JSONL (librispeech: the split's folder; hf: the "
                                       "dataset's folder; wds: the shards' folder or one shard)")
    convert.add_argument("--out", required=True, help="manifest JSONL to write")
    convert.add_argument("--audio-dir", help="folder holding the audio files (default: the working directory; "
                                             "librispeech: the audio lies beside the transcripts)")
    convert.add_argument("--audio-pattern", help="audio file name from CSV columns, e.g. '{youtube_id}.wav'")
    convert.add_argument("--ontology", help="audioset: ontology.json")
    convert.add_argument("--no-check-audio", action="store_true", help="do not require the audio files to exist")
    hub = convert.add_argument_group("hf (a Hugging Face dataset folder: save_to_disk, or the Hub's Parquet/Arrow "
                                     "files) and wds (a folder of WebDataset .tar shards, the text from each sample's "
                                     ".json member): the audio is read in place; name the text one way")
    hub.add_argument("--split", help="the split to convert (default: the only one)")
    hub.add_argument("--audio-column", nargs="+", default=["audio"],
                     help="the column of encoded audio or file names; several (hf): a question about a clip from each, "
                          "in order (wds: the audio member's extension; default flac, wav, mp3, ...)")
    hub.add_argument("--id-column", help="the column of row ids (default: DATASET-SPLIT-ROW)")
    hub.add_argument("--caption-columns", nargs="+", metavar="COLUMN", help="captions (each a row, all references)")
    hub.add_argument("--question-column", help="questions (with --answer-column)")
    hub.add_argument("--answer-column", help="answers to --question-column")
    hub.add_argument("--label-column", help="event labels: a list or a string (classification)")
    hub.add_argument("--transcript-column", help="transcripts (speech recognition)")
    hub.add_argument("--messages-column", help="conversations, [{role, content}, ...]")
    convert.set_defaults(run=run_convert)


def run_demo(args) -> int:
    from pal.data.demo_dataset import build

    card = build(args.out, seed=args.seed, clips=args.clips, seconds=args.seconds)
    print(f"demo dataset in {args.out}: {card['scenes']} scenes; files {card['files']}; see {args.out}/card.md")
    return 0


def run_convert(args) -> int:
    from pal.data.convert import convert, summary_lines

    hub = {key: getattr(args, key) for key in ("split", "id_column", "caption_columns",
                                                "question_column", "answer_column", "label_column",
                                                "transcript_column", "messages_column")}
    if len(args.audio_column) > 1 and args.format != "hf":
        raise ValueError(f"--audio-column {' '.join(args.audio_column)}: several audio columns are read from a Hugging "
                         "Face dataset (hf) only; give one.")
    hub["audio_column"] = args.audio_column[0] if len(args.audio_column) == 1 else args.audio_column
    summary = convert(args.format, args.input, args.out, args.audio_dir or ".", check_audio=not args.no_check_audio,
                      ontology=args.ontology, pattern=args.audio_pattern, **hub)
    print("\n".join(summary_lines(summary)))
    return 0 if summary["converted"] else 1
