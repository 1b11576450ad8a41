"""Tiny, seeded, deterministic models for the model-core tests (hidden ≤ 128, ≤ 4 layers, sequences ≤ 128).

How the suite's float tolerances are chosen (they hold on the AVX2 and the AVX-512/AMX machines alike; u = 2^-24 is
float32's unit roundoff). Each assertion names its class in a comment:
- exact: `torch.equal` where both sides run the same operations in the same order (a cache hit, a layer before the
  audio enters, a copy), so any difference is a bug.
- reorder: the same float32 formula in another order of operations (another GEMM shape or kernel blocking, a fused
  attention kernel, rows sliced before or after, a gradient recomputed, another CPU's kernels). Rounding errors add
  like a random walk, about √n·u·Σ|terms| per length-n sum (Higham, Accuracy and Stability of Numerical Algorithms,
  §3.5); here n ≤ 384, activations are O(1) and at most 4 layers compound it, so 1e-5 abs + 1e-5 rel covers it with
  room (measured ≤ 2e-6). A wrong mask, row or weight moves these outputs by O(0.1-1).
  `torch.testing.assert_close` without tolerances uses float32's 1e-5 abs / 1.3e-6 rel: the same class.
- formula: Python float64 arithmetic against a closed form (`pytest.approx`, 1e-6 relative by default), far above
  float64's 1e-16 and far below any wrong formula's effect.
- bf16: one bf16 rounding (2^-8 relative = 3.9e-3) of inputs or outputs: 1e-2.
- fixture: against an official implementation's outputs made on another machine; the bound is the fixture README's
  recommendation (observed error, and the smallest bug effect it must still see) or one derived in the test.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from pal import PALConfig, PALForConditionalGeneration
from pal.presets import with_settings

VOCAB = 97
# The official implementations' outputs are too large for the repository (181 MB); they live in ../shared/fixtures
# beside the checkout, where CI puts them, and PAL_SHARED names another folder that holds fixtures/.
SHARED = Path(os.environ.get("PAL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_FIXTURES = {
    "sslam_reference": "the official SSLAM inference code's fbanks, block outputs and tokens for a random-weight "
                       "encoder (its checkpoint included)",
    "sslam_pretrain_reference": "one SSLAM pre-training step of the official code (weights, random draws, "
                                "targets, losses and gradients)",
}


def official_fixture(name: str) -> Path:
    """The folder of one official fixture; absent, the test is skipped with the reason in the summary, or fails
    where PAL_REQUIRE_FIXTURES is set (CI has the fixtures, so a skip there would hide a lost parity test)."""
    folder = SHARED / "fixtures" / name
    if folder.is_dir():
        return folder
    reason = (f"parity test skipped: it needs {OFFICIAL_FIXTURES[name]}, and {folder} is absent. These fixtures are "
              "not in the repository (181 MB of official outputs); set PAL_SHARED to the folder holding fixtures/ "
              "(default: ../shared beside the checkout)")
    if os.environ.get("PAL_REQUIRE_FIXTURES"):
        pytest.fail(reason.replace("parity test skipped", "PAL_REQUIRE_FIXTURES is set") + ".", pytrace=False)
    pytest.skip(reason)



def run_pal(*args, nproc: int = 1, wait: bool = True, port: int = 29500, cwd: Path = ROOT, check: bool = True):
    """`pal ARGS` in a fresh process (under torchrun for nproc > 1), as a user would launch it; asserts success
    unless `check=False`."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1" if nproc > 1 else "2"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "pal", *args]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(port + os.getpid() % 1000), "-m", "pal", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert not check or done.returncode == 0, done.stderr[-4000:]
    return done


def fill_with_users_files(folder: Path) -> Path:
    """A user's working directory: their own `eval.py`, `common/` and `data/` packages, each failing loudly if
    imported (names that a toolkit installing top-level packages would collide with). → `folder`."""
    def trap(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"raise ImportError('the user\\'s own {path.relative_to(folder)} was imported')\n")

    trap(folder / "eval.py")
    trap(folder / "common" / "__init__.py")
    trap(folder / "data" / "__init__.py")
    (folder / "data" / "notes.txt").write_text("the user's data\n")
    return folder


def tiny_llm_config(family: str = "llama"):
    common = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if family == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=False)
    if family == "mistral":
        return MistralConfig(**common, tie_word_embeddings=False, sliding_window=None)
    raise ValueError(family)


