"""The benchmarks: the per-layer FLOP formulas against the worked example in docs/design.md#flops, and each `pal bench`
command running to a JSON report. Ratios are never checked in tests (they are measurements, read in the benchmarks'
output)."""

from __future__ import annotations

import json

import pytest

from pal.bench.flops import layer_flops
from pal.cli.main import main


@pytest.mark.parametrize("n_a,plits_gflop,lal_gflop", [(64, 23.7, 16.0), (512, 81.2, 18.4), (1500, 219.7, 23.6)])
def test_layer_flops_match_the_worked_example(n_a, plits_gflop, lal_gflop):
    """The docs/design.md#flops table: Llama-3.2-1B dimensions (d=2048, d_kv=512, d_ff=8192), N_t=128."""
    dims = dict(d=2048, d_kv=512, d_ff=8192)
    assert layer_flops("plits", n_a, 128, **dims) / 1e9 == pytest.approx(plits_gflop, abs=0.06)
    assert layer_flops("lal", n_a, 128, **dims) / 1e9 == pytest.approx(lal_gflop, abs=0.06)


def test_xattn_block_flops_match_torch_flop_counter():
    """The cross-attention block's FLOP formula against torch's own count of the block's matmuls and attention."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pal.bench.flops import xattn_block_flops
    from pal.cross_attention import GatedCrossAttentionBlock

    block = GatedCrossAttentionBlock(64, 4, ffn_mult=4)
    audio, text = torch.randn(1, 37, 64), torch.randn(1, 11, 64)
    math_attention = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)  # attention as counted matmuls
    with FlopCounterMode(display=False) as counter, torch.no_grad(), math_attention:
        block(text, *block.audio_kv(audio), torch.ones(1, 37, dtype=torch.bool))
    assert counter.get_total_flops() == xattn_block_flops(37, 11, 64, 4)


def test_bench_efficiency_json_report(tmp_path, capsys):
    assert main(["bench", "efficiency", "--preset", "tiny", "--audio-tokens", "32", "--pairs", "2", "--variants",
                 "lal_lowrank", "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted((r["variant"], r["audio_tokens"], r["pair"]) for r in report["results"]) == [
        ("lal_lowrank", 32, 0), ("lal_lowrank", 32, 1), ("plits", 32, 0), ("plits", 32, 1)]
    for r in report["results"]:
        for key in ("train_step_s", "prefill_s", "decode_token_s"):
            assert r[key] > 0
        assert r["peak_mem_mb"] >= 0 and r["text_tokens"] == 16
    ratio = report["ratios"]["lal_lowrank/plits@32"]
    assert ratio["train_throughput"]["n"] == 2 and ratio["flop_bound"] > 1  # LAL skips audio positions' FFN and queries
    assert json.loads((tmp_path / "efficiency.json").read_text())["results"] == report["results"]


def test_ratios_are_medians_of_rounds_with_their_spread():
    from pal.bench.efficiency import BenchSettings, compute_ratios

    s = BenchSettings(dims="tiny", audio_tokens=[8], variants=["plits", "lal"], pairs=3)
    row = lambda v, p, step, mem: dict(variant=v, audio_tokens=8, pair=p, train_step_s=step,  # noqa: E731
                                       peak_mem_mb=mem, prefill_s=1.0, decode_token_s=1.0)
    results = [row("plits", 0, 4.0, 100), row("lal", 0, 1.0, 30), row("plits", 1, 6.0, 100), row("lal", 1, 3.0, 40),
               row("plits", 2, 9.0, 100), row("lal", 2, 3.0, 20)]
    ratio = compute_ratios(results, s)["lal/plits@8"]
    # within-round speed-ups 4, 2, 3 (not the ratio of pooled medians, 6 / 3 = 2)
    assert ratio["train_throughput"] == {"median": 3.0, "min": 2.0, "max": 4.0, "n": 3}
    assert ratio["peak_mem"]["median"] == pytest.approx(0.3) and ratio["peak_mem"]["min"] == pytest.approx(0.2)


def test_step_memory_is_the_high_water_mark_not_the_end_state():
    import torch

    from pal.bench.memory import StepMemory

    with StepMemory(torch.device("cpu")) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched, then freed before the step ends
        del block
    assert 60 <= memory.peak <= 80, memory.peak

    from pal.bench.memory import tensor_peak_mb

    kept = torch.ones(2**20)  # live before the step: not the step's

    def step():
        a, b = torch.ones(5 * 2**20), torch.ones(5 * 2**20)  # 20 MB each, both live at once
        del a
        c = b * 2  # a freed: 40 MB again, not 60
        return c.sum()

    assert tensor_peak_mb(step) == pytest.approx(40.0, abs=0.5) and kept.numel()


@pytest.mark.parametrize("kind,variant", [("linear", "lal"), ("lowrank", "lal_lowrank")])
def test_lal_projection_flops_match_torch_flop_counter(kind, variant):
    """The bench's P_l FLOPs (which the per-layer formulas leave out) against torch's count of the projection's
    matmuls."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pal.bench.efficiency import TINY
    from pal.bench.flops import connector_flops
    from pal.lal_injection import LALProjection

    layers, n_a, encoder_dim = TINY["num_hidden_layers"], 13, 48
    projection = LALProjection(encoder_dim, TINY["hidden_size"], list(range(layers)), kind, rank=5)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        projection(torch.randn(1, n_a, encoder_dim))
    assert counter.get_total_flops() == connector_flops(variant, n_a, TINY, encoder_dim, rank=5)


