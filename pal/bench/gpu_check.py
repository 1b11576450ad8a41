"""`pal bench gpu` (`make gpu-check`): the GPU path proven in one command, for the day a GPU machine is lent.

Two parts, printed on one screen and written to `OUT/gpu-check.json`:
  1. the CUDA tests (`pytest -m cuda tests/test_cuda.py`): LAL's SDPA and FlashAttention-2 varlen paths against eager
     in fp32 and bf16, cached decoding equal to uncached, a batch equal to its rows alone (PLITS, LAL, PAL,
     cross-attention), and twelve curriculum steps under DeepSpeed ZeRO-2 and ZeRO-3 on one device, stopped at a
     checkpoint and resumed;
  2. the efficiency benchmark (bench/efficiency.py) at real dims with random weights: Llama-3.2-1B and Qwen2.5-1.5B
     shapes, N_a 512 and 1500, PLITS / LAL / PAL, batch 8, bf16: training tokens/s, peak memory, prefill and
     per-token decode latency, their ratios to PLITS and the fraction of the FLOP bound each speed-up reaches;
  3. the cost against length (bench/length.py) at Llama-3.2-1B shapes: PLITS / LAL / PAL from 10 s to 10 minutes of
     audio, prefill, per-token decode and peak memory as ratios to PLITS, and the length from which LAL is cheaper.
`--device cpu` is the dry run: the same tests and the same benchmark code on tiny dims, run by the suite
(tests/test_gpu_check.py) so the check cannot rot while no GPU is lent. It needs the repository (it runs its tests);
on the GPU machine the packages it lacks travel as wheels (`make gpu-wheels`, docs/efficiency.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict
from pathlib import Path

import torch

from . import length
from .efficiency import PRESETS, BenchSettings, format_table, run

ROOT = Path(__file__).resolve().parents[2]
# The GPU check: the `gpu` preset's card settings at two LLM shapes; the dry run: the `tiny` preset. One round each,
# PLITS / LAL / PAL only, to fit the eight minutes.
CHECKED = dict(variants=["plits", "lal", "pal"], pairs=1)
BENCH = {
    "cuda": [{**PRESETS["gpu"], **CHECKED, "dims": dims, "audio_tokens": [512, 1500]}
             for dims in ("llama3.2-1b", "qwen2.5-1.5b")],
    "cpu": [{**PRESETS["tiny"], **CHECKED, "batch": 2, "device": "cpu", "precision": "fp32"}],
}
LENGTH = {"cuda": length.PRESETS["gpu"], "cpu": {**length.PRESETS["tiny"], "precision": "fp32"}}


def machine(device: str) -> dict:
    facts = {"device": device, "torch": torch.__version__, "python": sys.version.split()[0]}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        facts |= {"gpu": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                  "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    for package in ("transformers", "deepspeed", "peft", "flash_attn"):
        try:
            facts[package] = __import__(package).__version__
        except ImportError:
            facts[package] = None
        except Exception as err:  # installed but broken: the report says how, the tests will say where
            facts[package] = f"import failed: {type(err).__name__}: {err}"
    return facts


def run_tests(device: str, out: Path) -> list[dict]:
    """`pytest -m cuda` on tests/test_cuda.py with PAL_CHECK_DEVICE=`device` → one record per test: its outcome
    (passed / failed / skipped), the reason or the failure's last lines, and its seconds."""
    tests = ROOT / "tests" / "test_cuda.py"
    if not tests.is_file():
        raise FileNotFoundError(f"{tests} is not here: run `pal bench gpu` from the repository (it runs its tests).")
    report = out / "cuda-tests.xml"
    env = {**os.environ, "PAL_CHECK_DEVICE": device}
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "cuda",
                    str(tests), f"--junitxml={report}", f"--basetemp={out / 'pytest'}"], cwd=ROOT, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not report.is_file():
        raise RuntimeError(f"pytest wrote no report to {report}: run `pytest -m cuda {tests}` to see why.")
    records = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        record = {"test": case.get("name"), "seconds": round(float(case.get("time", 0)), 2), "outcome": "passed"}
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                record["outcome"] = "skipped" if tag == "skipped" else "failed"
                text = (found.get("message") or "") + "\n" + (found.text or "")
                record["detail"] = "\n".join(text.strip().splitlines()[-6:])
        records.append(record)
    return records


def run_benchmarks(device: str, progress=print) -> list[dict]:
    reports = []
    for settings in BENCH[device]:
        s = BenchSettings(**settings)
        progress(f"efficiency: {s.dims} dims, N_a {s.audio_tokens}, batch {s.batch}, {s.precision}")
        reports.append(run(s, progress=progress))
    return reports


def run_length(device: str, progress=print) -> dict:
    s = length.LengthSettings(**LENGTH[device])
    progress(f"cost against length: {s.dims} dims, {s.seconds} s")
    return length.run(s, progress=progress)


def summary_lines(report: dict) -> list[str]:
    m = report["machine"]
    lines = [f"GPU check on {m.get('gpu', m['device'])} (torch {m['torch']}, transformers {m['transformers']}, "
             f"deepspeed {m['deepspeed']}, flash_attn {m['flash_attn'] or 'not installed'}) in {report['seconds']:.0f} s"]
    counts = {o: sum(t["outcome"] == o for t in report["tests"]) for o in ("passed", "failed", "skipped")}
    lines.append(f"CUDA tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    for t in report["tests"]:
        if t["outcome"] != "passed":
            lines.append(f"  {t['outcome']}: {t['test']}: {t.get('detail', '').splitlines()[0] if t.get('detail') else ''}")
    for bench in report["efficiency"]:
        s = bench["settings"]
        lines += ["", f"efficiency at {s['dims']} shapes, batch {s['batch']}, {s['precision']}, N_t {s['text_tokens']}:",
                  format_table(bench)]
    if report.get("length"):
        s = report["length"]["settings"]
        lines += ["", f"cost against length at {s['dims']} shapes:", length.format_table(report["length"])]
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda: the check; cpu: its dry run on tiny dims (what the suite runs)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="folder for gpu-check.json")
    parser.add_argument("--skip-benchmark", action="store_true", help="the tests only")


def main(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("pal bench gpu: no CUDA device is visible here; `--device cpu` is the dry run.")
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(args.device), "tests": run_tests(args.device, args.out.resolve())}
    progress = lambda *a: print(*a, file=sys.stderr)  # noqa: E731
    report["efficiency"] = [] if args.skip_benchmark else run_benchmarks(args.device, progress)
    report["length"] = None if args.skip_benchmark else run_length(args.device, progress)
    report["seconds"] = time.perf_counter() - started
    report["settings"] = [asdict(BenchSettings(**s)) for s in BENCH[args.device]]
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    print("\n".join(summary_lines(report)))
    print(f"\nreport: {args.out / 'gpu-check.json'}")
    return 1 if any(t["outcome"] == "failed" for t in report["tests"]) else 0
