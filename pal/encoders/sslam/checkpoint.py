"""Load released SSLAM weights without fairseq (docs/design.md#checkpoints).

Accepted inputs:
  - a fairseq pre-training checkpoint `.pt` (student weights at the top of `ckpt["model"]`; the `_ema` teacher and the
    pre-training decoder are ignored);
  - the fine-tuned checkpoint (`model.` prefix; its classification `fc_norm` / `head` are ignored);
  - a folder with `model.safetensors` (our export, or any prefix in front of the released names, detected and
    stripped);
  - the Hugging Face copies (`ta012/SSLAM_pretrain`, `ta012/SSLAM_AS2M_Finetuned`) in EAT's remote-code layout:
    `model.local_encoder.proj`, `model.pre_norm`, `model.blocks.{i}`, ... with an EAT `config.json`. Their names and
    config are mapped onto ours; their modeling code is never run (it also fails on transformers >= 5);
  - a `.safetensors` file with the released names (e.g. the parity fixture, stored as float16).
With no config, the architecture is read off the tensors: depth from the block count, width from the patch
projection, heads from the head dimension 64, MLP width from fc1.
`.pt` files are read with `torch.load(weights_only=True)`; a file that needs full unpickling is refused unless the
caller says it trusts it (`trust_checkpoint=True`, `--trust-checkpoint`).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .model import SSLAMConfig, SSLAMEncoder

ANCHOR = "modality_encoders.IMAGE.local_encoder.proj.weight"
HEAD_DIM = 64  # every released EAT / SSLAM size uses 64-dim heads
# Keys of the released files that the encoder does not use, and why.
IGNORED = (
    (re.compile(r"^_ema\."), "EMA teacher (feature extraction uses the student)"),
    (re.compile(r"^modality_encoders\.IMAGE\.decoder\."), "pre-training decoder"),
    (re.compile(r"^(fc_norm|head)\."), "fine-tuning classification head"),
)


# EAT's remote-code layout (Hugging Face copies) → the released fairseq names.
EAT_HF_RENAMES = (
    (re.compile(r"^model\.(local_encoder|extra_tokens|fixed_positional_encoder)"), r"modality_encoders.IMAGE.\1"),
    (re.compile(r"^model\.pre_norm\."), "modality_encoders.IMAGE.context_encoder.norm."),
    (re.compile(r"^model\.(blocks|fc_norm|head)\."), r"\1."),
)


def is_eat_hf_layout(state: dict) -> bool:
    return "model.local_encoder.proj.weight" in state


def from_eat_hf_layout(state: dict) -> dict:
    """Rename EAT remote-code keys to the released ones; a key no rule covers is kept (and reported by the loader)."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in EAT_HF_RENAMES:
            if pattern.match(key):
                key = pattern.sub(replacement, key, count=1)
                break
        renamed[key] = value
    return renamed


def config_from_eat(config: dict, where: str) -> SSLAMConfig:
    """Our encoder config from an EAT `config.json` (`model_type: "eat"`); settings we do not implement are errors."""
    missing = [k for k in ("embed_dim", "depth", "num_heads", "patch_size") if k not in config]
    if missing:
        raise ValueError(f"{where}: the EAT config has no {missing}.")
    if not config.get("qkv_bias", True):
        raise ValueError(f"{where}: qkv_bias = false, but SSLAM / EAT encoders have a qkv bias; is this an SSLAM model?")
    dim = int(config["embed_dim"])
    return SSLAMConfig(embed_dim=dim, depth=int(config["depth"]), num_heads=int(config["num_heads"]),
                       mlp_dim=int(dim * float(config.get("mlp_ratio", 4.0))), patch_size=int(config["patch_size"]),
                       num_mel_bins=int(config.get("mel_bins", 128)),
                       max_time_patches=int(config.get("max_length", 768)), norm_eps=float(config.get("norm_eps", 1e-6)))


