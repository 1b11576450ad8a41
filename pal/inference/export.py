"""`pal export`: a trained model as one self-contained folder, to copy to another machine or upload to the Hub.

    OUT/config.json, model.safetensors     the model: LoRA inline, or merged into the LLM's weights (`merge_lora`)
    OUT/tokenizer.json, ...                the LLM's tokenizer and chat template, processor_config.json
    OUT/encoders/<name>/                   each frozen encoder's weights and config (a preset SSLAM has none: pal
                                           builds that fixed network from code)
    OUT/encoders.json                      the ensemble, its paths relative to OUT, and each encoder's identity
    OUT/README.md                          the model card (pal/inference/model_card.py)
    OUT/eval_results.json, data_card.md    what `pal eval score` measured, the training data's card (when known)

Nothing outside OUT is read to load it: `AudioLLM.from_pretrained(OUT)`, `pal infer --model OUT`, `pal serve --model
OUT`, and transformers' Auto classes for the model alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from pal.common.safe_write import atomic_folder
from pal.encoders.ensemble import EncoderSpec
from pal.encoders.identity import read_ensemble_record, write_ensemble_record

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ENCODERS_FOLDER = "encoders"


def find_model_folder(source: str | Path) -> Path:
    """The model folder `source` names: a model folder itself (a stage's `final/`, or an export), a curriculum run
    (its last stage's `final/`), or a `pal demo` run folder (its curriculum's). Errors say what is missing."""
    source = Path(source)
    if (source / "config.json").is_file():
        return source
    if not source.is_dir():
        raise FileNotFoundError(f"{source} does not exist: name a trained model folder or a training run's folder.")
    if (source / "curriculum").is_dir() and not list(source.glob("stage[0-9]*-*")):
        return find_model_folder(source / "curriculum")
    stages = sorted(source.glob("stage[0-9]*-*"), key=lambda p: int(p.name[5:].split("-")[0]))
    if not stages:
        raise FileNotFoundError(f"{source} is neither a model folder (no config.json) nor a training run (no "
                                "stage<k>-<name>/ folders): name a stage's final/ folder or the run's --out.")
    planned = len(stages)
    if (source / "curriculum.json").is_file():
        planned = len(json.loads((source / "curriculum.json").read_text()).get("stages", stages))
    last = stages[-1]
    if len(stages) < planned or not (last / "final" / "config.json").is_file():
        raise FileNotFoundError(f"{source} has not finished training: stage {planned} of {planned} has no final/ "
                                "model yet. Finish it (`pal train --config ... --resume`), or export a finished "
                                "stage's final/ folder.")
    return last / "final"


def merge_lora(model) -> None:
    """Fold each LoRA adapter into its base weight in place, W + s·B·A, by PEFT's own merge, and drop the adapters
    (the config's `lora` becomes None, so loading attaches none)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.llm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)  # safe_merge: refuses to write NaN or inf into the weight
            parent, _, child = name.rpartition(".")
            setattr(model.llm.get_submodule(parent), child, module.get_base_layer())
    model.config.lora = None


def _copy(source: Path, dest: Path) -> None:
    """Copy a file or folder without its permission bits (training writes some files 0600; an export is shared)."""
    if source.is_dir():
        shutil.copytree(source, dest, copy_function=shutil.copyfile, ignore=shutil.ignore_patterns(".*"))
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)


def _bring_encoder(name: str, spec: EncoderSpec, out: Path) -> EncoderSpec:
    """Copy one encoder's weights under out/encoders/<name>; → its spec with the path relative to `out`."""
    path = spec.path
    if not path and spec.type == "whisper" and spec.preset == "base":
        from pal.encoders.whisper_base import whisper_base_folder

        path = str(whisper_base_folder())  # converted on first use, like any run that needs it
    if not path:  # a preset SSLAM: a fixed random network pal builds from code
        return spec
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"encoder {name!r}: its weights {source} are missing; the model cannot be exported "
                                "without them (restore them where training read them).")
    dest = Path(ENCODERS_FOLDER) / name
    if source.is_file():
        dest = dest / source.name
    _copy(source, out / dest)
    return replace(spec, path=dest.as_posix(), preset=None if spec.type == "whisper" else spec.preset)


def export_model(source: str | Path, out: str | Path, merge: bool = False, dtype: str = "fp32",
                 eval_results: str | Path | None = None) -> Path:
    """Write the model that `source` names (see find_model_folder) to the new folder `out`, self-contained.

    merge: fold LoRA into the LLM's weights; dtype: "fp32" or "bf16" for the model's weights (encoders are copied
    as they are); eval_results: a `pal eval score` results.json to put in the model card (default: the run's
    eval/results.json when it scored this very model). → `out`.
    """
    from transformers import AutoTokenizer

    from pal import PALForConditionalGeneration, PALProcessor

    from .model_card import find_eval_results, write_model_card

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}.")
    folder = find_model_folder(source)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: export into a new folder (remove it first to export again).")
    ensemble, _ = read_ensemble_record(folder)  # refuses encoders changed since training
    results = Path(eval_results) if eval_results else find_eval_results(folder)
    model = PALForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    lora = model.config.lora
    if merge and lora:
        merge_lora(model)
    model = model.to(DTYPES[dtype])
    processor = PALProcessor(AutoTokenizer.from_pretrained(folder, local_files_only=True), model.config)
    with atomic_folder(out) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        encoders = {name: _bring_encoder(name, spec, staging) for name, spec in ensemble.encoders.items()}
        write_ensemble_record(staging, replace(ensemble, encoders=encoders), inside=True)
        write_model_card(staging, out.name, model.config, encoders, folder, results,
                         lora="merged" if merge and lora else ("inline" if lora else None))
        if results is not None:  # the scores travel with the model
            shutil.copyfile(results, staging / "eval_results.json")
    return out
