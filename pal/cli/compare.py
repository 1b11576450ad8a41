"""`pal compare`: connectors under one curriculum, K seeds each, evaluated on the same manifests, in one report."""

import sys
from pathlib import Path


def register(commands) -> None:
    comparison = commands.add_parser("compare", help="connectors under one curriculum: K seeds, one report")
    comparison.add_argument("--configs", nargs="+",
                            help="curriculum YAMLs, files or pal:compare/NAME.yaml (the first is the reference)")
    comparison.add_argument("--manifests", nargs="+", help="test manifests every run is evaluated on")
    comparison.add_argument("--seeds", type=int, help="runs per config (default 3; smoke: 2)")
    comparison.add_argument("--out", required=True, help="folder: runs/, report.md, report.html (reruns resume)")
    comparison.add_argument("--preset", choices=["smoke"], help="smoke: tiny models on tones, four connectors")
    comparison.add_argument("--bench-preset", choices=["tiny", "quick", "full", "none"],
                            help="pal bench efficiency preset for the memory/throughput plots (default quick)")
    comparison.add_argument("--batch-size", type=int, default=8)
    comparison.add_argument("--max-new-tokens", type=int, default=32)
    comparison.add_argument("--nproc", type=int, default=1,
                            help="train each run in N local ranks (torchrun), each taking batch_size / N of every "
                                 "stage (a run folder trained with another N is refused: its stages' hash counts the "
                                 "batch per rank)")
    comparison.set_defaults(run=run)


def run(args) -> int:
    from pal.common.typed_config import config_path
    from pal.workflows.compare import compare, smoke_setup

    out = Path(args.out)
    if args.preset == "smoke":
        configs, manifests = smoke_setup(out / "smoke")
        seeds, bench = args.seeds or 2, args.bench_preset or "tiny"
    else:
        if not (args.configs and args.manifests):
            raise ValueError("give --configs A.yaml B.yaml ... and --manifests M.jsonl ... (or --preset smoke).")
        configs, manifests = [config_path(c) for c in args.configs], [Path(m) for m in args.manifests]
        seeds, bench = args.seeds or 3, args.bench_preset or "quick"
    record = compare(configs, seeds, out, manifests, None if bench == "none" else bench, args.batch_size,
                     args.max_new_tokens, args.nproc)
    failed = [f"{c} seed {s}" for c, runs in {**record["runs"], "text-only baseline": record["text_only"]}.items()
              for s, r in runs.items() if r["status"] != "done"]
    print(f"report: {record['report'][0]} and {record['report'][1]}")
    for failure in failed:
        print(f"pal: run failed: {failure} (see {out / 'compare.json'})", file=sys.stderr)
    return 1 if failed else 0