def tiny_llm(family: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    cls = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "mistral": MistralForCausalLM}[family]
    return cls(tiny_llm_config(family)).eval()


CONNECTORS = {
    "plits": dict(encoder_dims={"sslam": 24}, connector="plits"),
    "plits_qformer": dict(encoder_dims={"sslam": 24}, connector="plits", plits_config=dict(
        projector="qformer", qformer_latents=3, qformer_layers=1, qformer_heads=2, qformer_dim=32)),
    "lal": dict(encoder_dims={"sslam": 24}, connector="lal", lal_config=dict(start_layer=1)),
    "lal_lowrank": dict(encoder_dims={"sslam": 24}, connector="lal",
                        lal_config=dict(start_layer=1, projection="lowrank", projection_rank=4)),
    "pal": dict(encoder_dims={"sslam": 24, "whisper": 16}, connector="pal", routes={"sslam": "lal", "whisper": "plits"},
                lal_config=dict(start_layer=1), plits_config=dict(mlp_downsample=2)),
    "pal_summary": dict(encoder_dims={"sslam": 24}, connector="pal", lal_config=dict(start_layer=2),
                        plits_config=dict(n_summary=2, qformer_layers=1, qformer_heads=2)),
    "xattn": dict(encoder_dims={"sslam": 24, "whisper": 16}, connector="xattn",
                  xattn_config=dict(every=2, heads=2, ffn_mult=2)),
    "pal_xattn": dict(encoder_dims={"sslam": 24, "whisper": 16}, connector="pal",
                      routes={"sslam": "lal", "whisper": "xattn"}, lal_config=dict(start_layer=1),
                      xattn_config=dict(layers=[2])),
}


def tiny_pal(connector: str = "lal", family: str = "llama", seed: int = 0, **overrides):
    """A PAL model around a tiny random LLM, plus an untouched copy of that LLM (the reference). `overrides`:
    PALConfig settings on top of the named connector's (a sub-config mapping merges into its)."""
    llm = tiny_llm(family, seed)
    bare = copy.deepcopy(llm)
    options = with_settings(CONNECTORS[connector], **overrides)
    config = PALConfig(text_config=llm.config.to_dict(), **options)
    torch.manual_seed(seed + 1)
    model = PALForConditionalGeneration(config, llm=llm).eval()
    bare.config._attn_implementation = "sdpa"
    return model, bare


def random_audio(config: PALConfig, lengths: list[int], seed: int = 0):
    """{name: (tokens [B, N, D_e], mask [B, N])} with `lengths[b]` real tokens (each encoder scales them a bit)."""
    gen = torch.Generator().manual_seed(seed)
    audio = {}
    for k, (name, dim) in enumerate(config.encoder_dims.items()):
        real = [n + 2 * k for n in lengths]
        width = max(real)
        tokens = torch.randn(len(lengths), width, dim, generator=gen)
        mask = torch.arange(width)[None, :] < torch.tensor(real)[:, None]
        tokens = tokens.masked_fill(~mask[..., None], 7.0)  # garbage in padding must not matter
        audio[name] = (tokens, mask)
    return audio


def slice_audio(audio, row: int):
    """One example's audio with its padding cut off, as if it had been encoded alone."""
    out = {}
    for name, (tokens, mask) in audio.items():
        n = int(mask[row].sum())
        out[name] = (tokens[row : row + 1, :n], mask[row : row + 1, :n])
    return out


def build_inputs(model, texts: list[list[int]], audio, padding_side: str = "left"):
    """Token rows with `<audio>` expanded as PALProcessor does: [prefix 3 tokens][placeholders][rest]."""
    from pal.plits import plits_token_counts

    counts = (
        plits_token_counts(model.config, {n: m for n, (_, m) in audio.items()}).tolist()
        if model.config.has_plits_tokens()
        else [0] * len(texts)
    )
    rows, flags = [], []
    for ids, n in zip(texts, counts):
        rows.append(ids[:3] + [0] * n + ids[3:])
        flags.append([False] * 3 + [True] * n + [False] * (len(ids) - 3))
    width = max(len(r) for r in rows)

    def pad(row, value):
        filler = [value] * (width - len(row))
        return filler + row if padding_side == "left" else row + filler

    return dict(
        input_ids=torch.tensor([pad(r, 0) for r in rows]),
        attention_mask=torch.tensor([pad([1] * len(r), 0) for r in rows]),
        audio_token_mask=torch.tensor([pad(f, False) for f in flags]),
    )


