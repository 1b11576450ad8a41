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
    comparison.add_argument("--preset", choices=["smoke", "findings"],
                            help="smoke: tiny models on tones, four connectors, minutes; findings: PAL's four claims "
                                 "in PAL's configurations under a protocol fixed before the runs "
                                 "(docs/findings/protocol.md): nine connectors × 3 seeds of the demo's stage 1, each "
                                 "seed its own data draw and SSLAM, scored by the order-free hearing mAP; hours on 2 "
                                 "cores, reusing finished runs (run it in parts: --seeds 1, then 3)")
    comparison.add_argument("--demo", help="findings: a `pal demo` folder whose data, SSLAM and features seed 0 uses "
                                           "(default: built in OUT/demo-seed0)")
    comparison.add_argument("--bench-preset", choices=["tiny", "quick", "full", "none"],
                            help="pal bench efficiency preset for the memory/throughput plots (default quick)")
    comparison.add_argument("--batch-size", type=int, default=8)
    comparison.add_argument("--max-new-tokens", type=int, default=32)
    comparison.add_argument("--nproc", type=int,
                            help="train each run in N local ranks (torchrun), each taking batch_size / N of every "
                                 "stage (a run folder trained with another N is refused: its stages' hash counts the "
                                 "batch per rank); default 1, findings 2")
    comparison.set_defaults(run=run)


def run(args) -> int:
    from pal.common.typed_config import config_path
    from pal.workflows.compare import compare, smoke_setup

    out = Path(args.out)
    if args.preset == "findings":
        from pal.workflows.findings import run_findings

        record = run_findings(out, args.seeds or 3, Path(args.demo) if args.demo else None, args.nproc or 2,
                              args.batch_size)
    else:
        if args.preset == "smoke":
            configs, manifests = smoke_setup(out / "smoke")
            seeds, bench = args.seeds or 2, args.bench_preset or "tiny"
        else:
            if not (args.configs and args.manifests):
                raise ValueError("give --configs A.yaml B.yaml ... and --manifests M.jsonl ... (or --preset smoke).")
            configs, manifests = [config_path(c) for c in args.configs], [Path(m) for m in args.manifests]
            seeds, bench = args.seeds or 3, args.bench_preset or "quick"
        record = compare(configs, seeds, out, manifests, None if bench == "none" else bench, args.batch_size,
                         args.max_new_tokens, args.nproc or 1)
    failed = [f"{c} seed {s}" for c, runs in {**record["runs"], "text-only baseline": record["text_only"]}.items()
              for s, r in runs.items() if r["status"] != "done"]
    print(f"report: {record['report'][0]} and {record['report'][1]}")
    if "findings" in record:
        print(f"findings: {record['findings'][0]} and {record['findings'][1]}")
    for failure in failed:
        print(f"pal: run failed: {failure} (see {out / 'compare.json'})", file=sys.stderr)
    return 1 if failed else 0
