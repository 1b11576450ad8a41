"""Efficiency benchmark: PLITS vs LAL vs PAL vs cross-attention, side by side in one run (`pal bench efficiency`).

For each variant and audio length N_a, on an LLM with SmolLM2-135M's dimensions (random weights; `--preset gpu`:
Llama-3.2-1B's, batch 8, bf16, CUDA), N_t = 128 text tokens of which the last `supervised_tokens` are the answer
(the loss, and the LM head, see only those: `supervised_lm_loss`, the same for every variant), in each of two
configurations (`REGIMES`), reported apart and never mixed in a ratio: "paper", PAL's cost setting, every parameter
trainable and PLITS holding all N_a audio tokens in the sequence; "curriculum", what our curriculum's stage 1 trains,
the LLM frozen (the connector trains) and PLITS downsampled 4× as the demo routes it. Variants:
plits, lal (the paper's P_l, audio branch recomputed in backward: the default), lal_stored (the
same with lal_config.recompute_audio off: faster, more memory), lal_lowrank (the cheaper P_l), pal (32 summary tokens
via PLITS plus LAL), xattn (gated cross-attention before every 4th layer). Each measurement runs in a fresh process,
so nothing one variant allocated is counted for another:
  - train_step_s: forward + backward, median of `steps` timed steps after one warm-up;
  - peak_mem_mb: the step's high-water mark of live tensor memory above what was live before it (weights and
    gradient buffers exist before it, as from the second step on: static_mem_mb), measured on one more, untimed step.
    On CUDA `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`; on CPU the same quantity from PyTorch's
    profiler, which records every allocation and free of the CPU allocator with its running total (`tensor_peak_mb`);
  - peak_rss_mb (CPU): the same step seen by the operating system, the kernel's peak resident set (VmHWM) reset just
    before it, with glibc told to map and unmap every block above 64 KiB so that freed memory leaves the resident set
    (`StepMemory`). It adds what is not a tensor (allocator and library buffers, about the same for every variant,
    docs/efficiency.md) and varies between runs;
  - prefill_s (the prompt pass) and decode_token_s (one cached decoding step), medians.
Paired runs: in each of `pairs` rounds every variant runs back to back (the order reversed every other round, so a
drift in machine load does not favour one side), each ratio to PLITS is taken within the round, and the report
gives the median over rounds with its min-max spread. The FLOP bound of the configuration measured (forward FLOPs of
every layer, the connector's own projections, the LM head at supervised positions; a recomputation in backward is
not in it) is printed beside each ratio of the paper configuration, and the per-layer ratio of docs/design.md#flops
below them; with the LLM frozen the backward pass skips the weight gradients (and, for LAL, the layers before the
audio), so no forward-FLOP bound is given for the curriculum configuration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .flops import layer_flops, model_flops
from .memory import StepMemory, rss_mb, tensor_peak_mb
from .worker import module_main, run_isolated

# SmolLM2-135M-Instruct's and Llama-3.2-1B's dimensions (their config.json); weights are random.
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
)
LLAMA32_1B = dict(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True,
)
# Qwen2.5-1.5B's shapes as a Llama config (its q/k/v biases left out: a shape stand-in for speed and memory).
QWEN25_15B = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
)
TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
)
PRESETS = {
    "full": dict(dims="smollm2-135m", audio_tokens=[64, 512, 1500], pairs=5, regimes=["paper", "curriculum"]),
    "quick": dict(dims="smollm2-135m", audio_tokens=[64, 512], pairs=1, steps=1, regimes=["paper", "curriculum"]),
    "gpu": dict(dims="llama3.2-1b", audio_tokens=[64, 512, 1500], batch=8, pairs=5, steps=3, device="cuda",
                precision="bf16"),
    # tiny: the machinery on toy dims (`pal compare --preset smoke`, tests); the four connectors, not their variants
    "tiny": dict(dims="tiny", audio_tokens=[8, 32], text_tokens=16, supervised_tokens=8, pairs=1, steps=1,
                 decode_tokens=2, encoder_dim=32, n_summary=4, lowrank_rank=4, variants=["plits", "lal", "pal", "xattn"]),
}
DIMS = {"smollm2-135m": SMOLLM2_135M, "llama3.2-1b": LLAMA32_1B, "qwen2.5-1.5b": QWEN25_15B, "tiny": TINY}
VARIANTS = ("plits", "lal", "lal_stored", "lal_lowrank", "pal", "xattn")  # lal_stored: recompute_audio off
# What trains and how many audio tokens PLITS puts in the sequence: PAL's cost setting, and our curriculum's stage 1
# (pal/configs/curriculum/demo-full.yaml: connector only, PLITS's mlp_downsample 4).
REGIMES = {"paper": dict(trainable=None, plits_downsample=1),
           "curriculum": dict(trainable=["connector"], plits_downsample=4)}


@dataclass
class BenchSettings:
    dims: str = "smollm2-135m"
    audio_tokens: list[int] = field(default_factory=lambda: [64, 512, 1500])
    text_tokens: int = 128
    supervised_tokens: int = 64  # the answer: the last N_sup text tokens carry labels
    batch: int = 2
    encoder_dim: int = 768  # SSLAM ViT-B width
    n_summary: int = 32  # PAL: latent summary tokens via PLITS, the full sequence via LAL
    lowrank_rank: int = 64  # lal_lowrank's per-layer rank
    pairs: int = 5
    steps: int = 2  # timed steps per run, after one warm-up
    decode_tokens: int = 8
    precision: str = "auto"  # auto | bf16 | fp32
    device: str = "cpu"
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    full_logits: bool = False  # the loss from [B, T, V] logits, as before `supervised_lm_loss` (a before/after check)
    regimes: list[str] = field(default_factory=lambda: ["paper"])  # which of REGIMES to run, each apart
    regime: str = "paper"  # the one a worker measures


# ----------------------------------------------------------------------------------------------------------------------
# One measurement (runs in its own process)
# ----------------------------------------------------------------------------------------------------------------------


def _build(variant: str, s: BenchSettings):
    from transformers import LlamaConfig

    from pal import PALConfig, PALForConditionalGeneration
    from pal.presets import connector_preset

    sizes = {"lal_lowrank": dict(lal_config={"projection_rank": s.lowrank_rank}),
             "pal": dict(plits_config={"n_summary": s.n_summary}),
             "plits": dict(plits_config={"mlp_downsample": REGIMES[s.regime]["plits_downsample"]})}
    options = connector_preset(variant, **sizes.get(variant, {}))
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
    labels = torch.full_like(ids, -100)
    labels[:, -s.supervised_tokens:] = ids[:, -s.supervised_tokens:]  # the answer; prompt and audio carry no loss
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), audio_token_mask=flags, audio=audio, labels=labels)


def use_bf16(precision: str, device: str = "cpu") -> bool:
    """"auto": bf16 where the device has native bf16 (every CUDA GPU we run on), fp32 elsewhere."""
    if device == "cuda":
        return precision in ("auto", "bf16")
    from pal.training.engine import resolve_precision

    return resolve_precision(precision) == "bf16"


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def generation_times(model, prompt: dict, decode_tokens: int, repeats: int, device: torch.device
                     ) -> tuple[list[float], list[float]]:
    """The prompt pass (prefill, with the audio) and cached greedy decoding steps, each timed `repeats` times after a
    warm-up → (prefill seconds, seconds per decoded token), one per repeat."""
    def prefill():
        out = model(**prompt, use_cache=True, logits_to_keep=1)
        return out.past_key_values, out.logits[:, -1:].argmax(-1)

    def decode(cache, token):
        mask = prompt["attention_mask"]
        for _ in range(decode_tokens):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)

    prefills, decodes = [], []
    decode(*prefill())  # warm-up
    for _ in range(repeats):
        state = {}
        prefills.append(_timed(lambda state=state: state.update(kv=prefill()), device))
        decodes.append(_timed(lambda state=state: decode(*state["kv"]), device) / decode_tokens)
    return prefills, decodes


def measure(variant: str, n_a: int, s: BenchSettings) -> dict:
    """Train-step time and memory, prefill and decode latency of one (variant, N_a) in this process."""
    device = torch.device(s.device)
    bf16 = use_bf16(s.precision, s.device)
    with torch.device(device):  # weights initialised where they run: a 1.5B model's init on the host takes minutes
        model = _build(variant, s)
    if device.type == "cuda":  # bf16 weights, as DeepSpeed's bf16 mode holds them; CPU: fp32 weights, bf16 autocast
        model = model.to(device, torch.bfloat16 if bf16 else torch.float32)
    if REGIMES[s.regime]["trainable"]:
        from pal import set_trainable

        set_trainable(model, REGIMES[s.regime]["trainable"])
    model.train()
    inputs = _inputs(model, n_a, s)
    batch = {k: v.to(device) for k, v in inputs.items() if torch.is_tensor(v)}
    batch["audio"] = {n: (t.to(device), m.to(device)) for n, (t, m) in inputs["audio"].items()}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and device.type == "cpu")
    for p in model.parameters():  # gradient buffers exist before the step, as from the second step on
        if p.requires_grad:
            p.grad = torch.zeros_like(p)

    def train_step():
        with autocast:
            if s.full_logits:
                from transformers.loss.loss_utils import ForCausalLMLoss

                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # [B, T, V]
                loss = ForCausalLMLoss(logits, batch["labels"], vocab_size=logits.shape[-1])
            else:
                loss = model(**batch).loss
        loss.backward()

    train_step()  # warm-up
    static = rss_mb() if device.type == "cpu" else torch.cuda.memory_allocated() / 2**20
    times = [_timed(train_step, device) for _ in range(s.steps)]

    model.eval()
    prompt = {k: v for k, v in batch.items() if k != "labels"}
    with torch.inference_mode(), autocast:
        prefill, decode = generation_times(model, prompt, s.decode_tokens, s.steps, device)

    model.train()  # memory last: on CPU, StepMemory changes how the allocator maps memory for the rest of the process
    peak = None if device.type == "cuda" else tensor_peak_mb(train_step)
    with StepMemory(device) as memory:
        train_step()
    step = statistics.median(times)
    return dict(
        variant=variant, regime=s.regime, audio_tokens=n_a, text_tokens=s.text_tokens, batch=s.batch,
        sequence_tokens=int(inputs["input_ids"].shape[1]),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        train_step_s=step, tokens_per_s=s.batch * (n_a + s.text_tokens) / step,
        peak_mem_mb=memory.peak if peak is None else peak, peak_rss_mb=None if device.type == "cuda" else memory.peak,
        static_mem_mb=static, prefill_s=statistics.median(prefill),
        decode_token_s=statistics.median(decode), bf16=bf16, device=s.device, threads=torch.get_num_threads(),
    )


# ----------------------------------------------------------------------------------------------------------------------
# The side-by-side run
# ----------------------------------------------------------------------------------------------------------------------


RATIO_KEYS = {  # ratio name: (result key, True when PLITS / variant, i.e. a speed-up)
    "train_throughput": ("train_step_s", True), "peak_mem": ("peak_mem_mb", False), "peak_rss": ("peak_rss_mb", False),
    "prefill_time": ("prefill_s", False), "decode_latency": ("decode_token_s", False),
}


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio_name(regime: str, variant: str, n_a: int) -> str:
    """The report's key of a ratio to PLITS: "lal/plits@512" in the paper configuration, "curriculum: lal/plits@512"
    in another."""
    return f"{'' if regime == 'paper' else regime + ': '}{variant}/plits@{n_a}"


def compute_ratios(results: list[dict], s: BenchSettings) -> dict:
    """Per configuration (`REGIMES`) and N_a, every variant against that configuration's PLITS within each round
    (`pair`), as median and min-max over rounds; in the paper configuration beside the FLOP bound of what was measured
    and the per-layer bound of docs/design.md#flops (layers and full-sequence LM head only)."""
    ratios = {}
    for regime in s.regimes:
        ratios.update(_regime_ratios([r for r in results if r.get("regime", "paper") == regime], s, regime))
    return ratios


