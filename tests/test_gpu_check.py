"""`pal bench gpu --device cpu`, the GPU check's dry run: the same command, the same CUDA tests (tests/test_cuda.py)
and the same benchmark code on tiny dims, so the check is known to run before a GPU is lent."""

from __future__ import annotations

import json
import math

from conftest import run_pal


def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    done = run_pal("bench", "gpu", "--device", "cpu", "--out", str(tmp_path / "check"))
    report = json.loads((tmp_path / "check" / "gpu-check.json").read_text())
    outcomes = {t["test"]: t["outcome"] for t in report["tests"]}
    # Every CUDA test ran here and passed, but the FlashAttention one, which needs CUDA and flash_attn.
    skipped = {name for name, outcome in outcomes.items() if outcome == "skipped"}
    assert skipped == {"test_lal_backend_equals_eager[lal-flash-bf16]", "test_lal_backend_equals_eager[pal-flash-bf16]"}
    assert all(outcome == "passed" for name, outcome in outcomes.items() if name not in skipped), outcomes
    names = " ".join(outcomes)
    for part in ("[lal-sdpa-fp32]", "[pal-sdpa-bf16]", "test_cached_decoding_equals_uncached", "a_batch_answers_as_its_rows",
                 "zero_on_one_device_save_and_resume[2]", "zero_on_one_device_save_and_resume[3]"):
        assert part in names, part
    assert len(outcomes) == 16
    (bench,) = report["efficiency"]
    assert bench["settings"]["dims"] == "tiny" and bench["settings"]["variants"] == ["plits", "lal", "pal"]
    assert set(bench["ratios"]) == {"lal/plits@8", "pal/plits@8", "lal/plits@32", "pal/plits@32"}
    for ratio in bench["ratios"].values():
        assert ratio["train_throughput"]["median"] > 0 and math.isfinite(ratio["of_flop_bound"])
    for row in bench["results"]:
        assert row["tokens_per_s"] > 0 and row["peak_mem_mb"] > 0 and row["decode_token_s"] > 0
    assert "CUDA tests: 14 passed, 0 failed, 2 skipped" in done.stdout and "lal/plits@32" in done.stdout
    # the cost against length, on the same tiny dims: 1 s and 3 s, every connector against PLITS
    lengths = report["length"]
    assert lengths["settings"]["dims"] == "tiny" and set(lengths["ratios"]) == {
        "lal/plits@1s", "pal/plits@1s", "lal/plits@3s", "pal/plits@3s"}
    assert "cost against length at tiny shapes" in done.stdout and "lal/plits@3s" in done.stdout
