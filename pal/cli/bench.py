"""`pal bench NAME [options]`: speed and memory measured side by side in one run. Each benchmark module has
`add_arguments(parser)` and `main(args)`; it is imported only when named (each loads torch and models), and parses
its own options."""

import argparse
import importlib

BENCHMARKS = {
    "efficiency": ("pal.bench.efficiency", "PLITS vs LAL vs PAL: train step, memory, prefill, decode"),
    "encoders": ("pal.bench.encoders", "fbank vs ASTFeatureExtractor, SSLAM clips/s, feature cache"),
    "sslam": ("pal.bench.sslam_pretrain", "SSLAM pre-training throughput (clips/s) of one training step"),
    "curriculum": ("pal.bench.curriculum", "one curriculum step: PLITS/LAL/PAL, with/without cache"),
    "data": ("pal.bench.data", "peak memory of a rank reading a 1M-row manifest through DataLoader workers"),
    "length": ("pal.bench.length", "LAL vs PLITS vs PAL from 10 s to 10 min of audio: prefill, decode, memory"),
    "inference": ("pal.bench.inference", "questions/s for 1 vs 8 questions per clip (one encoding shared)"),
    "serve": ("pal.bench.serve", "pal serve: requests/s batched vs one at a time, the same answers"),
    "gpu": ("pal.bench.gpu_check", "the GPU check: CUDA tests, ZeRO-2/3 steps, efficiency at 1B-1.5B dims (make gpu-check)"),
}


def register(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks: measured side by side in one run, ratios printed")
    which = bench.add_subparsers(dest="bench", required=True, metavar="NAME")
    for name, (_, help_text) in BENCHMARKS.items():
        # add_help=False: `pal bench NAME --help` reaches the benchmark's own parser, with its options.
        which.add_parser(name, help=help_text, add_help=False).set_defaults(run=run, passes_on=True)


def run(args) -> int:
    module = importlib.import_module(BENCHMARKS[args.bench][0])
    parser = argparse.ArgumentParser(prog=f"pal bench {args.bench}", description=BENCHMARKS[args.bench][1])
    module.add_arguments(parser)
    return module.main(parser.parse_args(args.rest))
