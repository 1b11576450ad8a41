"""Cost against the recording's length (`pal bench length`): LAL, PLITS and PAL from 10 s to 10 minutes of audio.

PAL's cost claim is about long audio: LAL's audio is keys and values only, so the LLM's sequence does not grow with
it, while PLITS's grows by every audio token. For each length, each connector's prefill (the prompt pass, audio
included), time per decoded token (a cached step) and the prefill's peak memory, measured side by side in one run,
each (connector, length) in its own process, reported as ratios to PLITS at the same length. The audio tokens are
what the ensemble's SSLAM gives that recording (`long_audio: split`): 513 per 10.24 s window (ViT-B: its CLS and
512 patches), so ten minutes are 59 windows, 30,267 tokens. Where PLITS's sequence would pass the LLM's context
(SmolLM2: 8,192 positions) it is not run and the report says so: that is the regime where only LAL can listen.

Random weights on SmolLM2-135M's dimensions (what the computation costs, not what it knows); no encoder runs (its
cost is the same for every connector), inference only, bf16 where the CPU has it natively.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .efficiency import DIMS, BenchSettings, _build, _inputs, generation_times, use_bf16
from .memory import StepMemory
from .worker import module_main, run_isolated

WINDOW_FRAMES, TOKENS_PER_WINDOW = 1024, 513  # SSLAM ViT-B: 10.24 s windows of 1 + 64·8 tokens
PRESETS = {
    "full": dict(dims="smollm2-135m", seconds=[10, 30, 60, 120, 300, 600], repeats=2, decode_tokens=8),
    "gpu": dict(dims="llama3.2-1b", seconds=[10, 60, 300, 600], repeats=3, decode_tokens=16, device="cuda"),
    "tiny": dict(dims="tiny", seconds=[1, 3], repeats=1, decode_tokens=2, encoder_dim=32, n_summary=4,
                 tokens_per_window=9, window_frames=100),
}
CONNECTORS = ("plits", "lal", "pal")


@dataclass
class LengthSettings:
    dims: str = "smollm2-135m"
    seconds: list[float] = field(default_factory=lambda: [10, 30, 60, 120, 300, 600])
    text_tokens: int = 64
    decode_tokens: int = 8
    repeats: int = 2  # timed prefills and decodes per run, after one warm-up; medians reported
    encoder_dim: int = 768
    n_summary: int = 32  # PAL: summary tokens via PLITS, the full sequence via LAL
    tokens_per_window: int = TOKENS_PER_WINDOW
    window_frames: int = WINDOW_FRAMES
    device: str = "cpu"
    precision: str = "auto"
    connectors: list[str] = field(default_factory=lambda: list(CONNECTORS))


def audio_tokens(seconds: float, s: LengthSettings) -> int:
    """SSLAM's tokens for a recording of `seconds` at 16 kHz, split into windows (encoders/sslam/features.py)."""
    frames = 1 + (int(seconds * 16000) - 400) // 160
    return max(1, math.ceil(frames / s.window_frames)) * s.tokens_per_window


def sequence_tokens(connector: str, n_a: int, s: LengthSettings) -> int:
    """Positions of the LLM's sequence: the text, plus PLITS's audio tokens (all of them; PAL's summary only)."""
    return s.text_tokens + {"plits": n_a, "pal": s.n_summary}.get(connector, 0)


def measure(connector: str, n_a: int, s: LengthSettings) -> dict:
    """Prefill, per-token decode and the prefill's peak memory of one (connector, N_a), in this process."""
    device = torch.device(s.device)
    bench = BenchSettings(dims=s.dims, audio_tokens=[n_a], text_tokens=s.text_tokens, supervised_tokens=1, batch=1,
                          encoder_dim=s.encoder_dim, n_summary=s.n_summary, device=s.device, precision=s.precision)
    bf16 = use_bf16(s.precision, s.device)
    with torch.device(device):
        model = _build(connector, bench).eval()
    if device.type == "cuda":
        model = model.to(device, torch.bfloat16 if bf16 else torch.float32)
    inputs = _inputs(model, n_a, bench)
    prompt = {k: v.to(device) for k, v in inputs.items() if torch.is_tensor(v) and k != "labels"}
    prompt["audio"] = {n: (t.to(device), m.to(device)) for n, (t, m) in inputs["audio"].items()}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and device.type == "cpu")

    with torch.inference_mode(), autocast:
        prefills, decodes = generation_times(model, prompt, s.decode_tokens, s.repeats, device)
        with StepMemory(device) as memory:
            model(**prompt, use_cache=True, logits_to_keep=1)
    return dict(connector=connector, audio_tokens=n_a, sequence_tokens=int(prompt["input_ids"].shape[1]),
                prefill_s=statistics.median(prefills), decode_token_s=statistics.median(decodes),
                peak_mem_mb=memory.peak, bf16=bf16, device=s.device, threads=torch.get_num_threads())


