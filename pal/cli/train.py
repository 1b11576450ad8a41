"""`pal train`: the three-stage curriculum on DeepSpeed, in this process or in N local ranks (`--nproc`)."""

import os


def register(commands) -> None:
    from pal.curriculum.command import add_arguments

    train = commands.add_parser("train", help="the three-stage curriculum on DeepSpeed")
    add_arguments(train)
    train.add_argument("--nproc", type=int, default=1,
                       help="train in N local ranks under torchrun (GPUs, or CPU processes sharing the cores: on 2 "
                            "cores, 2 ranks of 1 thread are faster than one process); batch_size stays per rank")
    train.set_defaults(run=run)


def run(args) -> int:
    from pal.curriculum.command import arguments
    from pal.curriculum.command import run as train

    if args.nproc > 1:
        if "RANK" in os.environ:
            raise SystemExit("pal train --nproc: already running under a launcher (RANK is set); start `pal train "
                             "--nproc N` alone, or torchrun without --nproc.")
        from pal.training.launch import launch

        return launch("pal.curriculum", arguments(args), args.nproc)
    return train(args)
