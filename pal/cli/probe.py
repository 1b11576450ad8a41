"""`pal probe`: the ceiling of each encoder's features on a manifest's labels (linear and MLP read-outs, tuned by
cross-validation on the training clips)."""


def register(commands) -> None:
    probe = commands.add_parser("probe", help="the probe ceiling of each encoder on a manifest's labels (linear and "
                                              "MLP read-outs, regularisation chosen by cross-validation on the "
                                              "training clips)")
    probe.add_argument("--features", required=True, help="a feature cache folder (`pal features build`)")
    probe.add_argument("--encoders", required=True,
                       help="the ensemble YAML the cache was built with, or a trained model folder (its encoders.json)")
    probe.add_argument("--manifest", required=True, help="clips with classification labels (fit on these)")
    probe.add_argument("--test", help="held-out clips to score on (default: 20%% of --manifest's clips)")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--out", help="write the results as JSON here")
    probe.set_defaults(run=run)


def run(args) -> int:
    from pal.common.safe_write import atomic_write_json
    from pal.eval.probe import run_probe
    from pal.eval.report import probe_lines

    result = run_probe(args.features, args.encoders, args.manifest, args.test, args.seed)
    print("\n".join(probe_lines(result)))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"results: {args.out}")
    return 0
