"""A curriculum's run folder: where each stage writes, what trained it, and whether a stage is new, started or
finished.

A run folder remembers what trained it: each stage records a hash of its effective config (the settings that change
its weights, chained through the stages before it), the run it belongs to and the number of ranks that started it
(`stage.json`). A finished stage with the same hash is skipped; a different hash, a stage trained from another run of
the stage before it, or an unfinished stage without `--resume`, is refused unless `--restart` asks to start over.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict
from pathlib import Path

from pal.common.safe_write import atomic_write_json
from pal.llm import load_tokenizer
from pal.training.checkpointing import has_checkpoints

from .config import CurriculumConfig

STAGE_RECORD = "stage.json"
# A stage's settings that do not change its weights: logging, evaluation and checkpoint cadence, data loading.
UNHASHED_STAGE_KEYS = ("val_manifest", "eval_every", "val_batches", "num_samples", "checkpoint_every", "keep_last",
                       "log_every", "num_workers", "prefetch_factor")


class RunFolder:
    """`out/stage<k+1>-<name>/` for each stage k of `config`, with its record."""

    def __init__(self, config: CurriculumConfig, out: Path):
        self.config, self.out = config, out

    def stage_dir(self, k: int) -> Path:
        return self.out / f"stage{k + 1}-{self.config.stages[k].name}"

    def stage_hash(self, k: int) -> str:
        """Identifies what stage k's weights depend on: the model section, its own training settings (not logging,
        evaluation or checkpoint cadence), its DeepSpeed file's content, the seed, the feature cache, and the
        settings of the stages before it."""
        stage = asdict(self.config.stages[k])
        for key in UNHASHED_STAGE_KEYS:
            stage.pop(key)
        deepspeed = Path(stage["deepspeed"]) if stage["deepspeed"] else None
        stage["deepspeed"] = deepspeed.read_text() if deepspeed and deepspeed.is_file() else str(deepspeed)
        model = asdict(self.config.model)
        for key in ("bad_audio", "max_bad_audio"):  # which rows train is the manifests' business, not hashed either
            model.pop(key)
        record = {"model": model, "stage": stage, "seed": self.config.seed,
                  "feature_cache": self.config.feature_cache, "previous": self.stage_hash(k - 1) if k else None}
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def stage_record(self, k: int) -> dict | None:
        path = self.stage_dir(k) / STAGE_RECORD
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def write_stage_record(self, k: int, resume: bool, world: int) -> None:
        """Stage k's record as it starts: its hash, its run (kept on a resume), the run of the stage before it and
        the number of ranks."""
        previous = self.stage_record(k - 1) if k else None
        run_id = (self.stage_record(k) or {}).get("run") if resume else None
        atomic_write_json(self.stage_dir(k) / STAGE_RECORD, {
            "hash": self.stage_hash(k), "run": run_id or uuid.uuid4().hex[:12],
            "previous_run": (previous or {}).get("run"), "world_size": world, "config": asdict(self.config.stages[k])})

    def stage_state(self, k: int, resume: bool, restart: bool, world: int) -> str:
        """"finished", "started" or "new" for a run in `world` ranks; raises if the folder was trained with another
        config, or from another run of the stage before it, or holds an unfinished run and neither `resume` nor
        `restart` was given, or was started in another number of ranks."""
        if restart:
            return "new"
        stage_dir, record = self.stage_dir(k), self.stage_record(k)
        if record is not None:
            if record.get("hash") != self.stage_hash(k):
                raise ValueError(f"{stage_dir} was trained with a different config (hash {record.get('hash')}, now "
                                 f"{self.stage_hash(k)}: this stage's settings or an earlier stage's changed). Pass "
                                 "--restart to train it again from the start, or choose another --out.")
            previous = self.stage_record(k - 1) if k else None
            if k and record.get("previous_run") != (previous or {}).get("run"):
                raise ValueError(f"{stage_dir} was trained from another run of {self.stage_dir(k - 1).name}: pass "
                                 "--restart to train it again from the current one.")
        if (stage_dir / "final" / "config.json").is_file():
            return "finished"
        if has_checkpoints(stage_dir):
            if not resume:
                raise ValueError(f"{stage_dir} holds checkpoints of an unfinished run: pass --resume to continue it, "
                                 "or --restart to start over.")
            # batch_size is per rank, so another number of ranks would continue with another global batch and data
            # order (and ZeRO's optimizer shards are cut per rank); the hash cannot tell, the record can.
            ranks = (record or {}).get("world_size")
            if ranks is not None and ranks != world:
                raise ValueError(f"{stage_dir} was started in {ranks} rank(s) and this run has {world}: resume it "
                                 f"with `--nproc {ranks}` (the global batch is batch_size × ranks), or pass --restart.")
            return "started"
        return "new"

    def tokenizer(self, k: int):
        """Stage k's tokenizer: the one the stage before it saved in its `final/`, else the LLM's."""
        source = self.stage_dir(k - 1) / "final" if k > 0 else None
        if source is not None and (source / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        return load_tokenizer(self.config.model.llm)