def test_bench_encoders_json_report(capsys):
    assert main(["bench", "encoders", "--sslam", "tiny", "--batch", "2", "--repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fbank_ours_s"] > 0 and report["fbank_ast_s"] > 0 and report["features_cached_s"] > 0
    assert report["sslam_clips_per_s"] > 0 and report["batch"] == 2


def test_bench_sslam_pretraining_json_report(capsys):
    assert main(["bench", "sslam", "--preset", "tiny", "--batch", "2", "--clones", "2", "--steps", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step_s"] > 0
    assert report["official"] == {"clips_per_update": 48, "stage1": 400000, "stage2": 200000}


def test_curriculum_step_measurement():
    from pal.bench.curriculum import measure

    result = measure("pal", cached=True, batch=1, repeats=0)
    assert result["step_s"] > 0 and result["peak_mem_mb"] >= 0
    fed = measure("lal", cached=False, batch=2, repeats=1, workers=2, checkpointing=True)  # the curriculum's path
    assert fed["workers"] == 2 and fed["checkpointing"] and fed["step_s"] > 0


def test_bench_inference_json_report(capsys):
    """Every connector side by side: questions sharing one clip's encoding answer as the batch with the clip repeated
    does, and the report has batched examples/s and questions/s one by one and shared."""
    assert main(["bench", "inference", "--preset", "tiny", "--questions", "3", "--batch", "2", "--repeats", "1",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["connector"] for r in report["results"]] == ["plits", "lal", "pal", "xattn"]
    for r in report["results"]:
        assert r["shared_equals_batched"] is True, r["connector"]
        assert r["batched_examples_per_s"] > 0 and r["one_by_one_questions_per_s"] > 0 and r["shared_questions_per_s"] > 0
    assert set(report["ratios"]) == {"lal/plits", "pal/plits", "xattn/plits"}


def test_gpu_preset_on_a_machine_without_cuda_says_so(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["bench", "efficiency", "--preset", "gpu"])


def test_the_curriculum_configuration_is_measured_apart_from_the_papers(capsys, tmp_path):
    """`--regimes paper curriculum`: each variant measured in both configurations and each ratio taken within one.
    The curriculum's PLITS holds N_a / 4 audio tokens in its sequence (mlp_downsample 4) and only the connector
    trains; the paper's PLITS holds all N_a and everything trains."""
    assert main(["bench", "efficiency", "--preset", "tiny", "--audio-tokens", "32", "--pairs", "1", "--variants", "lal",
                 "--regimes", "paper", "curriculum", "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {(r["regime"], r["variant"]): r for r in report["results"]}
    assert sorted(rows) == [("curriculum", "lal"), ("curriculum", "plits"), ("paper", "lal"), ("paper", "plits")]
    assert rows[("paper", "plits")]["sequence_tokens"] == 32 + 16 and rows[("curriculum", "plits")]["sequence_tokens"] == 8 + 16
    assert rows[("paper", "lal")]["sequence_tokens"] == rows[("curriculum", "lal")]["sequence_tokens"] == 16
    from pal.bench.efficiency import DIMS

    llm = DIMS["tiny"]
    embeddings = llm["vocab_size"] * llm["hidden_size"]  # tied: the smallest tensor every paper row trains
    for variant in ("plits", "lal"):
        assert rows[("curriculum", variant)]["trainable_params"] < embeddings < rows[("paper", variant)]["trainable_params"]
    assert set(report["ratios"]) == {"lal/plits@32", "curriculum: lal/plits@32"}
    assert report["ratios"]["curriculum: lal/plits@32"]["flop_bound"] is None
    assert report["ratios"]["lal/plits@32"]["flop_bound"] > 1