def _regime_ratios(results: list[dict], s: BenchSettings, regime: str) -> dict:
    by = {(r["variant"], r["audio_tokens"], r.get("pair", 0)): r for r in results}
    dims = DIMS[s.dims]
    ratios = {}
    for n_a in s.audio_tokens:
        for other in (v for v in s.variants if v != "plits"):
            pairs = sorted({p for (v, a, p) in by if v == other and a == n_a and ("plits", n_a, p) in by})
            if not pairs:
                continue
            entry = {}
            for name, (key, speedup) in RATIO_KEYS.items():
                if by[("plits", n_a, pairs[0])].get(key) is None:  # peak_rss_mb: not on CUDA
                    continue
                values = []
                for p in pairs:
                    base, r = by[("plits", n_a, p)][key], by[(other, n_a, p)][key]
                    values.append(base / r if speedup else (r / base if base > 0 else float("nan")))
                entry[name] = _spread(values)
            if regime != "paper":  # frozen weights: the forward-FLOP bound does not describe the step (module doc)
                entry.update(flop_bound=None, spec_flop_bound=None, of_flop_bound=None)
                ratios[ratio_name(regime, other, n_a)] = entry
                continue
            bound = model_flops("plits", n_a, s.text_tokens, dims, 0, s.encoder_dim, s.supervised_tokens) / model_flops(
                other, n_a, s.text_tokens, dims, s.n_summary, s.encoder_dim, s.supervised_tokens, s.lowrank_rank)
            entry["flop_bound"] = bound
            entry["spec_flop_bound"] = model_flops("plits", n_a, s.text_tokens, dims) / model_flops(
                other, n_a, s.text_tokens, dims, s.n_summary)
            entry["of_flop_bound"] = entry["train_throughput"]["median"] / bound
            ratios[ratio_name(regime, other, n_a)] = entry
    return ratios


