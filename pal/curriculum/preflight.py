"""Everything a curriculum's stages will need, checked before stage 1 trains (`preflight`), and what it found (`Plan`).

The model and connector settings against the LLM's config, every stage's trainable groups, DeepSpeed file, training
and validation manifests (validated line by line and measured in tokens, into memory-mapped tables), a stage that
starts from a `final/` that is missing, and the feature cache's coverage. Every problem found is reported at once, so
a run never fails at stage 3 for a typo that was there from the start.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from pal import TRAINABLE_GROUPS, PALConfig, PALProcessor
from pal.common.home import pal_home
from pal.data.manifest import ManifestError, manifest_table
from pal.llm import resolve_llm_path
from pal.trainable import LORA_KEYS
from pal.training.engine import checked_deepspeed_config, slow_bf16_note

from .config import CurriculumConfig
from .run_folder import RunFolder
from .stage_data import StageData


@dataclass
class Plan:
    """What the stages train on, per stage index k: the merged DeepSpeed config, the training data (and validation
    data, None without a val_manifest), the manifest rows set aside for audio that cannot be used; the notes to print
    (rows cut or skipped for length, bf16 emulated); the longest sequence a row may have."""

    max_length: int
    ds_configs: dict[int, dict] = field(default_factory=dict)
    data: dict[int, StageData] = field(default_factory=dict)
    val_data: dict[int, StageData | None] = field(default_factory=dict)
    set_aside: dict[int, list[dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_model(config: CurriculumConfig, encoder_dims: dict[str, int], source: str):
    """The model section against the LLM's own config → (the LLM's config, the PALConfig the stages build)."""
    from transformers import AutoConfig

    m = config.model
    text_config = AutoConfig.from_pretrained(resolve_llm_path(m.llm), local_files_only=True)
    try:
        pal_config = PALConfig(text_config=text_config.to_dict(), encoder_dims=encoder_dims, **m.connector)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: model.connector: {err}") from None
    unrouted = [n for n in pal_config.encoders_on("lal") if not pal_config.lal_layer_indices()]
    if unrouted:
        raise ValueError(f"{source}: model.connector: no LLM layer receives LAL audio (lal_config.start_layer"
                         f" = {pal_config.lal_config.start_layer} of {text_config.num_hidden_layers} layers), so "
                         f"encoders {unrouted} would be ignored; lower it or route them through plits.")
    if m.lora is not None and set(m.lora) - LORA_KEYS:
        raise ValueError(f"{source}: model.lora: unknown key(s) {sorted(set(m.lora) - LORA_KEYS)}; "
                         f"known keys: {sorted(LORA_KEYS)}.")
    return text_config, pal_config


def preflight(config: CurriculumConfig, stages: list[int], folder: RunFolder, ensemble, cache, rank: int,
              world: int, source: str) -> Plan:
    """Check the stages `stages` of `config` before any trains → their Plan; ManifestError listing every problem.
    Rank 0 validates each manifest and writes its table (under $PAL_HOME, keyed by content and settings, so nothing
    is left in a bad output folder); the other ranks map the same file. `ensemble`: the encoders (their widths and
    shortest clip); `cache`: the FeatureCache the stages read, or None."""
    m = config.model
    text_config, pal_config = check_model(config, ensemble.dims, source)
    plan = Plan(max_length=m.max_length or int(text_config.max_position_embeddings))
    processor = PALProcessor(folder.tokenizer(0), pal_config, padding_side="right")
    problems, validated = [], {}
    tables = pal_home() / "manifests"

    def examples(path: str | None, what: str):
        """(memory-mapped table, notes, rows set aside) of a manifest, or None if it has problems."""
        if path not in validated:
            outcome, failure = [None, None], None
            read = functools.partial(manifest_table, path, processor, plan.max_length, m.too_long,
                                     ensemble.min_seconds, tables, m.bad_audio, m.max_bad_audio)
            if rank == 0:
                try:
                    read()
                except Exception as err:  # every rank must leave the broadcast below, whatever went wrong
                    outcome, failure = [type(err).__name__, str(err)], err
            torch.distributed.broadcast_object_list(outcome, src=0)
            if outcome[0] not in (None, "ManifestError"):
                raise failure or RuntimeError(f"rank 0 could not read {path}: {outcome[0]}: {outcome[1]}")
            if outcome[0] is not None:
                problems.append(f"{what}: {outcome[1]}")
                validated[path] = None
            else:
                validated[path] = read()
        return validated[path]

    for k in stages:
        stage, where = config.stages[k], f"{source}: stages[{k}] ({config.stages[k].name})"
        bad_groups = [g for g in stage.trainable if g not in TRAINABLE_GROUPS]
        if bad_groups:
            problems.append(f"{where}.trainable: unknown group(s) {bad_groups}; choose from {sorted(TRAINABLE_GROUPS)}.")
        if "lora" in stage.trainable and not m.lora:
            problems.append(f"{where}.trainable names `lora`, but model.lora is not set: no adapter to train.")
        try:
            plan.ds_configs[k] = checked_deepspeed_config(
                stage.deepspeed, f"{where}.deepspeed ({stage.deepspeed})", micro_batch=stage.batch_size,
                precision=stage.precision, grad_accum=stage.gradient_accumulation_steps, zero_stage=stage.zero_stage,
                grad_clip=stage.optim.grad_clip)
        except (ValueError, FileNotFoundError) as err:
            problems.append(f"{where}.deepspeed: {err}")
        sources = [(examples(s.manifest, f"{where}.data"), s.weight) for s in stage.data]
        val = examples(stage.val_manifest, f"{where}.val_manifest") if stage.val_manifest else None
        if k > 0 and k - 1 not in stages and not (folder.stage_dir(k - 1) / "final" / "config.json").is_file():
            problems.append(f"{where}: starts from {folder.stage_dir(k - 1) / 'final'}, which does not exist; "
                            f"run stage {k} first.")
        plan.set_aside[k] = [row for found in [*(e for e, _ in sources), val] if found for row in found[2]]
        if all(e is not None for e, _ in sources) and not (stage.val_manifest and val is None):
            plan.data[k] = StageData([(e[0], w, s.manifest) for (e, w), s in zip(sources, stage.data)],
                                     config.seed, k, stage.batch_size * world, stage.group_by_length,
                                     stage.pack_questions)
            plan.val_data[k] = StageData([(val[0], 1.0, stage.val_manifest)], config.seed + 1, k,
                                         stage.batch_size) if val else None
    if cache is not None:
        missing = sorted({audio for found in validated.values() if found
                          for audio in found[0].unique("audio") if audio and audio not in cache})
        if missing:
            problems.append(f"{len(missing)} audio file(s) are not in the feature cache {cache.root} (e.g. "
                            f"{missing[:3]}): run `pal features build` on their manifests, or drop `feature_cache`.")
    if problems:
        raise ManifestError(f"{source}: nothing was trained; fix these first:\n" + "\n".join(problems))
    plan.notes = [note for found in validated.values() if found for note in found[1]]
    plan.notes += [note for k in stages if (note := slow_bf16_note(config.stages[k].precision,
                                                                    f"{source}: stages[{k}]"))]
    return plan
