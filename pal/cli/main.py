"""`pal`: the one command-line entry point (README.md#commands). Each command is a module of this package with
`register(commands)`, which adds its parser and sets `run`; the heavy imports (torch, transformers, DeepSpeed) happen
inside the `run` functions, so `pal --help` answers at once."""

from __future__ import annotations

import argparse
import importlib
import sys

from pal.common.safe_write import OutputError
from pal.eval.metrics.captioning import MetricUnavailable

# In the order of the work: data → features → SSLAM → train → infer / eval → export → serve → compare → bench → demo.
COMMANDS = ["data", "features", "sslam", "train", "infer", "eval", "probe", "export", "serve", "compare", "bench",
            "demo", "configs", "env"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pal", description="Audio LLMs the PAL way: frozen audio encoders joined to "
                                     "a Hugging Face causal LLM by LAL, PLITS or the PAL hybrid.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pal.cli.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The `deepspeed` launcher appends --local_rank=N; LOCAL_RANK is in the environment as well, which we use.
    argv = [a for a in argv if not a.startswith(("--local_rank", "--local-rank"))]
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passes_on", False):  # only `pal bench NAME` hands its options on
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return args.run(args)
    # AudioError and ManifestError are ValueErrors.
    except (ValueError, FileNotFoundError, FileExistsError, OutputError, MetricUnavailable) as err:
        print(f"pal: error: {err}", file=sys.stderr)
        return 2