def random_texts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lengths]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


# ----------------------------------------------------------------------------------------------------------------------
# A tiny curriculum, built once per test session and shared by the training tests
# ----------------------------------------------------------------------------------------------------------------------


def tone(path: Path, freq: float, seconds: float = 0.5, rate: int = 16000) -> Path:
    import numpy as np
    import soundfile

    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


def caption_row(i: int, audio: str, word: str) -> dict:
    return {"id": f"t{i}", "audio": audio, "task": "caption", "messages": [
        {"role": "user", "content": "<audio>\nDescribe the sound."},
        {"role": "assistant", "content": f"A {word} pitched tone."}]}


def write_jsonl(path: Path, rows: list) -> Path:
    import json

    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="session")
def curriculum_env(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer and chat template, and a manifest of tones with captions."""
    from pal.llm import load_tokenizer

    return curriculum_world(tmp_path_factory.mktemp("curriculum"), load_tokenizer(None))


def curriculum_world(root: Path, tokenizer) -> Path:
    """`curriculum_env`'s files under `root`, with `tokenizer` saved beside the tiny Llama."""
    from pal.llm import tiny_llama

    torch.manual_seed(0)
    llm = tiny_llama(len(tokenizer))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    rows = []
    for i, (freq, word) in enumerate([(220, "low"), (440, "middle"), (880, "high"), (1760, "very high")] * 2):
        tone(root / f"tone{i}.wav", freq)
        rows.append(caption_row(i, f"tone{i}.wav", word))
    rows.append({"id": "text", "task": "qa", "messages": [{"role": "user", "content": "Say hi."},
                                                           {"role": "assistant", "content": "Hi."}]})
    write_jsonl(root / "train.jsonl", rows)
    write_jsonl(root / "val.jsonl", rows[:4])
    return root


def curriculum_dict(root: Path, stages: int = 3, **stage_changes) -> dict:
    """A curriculum over `curriculum_env`: PAL (LAL + summary tokens), LoRA, `stages` short stages."""
    def stage(name, trainable, precision="fp32"):
        return {"name": name, "data": [{"manifest": str(root / "train.jsonl")}], "trainable": trainable,
                "optim": {"lr": 3e-3, "warmup_steps": 1}, "steps": 6, "batch_size": 4, "precision": precision,
                "zero_stage": 2, "checkpoint_every": 3, "keep_last": 2, "log_every": 1,
                "val_manifest": str(root / "val.jsonl"), "eval_every": 3, "val_batches": 1, "num_samples": 1,
                **stage_changes}

    return {
        "model": {"llm": str(root / "llm"), "encoders": {"encoders": {"sslam": {"type": "sslam", "preset": "tiny"}}},
                  "connector": {"connector": "pal", "lal_config": {"start_layer": 1}, "audio_norm": "standardize",
                                "plits_config": {"n_summary": 4, "qformer_layers": 1, "qformer_heads": 2}},
                  "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "stages": [stage("connector", ["connector"]), stage("lora", ["connector", "lora"], "bf16"),
                   stage("everything", ["connector", "llm"])][:stages],
        "seed": 0,
    }


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def train_in_process(config: Path, out: Path, **options) -> list[dict]:
    """`pal train` without a new process (DeepSpeed runs as one rank in the test process): setup, then every stage."""
    from pal.curriculum.config import CurriculumConfig
    from pal.curriculum.recipe import CurriculumRecipe

    recipe = CurriculumRecipe(CurriculumConfig.from_yaml(config), out=out, source=config, **options)
    return recipe.run()


@pytest.fixture(scope="session")
def trained_tiny(curriculum_env, tmp_path_factory):
    """A tiny PAL model trained once per session (one stage, connector and LoRA) on the tone captions: a `final/`
    folder as `pal train` writes it, with its tokenizer and encoders.json."""
    root = tmp_path_factory.mktemp("trained")
    # 100 steps: the reliance gap opens between 60 (0.12 nats) and 100 (0.53) on this task (docs/findings.md)
    config = curriculum_dict(curriculum_env, stages=1, steps=100, val_manifest=None, num_samples=0,
                             checkpoint_every=100, log_every=10, group_by_length=False,
                             trainable=["connector", "llm"], optim={"lr": 5e-3, "warmup_steps": 2})
    train_in_process(write_yaml(root / "c.yaml", config), root / "run")
    return root / "run" / "stage1-connector" / "final"