def run(s: BenchSettings, progress=print) -> dict:
    from dataclasses import replace

    unknown = [r for r in s.regimes if r not in REGIMES]
    if unknown:
        raise ValueError(f"regimes {unknown}: expected some of {sorted(REGIMES)}.")
    results = []
    for pair in range(s.pairs):
        order = s.variants if pair % 2 == 0 else s.variants[::-1]  # reversed every other round: drift cancels
        for regime in s.regimes:
            for n_a in s.audio_tokens:
                for variant in order:
                    progress(f"  round {pair + 1}/{s.pairs}: {regime:10s} {variant:11s} N_a={n_a:5d} ...")
                    measured = run_isolated("pal.bench.efficiency", variant, n_a, replace(s, regime=regime))
                    results.append({**measured, "pair": pair})
    dims = DIMS[s.dims]
    d_kv = dims["num_key_value_heads"] * dims["hidden_size"] // dims["num_attention_heads"]
    per_layer = {str(n_a): layer_flops("lal", n_a, s.text_tokens, dims["hidden_size"], d_kv, dims["intermediate_size"])
                 / layer_flops("plits", n_a, s.text_tokens, dims["hidden_size"], d_kv, dims["intermediate_size"])
                 for n_a in s.audio_tokens}
    return {"settings": asdict(s), "results": results, "ratios": compute_ratios(results, s),
            "spec_layer_flop_ratio_lal_over_plits": per_layer}


