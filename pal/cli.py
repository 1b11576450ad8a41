"""`pal`: the one command-line entry point (DESIGN.md "Commands")."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _bench_efficiency(args) -> int:
    from eval import efficiency

    return efficiency.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pal", description="Audio LLMs the PAL way (LAL, PLITS and the PAL hybrid).")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the main job end to end on the embedded default LLM")
    demo.add_argument("--preset", choices=["smoke", "full"], default="full")
    demo.add_argument("--llm", default=None, help="a local Hugging Face causal-LM folder (default: SmolLM2-135M)")
    demo.add_argument("--out", default="runs/demo", help="output folder")
    demo.set_defaults(func=_demo)

    bench = commands.add_parser("bench", help="benchmarks")
    which = bench.add_subparsers(dest="bench", required=True)
    efficiency = which.add_parser("efficiency", help="PLITS vs LAL vs PAL: train step, memory, prefill, decode")
    from eval.efficiency import add_arguments

    add_arguments(efficiency)
    efficiency.set_defaults(func=_bench_efficiency)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"pal: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
