"""`precision: auto`: bf16 only where this machine runs it natively. On a CPU without AVX-512/AMX bf16 torch
emulates bf16 matmuls (50x slower than fp32 on the AVX2 EPYC these tests also run on), so the shipped CPU configs
must not ask for bf16 unconditionally, and an explicit bf16 there is named in a warning."""

from __future__ import annotations

import pytest

import pal.training.engine as training
from pal.curriculum.config import CurriculumConfig
from pal.training.engine import deepspeed_config, resolve_precision, slow_bf16_note
from tests.conftest import ROOT


@pytest.mark.parametrize("native", [True, False])
def test_auto_resolves_to_bf16_only_where_it_is_native(monkeypatch, native):
    monkeypatch.setattr(training, "native_bf16", lambda: native)
    monkeypatch.delenv(training.PRECISION_ENV, raising=False)  # the suite may run with the choice forced
    assert resolve_precision("auto") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    ds = deepspeed_config(None, micro_batch=2, grad_accum=1, precision="auto", zero_stage=2, grad_clip=1.0)
    assert ds["bf16"]["enabled"] is native
    note = slow_bf16_note("bf16", "run.yaml: stages[0]")
    assert (note is None) is native
    if note:
        assert "stages[0].precision = bf16" in note and "precision: auto" in note
    assert slow_bf16_note("auto", "x") is None and slow_bf16_note("fp32", "x") is None


@pytest.mark.parametrize("forced", ["bf16", "fp32"])
@pytest.mark.parametrize("native", [True, False])
def test_the_auto_choice_can_be_forced_either_way(monkeypatch, native, forced):
    """$PAL_PRECISION forces what "auto" means (CI runs the suite both ways on one machine); explicit choices stay."""
    monkeypatch.setattr(training, "native_bf16", lambda: native)
    monkeypatch.setenv(training.PRECISION_ENV, forced)
    assert resolve_precision("auto") == forced
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    ds = deepspeed_config(None, micro_batch=2, grad_accum=1, precision="auto", zero_stage=2, grad_clip=1.0)
    assert ds["bf16"]["enabled"] is (forced == "bf16")
    monkeypatch.setenv(training.PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match=r"\$PAL_PRECISION = 'fp16': expected 'bf16', 'fp32' or 'auto'"):
        resolve_precision("auto")


def test_fp16_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="expected 'auto', 'bf16' or 'fp32'"):
        resolve_precision("fp16")


def test_the_cpu_demo_configs_ask_for_auto():
    for name in ("demo-smoke.yaml", "demo-full.yaml"):
        config = CurriculumConfig.from_yaml(ROOT / "pal" / "configs" / "curriculum" / name)
        assert {s.precision for s in config.stages} == {"auto"}, name


def test_pal_env_says_which_numeric_path_this_machine_takes(monkeypatch, capsys):
    """CI logs start with `pal env`: the CPU, its bf16/AMX flags and what "auto" chose, so a log says which ran."""
    from pal.cli.main import main

    monkeypatch.setenv(training.PRECISION_ENV, "fp32")
    assert main(["env"]) == 0
    said = {line[:22].strip(): line[23:] for line in capsys.readouterr().out.splitlines()}  # "key (padded) value"
    assert said["precision auto chose"] == "fp32" and said["PAL_PRECISION"] == "fp32"
    assert "amx_bf16=" in said["cpu flags"] and "avx512_bf16=" in said["cpu flags"]
    assert said["native bf16"] == ("yes" if training.native_bf16() else "no")
