"""The curriculum's command-line options and its run, shared by `pal train` and `python -m pal.curriculum`.

`pal train --nproc N`, `pal demo` and `pal compare --nproc N` start their ranks as `python -m pal.curriculum ...`
under torchrun (training/launch.py): the recipe's own entry point, so nothing below the command line launches the
command line. `train_in_ranks` is that launch for a config built in code (the demo's, compare's seeds).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from copy import deepcopy
from dataclasses import asdict
from pathlib import Path

from pal.common.safe_write import atomic_write_json, disk_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one curriculum run (every `pal train` option but --nproc)."""
    parser.add_argument("--config", required=True,
                        help="curriculum YAML: a file, or pal:curriculum/NAME.yaml (`pal configs list`)")
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


def train_in_ranks(config, nproc: int, source: str | Path, resolved: Path, advice: str = "",
                   on_stage: Callable[[dict], None] | None = None) -> Path:
    """Train `config` (a CurriculumConfig: its `out`, manifests and seed as they should run) in `nproc` local ranks,
    the global batch kept: each rank takes `batch_size // nproc` (ValueError when that does not divide). Finished
    stages are skipped, unfinished ones resumed; a folder trained with another config raises before anything trains
    (the recipe's error, with `advice` appended). The per-rank config is written to `resolved` (what trained, and
    what the ranks read: `python -m pal.curriculum --config RESOLVED --resume` under torchrun, training/launch.py).
    One rank trains in this process, `on_stage` getting each stage's summary. → the last stage's `final/` folder.
    (`pal demo` and `pal compare` train through here.)"""
    from pal.training.launch import launch

    from .recipe import CurriculumRecipe

    config = deepcopy(config)
    for k, stage in enumerate(config.stages):
        if stage.batch_size % nproc:
            raise ValueError(f"{source}: stages[{k}].batch_size {stage.batch_size} does not split into {nproc} ranks; "
                             "choose a number of ranks (--nproc) that divides it.")
        stage.batch_size //= nproc
    recipe = CurriculumRecipe(config, resume=True, source=source)
    try:  # as each of the `nproc` ranks will judge them
        states = [recipe.folder.stage_state(k, resume=True, restart=False, world=nproc)
                  for k in range(len(config.stages))]
    except ValueError as err:
        raise ValueError(f"{err} {advice}".strip()) from None
    final = recipe.folder.stage_dir(len(config.stages) - 1) / "final"
    # The recipe's config, its paths absolute: the ranks resolve relative ones against this file's folder.
    with disk_errors(resolved):
        resolved.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(resolved, asdict(recipe.config))
    if nproc == 1:
        for result in recipe.run():
            if on_stage is not None:
                on_stage(result)
        return final
    if set(states) == {"finished"}:  # what the recipe would say of each, without starting the ranks
        for k in range(len(config.stages)):
            if on_stage is not None:
                on_stage({"stage": k + 1, "skipped": "already finished with this config"})
        return final
    status = launch("pal.curriculum", ["--config", str(resolved.absolute()), "--resume"], nproc)
    if status:
        raise RuntimeError(f"training {config.out} in {nproc} ranks failed (exit status {status}; the ranks' "
                           "errors are above): run it again to resume it, or train in one rank (--nproc 1).")
    return final