def _read_pt(path: Path, trust_checkpoint: bool) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_checkpoint:
            raise ValueError(
                f"{path} holds pickled non-tensor objects that torch.load(weights_only=True) refuses ({err}). "
                "Unpickling can run code: if you trust this file (e.g. the released SSLAM checkpoint you downloaded), "
                "pass --trust-checkpoint (trust_checkpoint=True), or convert it once with `pal sslam export`."
            ) from None
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict or a fairseq checkpoint with a 'model' entry.")
    flat = {}
    for key, value in state.items():
        if key == "_ema" and isinstance(value, dict):  # fairseq keeps the teacher as a nested dict
            flat.update({f"_ema.{k}": v for k, v in value.items()})
        elif torch.is_tensor(value):
            flat[key] = value
    return flat


def read_state_dict(path: str | Path, trust_checkpoint: bool = False) -> tuple[dict, dict | None]:
    """Raw tensors from a checkpoint file or folder, plus a config dict if one is stored beside them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SSLAM checkpoint {path} does not exist.")
    config = None
    if path.is_dir():
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
        candidates = [path / "model.safetensors", path / "pytorch_model.bin"] + sorted(path.glob("*.pt"))
        files = [c for c in candidates if c.is_file()]
        if not files:
            raise FileNotFoundError(f"{path} has no model.safetensors, pytorch_model.bin or .pt file.")
        path = files[0]
    if path.suffix == ".safetensors":
        return load_file(path), config
    return _read_pt(path, trust_checkpoint), config


def strip_prefix(state: dict) -> dict:
    """Remove any wrapper prefix (`model.`, `encoder.`, ...) in front of the released names; `_ema.` keys stay."""
    prefixes = {k[: -len(ANCHOR)] for k in state if k.endswith(ANCHOR) and not k.startswith("_ema.")}
    if len(prefixes) != 1:
        raise ValueError(
            f"cannot find the SSLAM patch projection `{ANCHOR}` (with any prefix) exactly once among "
            f"{len(state)} keys; is this an SSLAM / EAT checkpoint?"
        )
    prefix = prefixes.pop()
    return {k[len(prefix):] if prefix and k.startswith(prefix) else k: v for k, v in state.items()}


def to_encoder_keys(state: dict) -> tuple[dict, dict[str, str]]:
    """Strip any wrapper prefix and drop the keys the encoder does not use. Returns (state, {ignored: why})."""
    out, ignored = {}, {}
    if is_eat_hf_layout(state):
        state = from_eat_hf_layout(state)
    for name, value in strip_prefix(state).items():
        reason = next((why for pattern, why in IGNORED if pattern.search(name)), None)
        if reason:
            ignored[name] = reason
        else:
            out[name] = value
    return out, ignored


def infer_config(state: dict, num_mel_bins: int = 128) -> SSLAMConfig:
    """Read the architecture off the tensors (released names, prefix already stripped)."""
    proj = state[ANCHOR]
    dim, patch = proj.shape[0], proj.shape[-1]
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.attn\.qkv\.weight$", k))})
    positions = state.get("modality_encoders.IMAGE.fixed_positional_encoder.positions")
    freq_patches = num_mel_bins // patch
    max_time = positions.shape[1] // freq_patches if positions is not None else 768
    mlp = state["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * dim
    return SSLAMConfig(embed_dim=dim, depth=depth, num_heads=dim // HEAD_DIM, mlp_dim=mlp, patch_size=patch,
                       num_mel_bins=num_mel_bins, max_time_patches=max_time)


def load_sslam(path: str | Path, config: SSLAMConfig | None = None, trust_checkpoint: bool = False) -> SSLAMEncoder:
    """Build the encoder and load the student weights; unknown or missing keys are an error that lists them."""
    state, stored_config = read_state_dict(path, trust_checkpoint)
    state, _ = to_encoder_keys(state)
    if config is None and stored_config and stored_config.get("model_type") == "eat":
        config = config_from_eat(stored_config, f"{path}/config.json")
    elif config is None:
        config = SSLAMConfig(**stored_config) if stored_config else infer_config(state)
    model = SSLAMEncoder(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match an SSLAM encoder of depth {config.depth}, width {config.embed_dim}: "
            f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}, "
            f"unexpected keys {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}."
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        raise ValueError(
            f"{path}: shape mismatch for {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in bad[:10]]}."
        )
    model.load_state_dict({k: v.float() for k, v in state.items()})  # float16 checkpoints upcast exactly
    return model.eval()
