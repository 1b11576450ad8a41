"""`pal env`: this machine's numeric path (CPU kind, bf16/AMX, what `precision: auto` picks)."""


def register(commands) -> None:
    commands.add_parser("env", help="this machine's numeric path: CPU, bf16/AMX, what precision auto picks").set_defaults(
        run=run)


def run(args) -> int:
    from pal.training.engine import machine_report

    for key, value in machine_report().items():
        print(f"{key:22s} {value}")
    return 0
