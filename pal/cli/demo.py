"""`pal demo`: the main job end to end on the embedded default LLM (data → SSLAM → features → curriculum → evaluation
with its controls → report), resuming whatever an earlier run of the same folder finished."""


def register(commands) -> None:
    demo = commands.add_parser("demo", help="the main job end to end on the embedded default LLM")
    demo.add_argument("--preset", choices=["smoke", "full", "long"], default="full",
                      help="smoke: a few minutes; full (make demo): about 30 minutes on 2 CPU cores; long: the full "
                           "demo with each training stage twice as long, about 55 minutes, a model that hears more")
    demo.add_argument("--out", default=None,
                      help="output folder (default runs/demo, runs/demo-smoke or runs/demo-long); reruns resume")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--nproc", type=int, default=None,
                      help="training ranks (default: 2 on a CPU with 2 or more cores, where 2 one-thread ranks train "
                           "faster than one process; 1 otherwise); the global batch stays the config's")
    demo.set_defaults(run=run)


def run(args) -> int:
    from pal.training.launch import default_nproc
    from pal.workflows.demo import run_demo

    args.out = args.out or ("runs/demo" if args.preset == "full" else f"runs/demo-{args.preset}")
    if args.nproc is None:
        args.nproc = default_nproc()
    return run_demo(args)
