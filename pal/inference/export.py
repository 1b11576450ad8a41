"""`pal export`: a trained model as one self-contained folder, to copy to another machine or upload to the Hub.

    OUT/config.json, model.safetensors     the model: LoRA inline, or merged into the LLM's weights (`merge_lora`);
                                           adapter-only: adapter.safetensors and base_llm.json instead (the LLM's
                                           own weights stay where pal finds them, checked by their identity)
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

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from pal.common.safe_write import atomic_folder
from pal.encoders.ensemble import EncoderSpec, weights_path
from pal.encoders.identity import read_ensemble_record, write_ensemble_record

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ENCODERS_FOLDER = "encoders"
ADAPTER_WEIGHTS = "adapter.safetensors"  # an adapter-only export: every tensor but the LLM's own weights
ADAPTER_RECORD = "base_llm.json"  # ... and the LLM it goes on, with that LLM's weights identity


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
    path = weights_path(spec)
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


def weights_identity(module: torch.nn.Module) -> str:
    """sha256 of a module's tensors (names, dtypes, shapes and values, in name order), first 16 hex digits: the
    same weights give the same identity whatever file format or library version wrote them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def base_llm_of(folder: Path, base_llm: str | None) -> str:
    """The LLM a model folder was trained on: `base_llm` when given, else its training run's `model.llm`."""
    if base_llm:
        return base_llm
    run_config = folder.parent.parent / "curriculum.json"
    if run_config.is_file():
        return json.loads(run_config.read_text())["model"]["llm"]
    raise ValueError(f"{folder} does not say which LLM it was trained on (no curriculum.json in its run): pass "
                     "--base-llm (a local LLM folder, or default for the embedded SmolLM2).")


def adapter_state(model, base: torch.nn.Module) -> dict:
    """The tensors of `model` that are not its LLM's own weights (connectors, feature norms, LoRA adapters); refuses
    when the LLM's own weights differ from `base`'s: they were trained, and an adapter would lose what they learned."""
    base_state = base.state_dict()
    kept, trained = {}, []
    for key, value in model.state_dict().items():
        if key.startswith("llm.") and "lora_" not in key:
            if not torch.equal(value, base_state[key.removeprefix("llm.").replace(".base_layer", "")]):
                trained.append(key)
        else:
            kept[key] = value.contiguous()
    if trained:
        raise ValueError(f"the LLM's own weights were trained ({trained[0]} and {len(trained) - 1} more differ from "
                         "the base LLM's): an adapter-only export would lose them; export the whole model instead.")
    return kept


def load_adapter_export(folder: Path, dtype: torch.dtype = torch.float32):
    """An adapter-only export on its base LLM: the LLM loaded from where its record says, checked to be the one the
    adapter was trained on, then the adapter's tensors. → PALForConditionalGeneration."""
    from safetensors.torch import load_file

    from pal import PALConfig, PALForConditionalGeneration
    from pal.llm import load_llm

    record = json.loads((folder / ADAPTER_RECORD).read_text())
    base = load_llm(record["llm"])
    if weights_identity(base) != record["identity"]:
        raise ValueError(f"{folder} is an adapter for the LLM {record['llm']} as it was when exported, and that LLM's "
                         "weights have changed since: restore it, or load a whole-model export.")
    model = PALForConditionalGeneration(PALConfig.from_pretrained(folder), llm=base)
    loaded = model.load_state_dict(load_file(folder / ADAPTER_WEIGHTS), strict=False)
    left = [k for k in loaded.missing_keys if not k.startswith("llm.") or "lora_" in k]
    if loaded.unexpected_keys or left:
        raise ValueError(f"{folder / ADAPTER_WEIGHTS} does not fit its model: unexpected "
                         f"{loaded.unexpected_keys[:3]}, missing {left[:3]}.")
    return model.to(dtype)


def export_model(source: str | Path, out: str | Path, merge: bool = False, dtype: str = "fp32",
                 eval_results: str | Path | None = None, adapter_only: bool = False,
                 base_llm: str | None = None) -> Path:
    """Write the model that `source` names (see find_model_folder) to the new folder `out`, self-contained.

    merge: fold LoRA into the LLM's weights; dtype: "fp32" or "bf16" for the model's weights (encoders are copied
    as they are); eval_results: a `pal eval score` results.json to put in the model card (default: the run's
    eval/results.json when it scored this very model); adapter_only: write the connectors, norms and LoRA adapters
    without the LLM's weights, for the base LLM `base_llm` (default: the run's `model.llm`) found where pal runs
    it. → `out`.
    """
    from transformers import AutoTokenizer

    from pal import PALForConditionalGeneration, PALProcessor

    from .model_card import find_eval_results, write_model_card

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}.")
    if adapter_only and merge:
        raise ValueError("--adapter-only keeps LoRA as adapters for the base LLM; --merge-lora folds them into the "
                         "LLM's weights: choose one.")
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
    adapter = None
    if adapter_only:
        from pal.llm import load_llm

        llm = base_llm_of(folder, base_llm)
        base = load_llm(llm)
        adapter = {key: value.to(DTYPES[dtype]) for key, value in adapter_state(model, base).items()}
        record = {"llm": llm if llm == "default" else str(Path(llm).resolve()), "identity": weights_identity(base)}
    model = model.to(DTYPES[dtype])
    processor = PALProcessor(AutoTokenizer.from_pretrained(folder, local_files_only=True), model.config)
    with atomic_folder(out) as staging:
        if adapter is None:
            model.save_pretrained(staging)
        else:
            from safetensors.torch import save_file

            model.config.save_pretrained(staging)
            save_file(adapter, staging / ADAPTER_WEIGHTS)
            (staging / ADAPTER_RECORD).write_text(json.dumps(record, indent=1))
        processor.save_pretrained(staging)
        encoders = {name: _bring_encoder(name, spec, staging) for name, spec in ensemble.encoders.items()}
        write_ensemble_record(staging, replace(ensemble, encoders=encoders), inside=True)
        write_model_card(staging, out.name, model.config, encoders, folder, results,
                         lora="merged" if merge and lora else ("adapter" if adapter_only and lora else
                                                               ("inline" if lora else None)),
                         base_llm=record["llm"] if adapter_only else None)
        if results is not None:  # the scores travel with the model
            shutil.copyfile(results, staging / "eval_results.json")
    return out
