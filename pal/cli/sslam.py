"""`pal sslam extract` (SSLAM features of audio files), `pal sslam pretrain` (the self-supervised pre-training that
produces the encoder) and `pal sslam export` (a pre-training checkpoint's student as loadable weights)."""

import sys


def register(commands) -> None:
    sslam = commands.add_parser("sslam", help="the SSLAM encoder: pre-train, export, extract features")
    which = sslam.add_subparsers(dest="sslam", required=True)

    pretrain = which.add_parser("pretrain", help="SSLAM / EAT self-supervised pre-training on DeepSpeed")
    pretrain.add_argument("--config", required=True, help="recipe YAML: a file, or pal:sslam/NAME.yaml")
    pretrain.add_argument("--out", required=True, help="run folder: logs, checkpoints, bad-file reports")
    pretrain.add_argument("--manifest", help='JSONL with an "audio" path per line (overrides data.manifest)')
    pretrain.add_argument("--stage", type=int, choices=[1, 2], help="override objective.stage")
    pretrain.add_argument("--init", help="stage 2: a stage-1 run folder or a released fairseq checkpoint")
    pretrain.add_argument("--trust-checkpoint", action="store_true",
                          help="allow full unpickling of an --init .pt that weights_only refuses (files you trust)")
    pretrain.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    pretrain.add_argument("--restart", action="store_true", help="discard the run folder's checkpoints and start over")
    pretrain.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (schedule unchanged)")
    pretrain.set_defaults(run=run_pretrain)

    export = which.add_parser("export", help="a pre-training checkpoint's student as loadable safetensors")
    export.add_argument("--checkpoint", required=True, help="a run folder (its latest checkpoint) or a checkpoint folder")
    export.add_argument("--out", required=True)
    export.set_defaults(run=run_export)

    extract = which.add_parser("extract", help="SSLAM features of audio files into an .npz")
    extract.add_argument("--checkpoint", required=True, help=".pt, .safetensors or a folder of SSLAM weights")
    extract.add_argument("--audio", required=True, nargs="+", help="audio files (any format soundfile reads)")
    extract.add_argument("--out", required=True, help="output .npz; keys are the audio files' stems")
    extract.add_argument("--layer", type=int, default=None, help="hidden state to return (0..depth; default last)")
    extract.add_argument("--pool", choices=["none", "cls", "mean"], default="none")
    extract.add_argument("--long-audio", choices=["truncate", "split"], default="truncate",
                         help="audio over 10.24 s: keep the first window (reference) or encode every window")
    extract.add_argument("--trust-checkpoint", action="store_true",
                         help="allow full unpickling of a .pt that weights_only refuses (only for files you trust)")
    extract.set_defaults(run=run_extract)


def run_pretrain(args) -> int:
    from pal.pretraining.config import PretrainConfig
    from pal.pretraining.recipe import SSLAMPretrainRecipe

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


def run_export(args) -> int:
    from pal.pretraining.export import export_student

    print(f"exported the student encoder to {export_student(args.checkpoint, args.out)}")
    return 0


def run_extract(args) -> int:
    from pal.encoders.sslam.extract import extract_to_npz

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
