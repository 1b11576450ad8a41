"""Efficiency benchmark: PLITS vs LAL vs PAL vs cross-attention, side by side in one run (`pal bench efficiency`).

For each connector and audio length N_a, on an LLM with SmolLM2-135M's dimensions (random weights), batch 2 and
N_t = 128 text tokens, each variant in its own subprocess (so memory high-water marks do not mix):
  - train_step_s: forward + backward of the LM loss (every parameter trainable), minimum over repeats (the
    estimate least disturbed by other load: run-to-run spread on our shared 2-core machines is ±30 %);
  - tokens_per_s: B·(N_a + N_t) / train_step_s;
  - peak_mem_mb: the step's own peak, i.e. the process's peak RSS during the step minus its RSS before it, with the
    weights and gradient buffers already allocated (they are the same for every connector; see static_mem_mb);
  - prefill_s and decode_token_s: inference latency of the prompt pass and of one cached decoding step.
bf16 autocast is used where the CPU supports it. The FLOP ratio that pal-spec §4.4 predicts for the same shapes is
printed beside the measured ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# SmolLM2-135M-Instruct's dimensions (its config.json); weights are random.
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
)
TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
)
PRESETS = {
    "full": dict(dims="smollm2-135m", audio_tokens=[64, 512, 1500], repeats=3),
    "quick": dict(dims="smollm2-135m", audio_tokens=[64, 512], repeats=2),
    "tiny": dict(dims="tiny", audio_tokens=[8, 32], text_tokens=16, repeats=1, decode_tokens=2, encoder_dim=32,
                 n_summary=4),
}
DIMS = {"smollm2-135m": SMOLLM2_135M, "tiny": TINY}
CONNECTORS = ("plits", "lal", "pal", "xattn")
XATTN_EVERY, XATTN_FFN_MULT = 4, 4  # the cross-attention baseline: a block in front of every 4th layer


@dataclass
class BenchSettings:
    dims: str = "smollm2-135m"
    audio_tokens: list[int] = field(default_factory=lambda: [64, 512, 1500])
    text_tokens: int = 128
    batch: int = 2
    encoder_dim: int = 768  # SSLAM ViT-B width
    n_summary: int = 32  # PAL: latent summary tokens via PLITS, the full sequence via LAL
    repeats: int = 3
    decode_tokens: int = 8
    precision: str = "auto"  # auto | bf16 | fp32


# ----------------------------------------------------------------------------------------------------------------------
# Predicted FLOPs (pal-spec §4.4)
# ----------------------------------------------------------------------------------------------------------------------


def layer_flops(connector: str, n_a: int, n_t: int, d: int, d_kv: int, d_ff: int, n_s: int = 0) -> float:
    """Forward FLOPs of one audio layer (pal-spec §4.4); PAL: n_s summary tokens in sequence plus LAL audio."""
    per_token = 2 * (2 * d * d + 2 * d * d_kv + 3 * d * d_ff)
    if connector == "xattn":  # the LLM's own layer sees text only
        return n_t * per_token + 4 * n_t * n_t * d
    if connector == "plits":
        n = n_a + n_t
        return n * per_token + 4 * n * n * d
    n_q = n_t + (n_s if connector == "pal" else 0)  # in-sequence tokens: the queries
    return n_q * per_token + n_a * 4 * d * d_kv + 4 * n_q * (n_a + n_q) * d


def xattn_block_flops(n_a: int, n_t: int, d: int, ffn_mult: int = XATTN_FFN_MULT) -> float:
    """Forward FLOPs of one gated cross-attention block: k/v over the audio, q/o and the FFN over the text, and
    the text-to-audio attention (scores and weighted sum)."""
    return 2 * (2 * n_a * d * d + 2 * n_t * d * d + 2 * n_t * d * ffn_mult * d) + 4 * n_t * n_a * d


def model_flops(connector: str, n_a: int, n_t: int, dims: dict, n_s: int = 0, encoder_dim: int = 0) -> float:
    """Forward FLOPs of every layer plus the LM head over every in-sequence position (logits for all of them).

    With `encoder_dim`, the connector's own projections are added (§4.4 leaves them out): the PLITS MLP
    (D_e→d→d, once), LAL's per-layer P_l (D_e→d in every layer), and PAL's latent-query input projection.
    """
    d, d_ff, layers = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    d_kv = dims["num_key_value_heads"] * d // dims["num_attention_heads"]
    seq = n_a + n_t if connector == "plits" else n_t + (n_s if connector == "pal" else 0)
    flops = layers * layer_flops(connector, n_a, n_t, d, d_kv, d_ff, n_s) + 2 * d * dims["vocab_size"] * seq
    if connector == "xattn":
        flops += len(range(0, layers, XATTN_EVERY)) * xattn_block_flops(n_a, n_t, d)
        return flops + (2 * n_a * encoder_dim * d if encoder_dim else 0)  # one projection to d, shared by the blocks
    if encoder_dim:
        if connector == "plits":
            flops += 2 * n_a * (encoder_dim * d + d * d)
        else:
            flops += layers * 2 * n_a * encoder_dim * d
        if connector == "pal":
            flops += 2 * n_a * (encoder_dim * d + 2 * d * d)  # summary latents: input projection and K/V
    return flops


# ----------------------------------------------------------------------------------------------------------------------
# One measurement (runs in its own process)
# ----------------------------------------------------------------------------------------------------------------------


def _build(connector: str, s: BenchSettings):
    from transformers import LlamaConfig

    from pal import PALConfig, PALForConditionalGeneration

    options = {"plits": dict(connector="plits"), "lal": dict(connector="lal"),
               "pal": dict(connector="pal", n_summary=s.n_summary, qformer_layers=1),
               "xattn": dict(connector="xattn", xattn_every=XATTN_EVERY, xattn_ffn_mult=XATTN_FFN_MULT)}[connector]
    config = PALConfig(text_config=LlamaConfig(**DIMS[s.dims]).to_dict(), encoder_dims={"sslam": s.encoder_dim},
                       **options)
    torch.manual_seed(0)
    return PALForConditionalGeneration(config)


def _inputs(model, n_a: int, s: BenchSettings) -> dict:
    from pal.plits import plits_token_counts

    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(s.batch, n_a, dtype=torch.bool)
    audio = {"sslam": (torch.randn(s.batch, n_a, s.encoder_dim, generator=gen), mask)}
    n_p = int(plits_token_counts(model.config, {"sslam": mask})[0]) if model.config.has_plits_tokens() else 0
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(0, vocab, (s.batch, n_p + s.text_tokens), generator=gen)
    flags = torch.zeros_like(ids, dtype=torch.bool)
    flags[:, :n_p] = True  # audio first, as PLITS would place it after an (empty) system prompt
    labels = ids.masked_fill(flags, -100)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), audio_token_mask=flags, audio=audio, labels=labels)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def use_bf16(precision: str) -> bool:
    """"auto": bf16 autocast where the CPU has native bf16, fp32 elsewhere."""
    from training.engine import resolve_precision

    return resolve_precision(precision) == "bf16"


def measure(connector: str, n_a: int, s: BenchSettings) -> dict:
    """Train-step time and memory, prefill and decode latency of one (connector, N_a) on this process."""
    model = _build(connector, s).train()
    batch = _inputs(model, n_a, s)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(s.precision))
    for p in model.parameters():  # gradient buffers exist before the step, as from the second step on
        p.grad = torch.zeros_like(p)
    static = _rss_mb()

    def train_step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()

    before = _rss_mb()
    start = time.perf_counter()
    train_step()
    times = [time.perf_counter() - start]
    peak = _peak_rss_mb() - before
    for _ in range(s.repeats):
        start = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - start)
    step = min(times[1:]) if s.repeats else times[0]  # the minimum is the estimate least disturbed by other load

    model.eval()
    prompt = {k: v for k, v in batch.items() if k != "labels"}
    prefill, decode = [], []
    with torch.inference_mode(), autocast:
        for _ in range(max(1, s.repeats)):
            start = time.perf_counter()
            out = model(**prompt, use_cache=True, logits_to_keep=1)
            prefill.append(time.perf_counter() - start)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            mask = prompt["attention_mask"]
            start = time.perf_counter()
            for _ in range(s.decode_tokens):
                mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            decode.append((time.perf_counter() - start) / s.decode_tokens)
    return dict(
        connector=connector, audio_tokens=n_a, text_tokens=s.text_tokens, batch=s.batch,
        train_step_s=step, tokens_per_s=s.batch * (n_a + s.text_tokens) / step, peak_mem_mb=peak,
        static_mem_mb=static, prefill_s=min(prefill), decode_token_s=min(decode),
        bf16=use_bf16(s.precision), threads=torch.get_num_threads(),
    )


# ----------------------------------------------------------------------------------------------------------------------
# The side-by-side run
# ----------------------------------------------------------------------------------------------------------------------


def _run_isolated(connector: str, n_a: int, s: BenchSettings) -> dict:
    cmd = [sys.executable, "-m", "bench.efficiency", "--worker", connector, str(n_a), json.dumps(asdict(s))]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker {connector} N_a={n_a} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compute_ratios(results: list[dict], s: BenchSettings) -> dict:
    """Per N_a, LAL and PAL against PLITS: measured speed-ups and memory ratios beside the §4.4 FLOP bound."""
    by = {(r["connector"], r["audio_tokens"]): r for r in results}
    dims = DIMS[s.dims]
    ratios = {}
    for n_a in s.audio_tokens:
        base = by.get(("plits", n_a))
        if base is None:
            continue
        for other in ("lal", "pal", "xattn"):
            r = by.get((other, n_a))
            if r is None:
                continue
            bound = model_flops("plits", n_a, s.text_tokens, dims) / model_flops(
                other, n_a, s.text_tokens, dims, s.n_summary
            )
            bound_with_connector = model_flops("plits", n_a, s.text_tokens, dims, 0, s.encoder_dim) / model_flops(
                other, n_a, s.text_tokens, dims, s.n_summary, s.encoder_dim
            )
            speedup = base["train_step_s"] / r["train_step_s"]
            ratios[f"{other}/plits@{n_a}"] = dict(
                train_throughput=speedup,
                peak_mem=r["peak_mem_mb"] / base["peak_mem_mb"],
                prefill_speedup=base["prefill_s"] / r["prefill_s"],
                decode_speedup=base["decode_token_s"] / r["decode_token_s"],
                flop_bound=bound,
                flop_bound_with_connector=bound_with_connector,
                speedup_over_flop_bound=speedup / bound,
            )
    return ratios


def run(s: BenchSettings, connectors=CONNECTORS, progress=print) -> dict:
    results = []
    for n_a in s.audio_tokens:
        for connector in connectors:
            progress(f"  measuring {connector:5s} N_a={n_a:5d} ...")
            results.append(_run_isolated(connector, n_a, s))
    dims = DIMS[s.dims]
    d_kv = dims["num_key_value_heads"] * dims["hidden_size"] // dims["num_attention_heads"]
    flop_ratio = {
        str(n_a): dict(
            per_layer=layer_flops("lal", n_a, s.text_tokens, dims["hidden_size"], d_kv, dims["intermediate_size"])
            / layer_flops("plits", n_a, s.text_tokens, dims["hidden_size"], d_kv, dims["intermediate_size"]),
            whole_model=model_flops("lal", n_a, s.text_tokens, dims) / model_flops("plits", n_a, s.text_tokens, dims),
        )
        for n_a in s.audio_tokens
    }
    return {"settings": asdict(s), "results": results, "ratios": compute_ratios(results, s),
            "flop_ratio_lal_over_plits": flop_ratio}


def targets(report: dict) -> list[str]:
    """The paper's numbers to beat at N_a = 512 (issue: ≥ 2.9× throughput, ≤ 0.4× memory, within 25% of the bound)."""
    r = report["ratios"].get("lal/plits@512")
    if r is None:
        return ["(N_a = 512 not measured: no target check)"]
    mark = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    return [
        f"LAL/PLITS training throughput {r['train_throughput']:.2f}x (target >= 2.9x): {mark(r['train_throughput'] >= 2.9)}",
        f"LAL/PLITS peak step memory {r['peak_mem']:.2f}x (target <= 0.4x): {mark(r['peak_mem'] <= 0.4)}",
        f"speed-up / FLOP bound {r['speedup_over_flop_bound']:.2f} (target within 25%: >= 0.75): "
        f"{mark(r['speedup_over_flop_bound'] >= 0.75)}",
    ]


