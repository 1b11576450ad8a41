"""The curriculum's command-line options and its run, shared by `pal train` and `python -m recipes.curriculum`.

`pal train --nproc N` and `pal demo` start their ranks as `python -m recipes.curriculum ...` under torchrun
(training/launch.py): the recipe's own entry point, so nothing below the command line launches the command line.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one curriculum run (every `pal train` option but --nproc)."""
    parser.add_argument("--config", required=True, help="curriculum YAML (configs/pal/*.yaml)")
    parser.add_argument("--stage", type=int, help="run only this stage (1-based); default: every unfinished stage")
    parser.add_argument("--resume", action="store_true", help="continue each stage from its latest checkpoint")
    parser.add_argument("--restart", action="store_true",
                        help="discard what the run folder holds for the stages being run and train them from the start")
    parser.add_argument("--max-steps", type=int, help="stop each stage after this many steps (schedule unchanged)")
    parser.add_argument("--out", help="run folder (default: the config's `out`)")
    parser.add_argument("--seed", type=int, help="override the config's seed (pal compare trains seeds 0..K-1)")


def arguments(args: argparse.Namespace) -> list[str]:
    """`args` (from `add_arguments`) written back as a command line, for the ranks a launcher starts."""
    argv = ["--config", str(args.config)]
    for flag, value in (("--stage", args.stage), ("--max-steps", args.max_steps), ("--out", args.out),
                        ("--seed", args.seed)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + ["--resume"] * args.resume + ["--restart"] * args.restart


def run(args: argparse.Namespace) -> int:
    """Train the curriculum in this process (one rank of many under a launcher, or the only one)."""
    from .config import CurriculumConfig
    from .recipe import CurriculumRecipe

    config = CurriculumConfig.from_yaml(args.config)
    if args.seed is not None:
        config.seed = args.seed
    recipe = CurriculumRecipe(config, out=args.out, stage=args.stage, resume=args.resume, restart=args.restart,
                              max_steps=args.max_steps, source=args.config)
    for result in recipe.run():
        if recipe.rank == 0:
            print(f"stage {result}", flush=True)
    return 0
