"""Measurements in a process of their own, so that what the caller holds never enters a benchmark's memory figures:
`run_isolated` starts `python -m MODULE --worker NAME N SETTINGS` and reads its last line of JSON; `module_main` is
what such a module runs as `__main__`, the worker or the benchmark's own command line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_isolated(module: str, name: str, n: int, settings) -> dict:
    """`measure(name, n, settings)` of `module`, in a fresh Python process → its result."""
    cmd = [sys.executable, "-m", module, "--worker", name, str(n), json.dumps(asdict(settings))]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker {module} {name} N_a={n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def module_main(doc: str, settings_type, measure, add_arguments, main) -> None:
    """A benchmark module run as `__main__`: a worker (`--worker NAME N SETTINGS`, prints `measure`'s JSON), or its
    command line."""
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        name, n, settings = sys.argv[2], int(sys.argv[3]), settings_type(**json.loads(sys.argv[4]))
        print(json.dumps(measure(name, n, settings)))
        return
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