# The targets at N_a = 512, LAL against PLITS (the paper reports 2.9-3.5x throughput, 0.36-0.40x memory).
TARGETS = (("train_throughput", ">=", 3.5), ("peak_mem", "<=", 0.33), ("prefill_time", "<=", 0.3),
           ("decode_latency", "<=", 0.8))


def targets(report: dict) -> list[str]:
    lines = []
    for variant in ("lal", "lal_stored", "lal_lowrank"):
        r = report["ratios"].get(f"{variant}/plits@512")
        if r is None:
            continue
        for name, op, goal in TARGETS:
            value = r[name]["median"]
            met = value >= goal if op == ">=" else value <= goal
            lines.append(f"{variant}/plits {name} {value:.2f}x (target {op} {goal}x): {'met' if met else 'MISSED'}")
        met = r["of_flop_bound"] >= 0.85
        lines.append(f"{variant}/plits speed-up / FLOP bound {r['of_flop_bound']:.2f} (target >= 0.85): "
                     f"{'met' if met else 'MISSED'}")
    return lines or ["(N_a = 512 not measured: no target check)"]


def format_table(report: dict) -> str:
    rss = lambda r: "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}"  # noqa: E731
    head = (f"{'config':10s} {'variant':11s} {'N_a':>5s} {'round':>5s} {'step s':>8s} {'tok/s':>8s} {'peak MB':>8s} "
            f"{'RSS MB':>7s} {'prefill s':>9s} {'decode ms/tok':>13s}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(
            f"{r.get('regime', 'paper'):10s} {r['variant']:11s} {r['audio_tokens']:5d} {r.get('pair', 0) + 1:5d} "
            f"{r['train_step_s']:8.3f} "
            f"{r['tokens_per_s']:8.0f} {r['peak_mem_mb']:8.0f} {rss(r):>7s} {r['prefill_s']:9.3f} "
            f"{1e3 * r['decode_token_s']:13.1f}"
        )
    lines.append("")
    lines.append("ratios to PLITS: median over rounds [min-max]; throughput as a speed-up, the rest as fractions")
    lines.append("paper: every parameter trains, PLITS holds all N_a tokens (PAL's cost setting); curriculum: our stage "
                 "1, the LLM frozen, PLITS downsampled 4x (no FLOP bound: frozen weights skip their gradients)")
    cell = lambda x: f"{x['median']:.2f} [{x['min']:.2f}-{x['max']:.2f}]" if x else "-"  # noqa: E731
    bound = lambda x, f: "-" if x is None else f.format(x)  # noqa: E731
    lines.append(f"{'ratio':33s} {'throughput':>18s} {'memory':>18s} {'RSS':>18s} {'prefill':>18s} {'decode':>18s} "
                 f"{'FLOP bound':>10s} {'/bound':>6s} {'layers':>6s}")
    for name, r in report["ratios"].items():
        lines.append(f"{name:33s} {cell(r['train_throughput']):>18s} {cell(r['peak_mem']):>18s} "
                     f"{cell(r.get('peak_rss')):>18s} {cell(r['prefill_time']):>18s} {cell(r['decode_latency']):>18s} "
                     f"{bound(r['flop_bound'], '{:9.2f}x'):>10s} {bound(r['of_flop_bound'], '{:6.2f}'):>6s} "
                     f"{bound(r['spec_flop_bound'], '{:5.2f}x'):>6s}")
    lines.append("")
    for n_a, f in report["spec_layer_flop_ratio_lal_over_plits"].items():
        lines.append(f"per-layer FLOP ratio LAL/PLITS at N_a={n_a} (docs/design.md#flops): {f:.3f}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("train_step_s", "train step (s)"), ("peak_mem_mb", "peak step memory (MB)"),
              ("decode_token_s", "decode latency (s/token)")]
    for ax, (key, label) in zip(axes, panels):
        for regime, style in zip(REGIMES, ("-", "--")):
            for variant in VARIANTS:
                rows = [r for r in report["results"] if r["variant"] == variant and r.get("regime", "paper") == regime]
                lengths = sorted({r["audio_tokens"] for r in rows})
                if lengths:
                    medians = [statistics.median(r[key] for r in rows if r["audio_tokens"] == n) for n in lengths]
                    name = variant.upper().replace("_", " ") + ("" if regime == "paper" else f" ({regime})")
                    ax.plot(lengths, medians, marker="o", linestyle=style, label=name)
        ax.set_xlabel("audio tokens N_a")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    s = report["settings"]
    fig.suptitle(f"PLITS vs LAL vs PAL vs cross-attention on {s['dims']} dims, batch {s['batch']}, "
                 f"N_t={s['text_tokens']} (medians over {s['pairs']} rounds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def settings_from_args(args) -> BenchSettings:
    s = BenchSettings(**PRESETS[args.preset])
    for key in ("audio_tokens", "pairs", "steps", "batch", "variants", "regimes"):
        if getattr(args, key) is not None:
            setattr(s, key, getattr(args, key))
    if args.device is not None:
        s.device = args.device
    if args.precision is not None:
        s.precision = args.precision
    s.full_logits = args.full_logits
    if "plits" not in s.variants:
        s.variants = ["plits", *s.variants]  # every ratio is against PLITS
    if s.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible here; run it on a GPU machine or use --device cpu.")
    return s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table and plot")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--audio-tokens", type=int, nargs="+", help="override the N_a values")
    parser.add_argument("--pairs", type=int, help="rounds of paired runs (ratios are medians over rounds)")
    parser.add_argument("--steps", type=int, help="timed steps per run, after one warm-up")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="which variants (PLITS always runs)")
    parser.add_argument("--regimes", nargs="+", choices=sorted(REGIMES),
                        help="paper: every parameter trains, PLITS un-downsampled (PAL's setting); curriculum: the LLM "
                             "frozen, PLITS downsampled 4x (our stage 1). Default: both (tiny: paper)")
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--full-logits", action="store_true",
                        help="compute the loss from logits at every position (the cost before supervised-only logits)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the PNG plot and JSON")


def write_report(s: BenchSettings, out: Path, progress=print) -> dict:
    """Run the benchmark and write `OUT/efficiency.json` and its plot `OUT/efficiency.png` → the report.
    Each measurement runs in its own worker process, so the caller's memory does not enter the figures."""
    report = run(s, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "efficiency.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "efficiency.png")
    return report


def main(args) -> int:
    s = settings_from_args(args)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    log(f"efficiency benchmark: {s.dims} dims on {s.device}, N_a={s.audio_tokens}, N_t={s.text_tokens} "
        f"({s.supervised_tokens} supervised), batch {s.batch}, {'bf16' if use_bf16(s.precision, s.device) else 'fp32'}, "
        f"{s.pairs} rounds of {s.steps} timed steps, {torch.get_num_threads()} threads")
    report = write_report(s, args.out, progress=log)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_table(report))
    print("\n".join(targets(report)))
    print(f"plot: {args.out / 'efficiency.png'}")
    return 0


if __name__ == "__main__":
    module_main(__doc__, BenchSettings, measure, add_arguments, main)