def run(s: LengthSettings, progress=print) -> dict:
    """Every (length, connector) → {"settings", "results", "ratios": {"lal/plits@600s": {...}}, "crossover"}."""
    context = DIMS[s.dims]["max_position_embeddings"]
    results = []
    for seconds in s.seconds:
        n_a = audio_tokens(seconds, s)
        for connector in s.connectors:
            base = {"connector": connector, "seconds": seconds, "audio_tokens": n_a,
                    "sequence_tokens": sequence_tokens(connector, n_a, s)}
            if base["sequence_tokens"] > context:
                progress(f"  {seconds:6.0f} s {connector:5s} N_a={n_a:6d}: over the LLM's context of {context}")
                results.append({**base, "over_context": True})
                continue
            progress(f"  {seconds:6.0f} s {connector:5s} N_a={n_a:6d} ...")
            results.append({**run_isolated("pal.bench.length", connector, n_a, s), **base, "over_context": False})
    return {"settings": asdict(s), "context": context, "results": results, "ratios": ratios(results),
            "crossover": crossover(results)}


def ratios(results: list[dict]) -> dict:
    """Each connector against PLITS at the same length, where both ran: prefill, decode and memory (< 1: cheaper)."""
    by = {(r["connector"], r["seconds"]): r for r in results if not r["over_context"]}
    out = {}
    for (connector, seconds), r in by.items():
        base = by.get(("plits", seconds))
        if connector == "plits" or base is None:
            continue
        out[f"{connector}/plits@{seconds:g}s"] = {key: r[key] / base[key] for key in
                                                  ("prefill_s", "decode_token_s", "peak_mem_mb") if base[key] > 0}
    return out


def crossover(results: list[dict]) -> dict:
    """For each connector, the shortest length from which its prefill is cheaper than PLITS's (or PLITS cannot run),
    and its prefill ratio there; None where it never is."""
    lengths = sorted({r["seconds"] for r in results})
    by = {(r["connector"], r["seconds"]): r for r in results}
    found = {}
    for connector in sorted({r["connector"] for r in results} - {"plits"}):
        found[connector] = None
        for seconds in lengths:
            base, r = by.get(("plits", seconds)), by.get((connector, seconds))
            if r is None or r["over_context"]:
                continue
            if base is None or base["over_context"]:
                found[connector] = {"seconds": seconds, "prefill_ratio": None, "plits": "over the context"}
                break
            if r["prefill_s"] < base["prefill_s"]:
                found[connector] = {"seconds": seconds, "prefill_ratio": r["prefill_s"] / base["prefill_s"]}
                break
    return found


def format_table(report: dict) -> str:
    lines = [f"{'seconds':>7s} {'connector':9s} {'N_a':>6s} {'sequence':>8s} {'prefill s':>9s} {'ms/token':>8s} "
             f"{'peak MB':>8s}"]
    for r in report["results"]:
        if r["over_context"]:
            lines.append(f"{r['seconds']:7g} {r['connector']:9s} {r['audio_tokens']:6d} {r['sequence_tokens']:8d} "
                         f"over the LLM's context of {report['context']}")
            continue
        lines.append(f"{r['seconds']:7g} {r['connector']:9s} {r['audio_tokens']:6d} {r['sequence_tokens']:8d} "
                     f"{r['prefill_s']:9.3f} {1000 * r['decode_token_s']:8.1f} {r['peak_mem_mb']:8.0f}")
    lines.append("")
    for name, r in report["ratios"].items():
        lines.append(f"{name:18s} prefill {r.get('prefill_s', float('nan')):6.3f}  decode "
                     f"{r.get('decode_token_s', float('nan')):6.3f}  memory {r.get('peak_mem_mb', float('nan')):6.3f}")
    for connector, found in report["crossover"].items():
        if found is None:
            lines.append(f"{connector}: its prefill is not cheaper than PLITS's at any length measured")
        elif found["prefill_ratio"] is None:
            lines.append(f"{connector}: from {found['seconds']:g} s PLITS's sequence is over the context; "
                         f"{connector} still runs")
        else:
            lines.append(f"{connector}: cheaper than PLITS from {found['seconds']:g} s "
                         f"(prefill {found['prefill_ratio']:.2f}x PLITS's)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--seconds", type=float, nargs="+", help="override the recording lengths")
    parser.add_argument("--connectors", nargs="+", choices=CONNECTORS, help="which connectors (PLITS always runs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for length.json")


def main(args) -> int:
    s = LengthSettings(**PRESETS[args.preset])
    if args.seconds:
        s.seconds = args.seconds
    if args.connectors:
        s.connectors = ["plits"] + [c for c in args.connectors if c != "plits"]
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    log(f"cost against length: {s.dims} dims on {s.device}, {s.seconds} s, {s.text_tokens} text tokens, "
        f"{'bf16' if use_bf16(s.precision, s.device) else 'fp32'}, {torch.get_num_threads()} threads")
    report = run(s, progress=log)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "length.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    module_main(__doc__, LengthSettings, measure, add_arguments, main)