def format_table(report: dict) -> str:
    head = f"{'connector':9s} {'N_a':>5s} {'N_t':>4s} {'step s':>8s} {'tok/s':>8s} {'peak MB':>8s} {'prefill s':>9s} {'decode ms/tok':>13s}"
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(
            f"{r['connector']:9s} {r['audio_tokens']:5d} {r['text_tokens']:4d} {r['train_step_s']:8.3f} "
            f"{r['tokens_per_s']:8.0f} {r['peak_mem_mb']:8.0f} {r['prefill_s']:9.3f} {1e3 * r['decode_token_s']:13.1f}"
        )
    lines.append("")
    lines.append(f"{'ratio':16s} {'throughput':>10s} {'memory':>7s} {'prefill':>8s} {'decode':>7s} "
                 f"{'FLOP bound':>10s} {'/bound':>7s} {'bound+conn':>10s}")
    for name, r in report["ratios"].items():
        lines.append(
            f"{name:16s} {r['train_throughput']:9.2f}x {r['peak_mem']:6.2f}x {r['prefill_speedup']:7.2f}x "
            f"{r['decode_speedup']:6.2f}x {r['flop_bound']:9.2f}x {r['speedup_over_flop_bound']:7.2f} "
            f"{r['flop_bound_with_connector']:9.2f}x"
        )
    lines.append("")
    for n_a, f in report["flop_ratio_lal_over_plits"].items():
        lines.append(f"pal-spec §4.4 FLOP ratio LAL/PLITS at N_a={n_a}: {f['per_layer']:.3f} per layer, "
                     f"{f['whole_model']:.3f} with the LM head")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("train_step_s", "train step (s)"), ("peak_mem_mb", "peak step memory (MB)"),
              ("decode_token_s", "decode latency (s/token)")]
    for ax, (key, label) in zip(axes, panels):
        for connector in CONNECTORS:
            rows = sorted((r for r in report["results"] if r["connector"] == connector), key=lambda r: r["audio_tokens"])
            if rows:
                ax.plot([r["audio_tokens"] for r in rows], [r[key] for r in rows], marker="o", label=connector.upper())
        ax.set_xlabel("audio tokens N_a")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    s = report["settings"]
    fig.suptitle(f"PLITS vs LAL vs PAL vs cross-attention on {s['dims']} dims, batch {s['batch']}, N_t={s['text_tokens']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def settings_from_args(args) -> BenchSettings:
    s = BenchSettings(**PRESETS[args.preset])
    if args.audio_tokens:
        s.audio_tokens = args.audio_tokens
    if args.repeats is not None:
        s.repeats = args.repeats
    s.precision = args.precision
    return s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table and plot")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--audio-tokens", type=int, nargs="+", help="override the N_a values")
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement (after one warm-up)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the PNG plot and JSON")


def main(args) -> int:
    s = settings_from_args(args)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    log(f"efficiency benchmark: {s.dims} dims, N_a={s.audio_tokens}, N_t={s.text_tokens}, batch {s.batch}, "
        f"{'bf16 autocast' if use_bf16(s.precision) else 'fp32'}, {torch.get_num_threads()} threads")
    report = run(s, progress=log)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "efficiency.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_table(report))
    print("\n".join(targets(report)))
    print(f"plot: {plot(report, args.out / 'efficiency.png')}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        connector, n_a, settings = sys.argv[2], int(sys.argv[3]), BenchSettings(**json.loads(sys.argv[4]))
        print(json.dumps(measure(connector, n_a, settings)))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(parser)
        sys.exit(main(parser.parse_args()))
