"""Curriculum data: JSONL manifests in the DESIGN.md shape, validated up front, mixed, length-grouped and collated.

One example per line:
    {"id": "...", "audio": "clips/dog.wav", "task": "caption|qa|classify|asr",
     "messages": [{"role": "user", "content": "<audio>\\nWhat can you hear?"}, {"role": "assistant", "content": "..."}]}
`audio` is relative to the manifest's folder (or absolute); it may be missing or null for a text-only example.

Validation reads every line before training and reports every problem with its line number (bad JSON, missing keys,
malformed messages, missing audio files). During training, a sample whose audio cannot be decoded is skipped, counted
and written to the stage's `bad_samples.jsonl`.

Batches: each optimizer step draws its global batch from the stage's mixture (weights per manifest), as a function of
(seed, stage, step) so a resumed run sees exactly the batches an uninterrupted one would; with `group_by_length`, a
window of steps is drawn at once and sorted by length, so a batch holds examples of similar length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from encoders.audio import AudioError

ROLES = ("system", "user", "assistant")


class ManifestError(ValueError):
    """Every problem of a manifest, one per line of the message: `path:line: what is wrong`."""


@dataclass
class Example:
    id: str
    audio: str | None  # absolute path, or None for text-only
    messages: list[dict]
    task: str
    length: int  # characters of the conversation: the length-grouping key


def validate_manifest(path: str | Path, check_audio: bool = True) -> list[Example]:
    """Read a manifest; raise ManifestError listing every bad line (line numbers from 1)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found.")
    examples, problems = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: not valid JSON ({err.msg} at column {err.colno}).")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: expected a JSON object, got {type(row).__name__}.")
            continue
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append(f"{where}: missing key \"messages\" (a list of {{role, content}} turns).")
            continue
        bad_turns = [i for i, m in enumerate(messages) if not isinstance(m, dict) or m.get("role") not in ROLES
                     or not isinstance(m.get("content"), str)]
        if bad_turns:
            problems.append(f"{where}: messages {bad_turns} need a role in {ROLES} and a string content.")
            continue
        if messages[-1]["role"] != "assistant":
            problems.append(f"{where}: the last message must be the assistant's answer (the training target).")
            continue
        audio = row.get("audio")
        if audio is not None:
            resolved = Path(audio) if Path(audio).is_absolute() else path.parent / audio
            if check_audio and not resolved.is_file():
                problems.append(f"{where}: audio file {resolved} does not exist.")
                continue
            audio = str(resolved)
            if not any("<audio>" in m["content"] for m in messages if m["role"] != "assistant"):
                problems.append(f"{where}: has audio but no `<audio>` placeholder in its prompt.")
                continue
        examples.append(Example(str(row.get("id", f"{path.stem}-{number}")), audio, messages, str(row.get("task", "")),
                                sum(len(m["content"]) for m in messages)))
    if problems:
        raise ManifestError(f"{len(problems)} problem(s) in manifest {path}:\n" + "\n".join(problems))
    if not examples:
        raise ManifestError(f"{path}: no examples.")
    return examples


def load_manifest_dataset(path: str | Path):
    """A validated manifest as a Hugging Face `datasets.Dataset` (audio as a path column, decoded by us)."""
    from datasets import Dataset

    rows = validate_manifest(path)
    return Dataset.from_dict({
        "id": [e.id for e in rows],
        "audio": [e.audio or "" for e in rows],
        "messages": [json.dumps(e.messages) for e in rows],
        "task": [e.task for e in rows],
        "length": [e.length for e in rows],
    })


class StageData:
    """The examples of one stage (its manifests and weights) and the deterministic per-step batch draw."""

    def __init__(self, sources: list[tuple[str, float]], seed: int, stage: int):
        self.datasets = [load_manifest_dataset(m) for m, _ in sources]
        weights = torch.tensor([w for _, w in sources], dtype=torch.float64)
        if (weights <= 0).any():
            raise ValueError(f"mixture weights must be positive, got {weights.tolist()}.")
        self.weights = weights / weights.sum()
        self.seed, self.stage = seed, stage

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def example(self, ref: tuple[int, int]) -> Example:
        source, index = ref
        row = self.datasets[source][index]
        return Example(row["id"], row["audio"] or None, json.loads(row["messages"]), row["task"], row["length"])

    def global_batch(self, step: int, size: int, group: int) -> list[tuple[int, int]]:
        """The step's global batch as (source, index) pairs; `group` > 1 sorts a window of steps by length."""
        window = step // group
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stage * 10_007 + window)
        sources = torch.multinomial(self.weights, group * size, replacement=True, generator=gen)
        refs = [(int(s), int(torch.randint(len(self.datasets[s]), (1,), generator=gen))) for s in sources]
        if group > 1:
            refs.sort(key=lambda r: self.datasets[r[0]][r[1]]["length"])
        k = step % group
        return refs[k * size : (k + 1) * size]


class Collator:
    """Examples → model inputs: audio decoded and encoded (or read from the feature cache), chat template applied,
    labels on assistant tokens only, padding on the processor's side. Undecodable audio drops the example."""

    def __init__(self, processor, ensemble=None, cache=None):
        self.processor, self.ensemble, self.cache = processor, ensemble, cache

    def features(self, examples: list[Example]) -> tuple[dict | None, list[Example], list[tuple[str, str]]]:
        """→ (audio features with one row per kept example or None, kept examples, [(id, problem)] skipped)."""
        bad, kept, rows, clips, paths = [], [], [], [], []
        for example in examples:
            if example.audio is None:
                kept.append(example)
                rows.append(None)
                continue
            try:
                if self.cache is not None:
                    if example.audio not in self.cache:
                        raise AudioError(f"{example.audio} is not in the feature cache {self.cache.root}")
                    paths.append(example.audio)
                else:
                    clips.append(self.ensemble.load(example.audio))
                kept.append(example)
                rows.append(len(paths) + len(clips) - 1)
            except AudioError as err:
                bad.append((example.id, str(err)))
        if not (paths or clips):
            return self.no_audio(len(kept)), kept, bad
        features = self.cache.get(paths) if self.cache is not None else self.ensemble.encode_loaded(clips)
        return self._scatter(features, rows), kept, bad

    def __call__(self, examples: list[Example]) -> tuple[dict | None, list[tuple[str, str]]]:
        """→ (batch, or None when nothing usable is left; [(example id, problem)] of the skipped examples)."""
        audio, kept, bad = self.features(examples)
        if not kept:
            return None, bad
        batch = self.processor([e.messages for e in kept], audio)
        if "labels" not in batch:
            return None, bad + [(e.id, "no assistant tokens after templating") for e in kept]
        return batch, bad

    def no_audio(self, rows: int) -> dict | None:
        """Features for a batch without audio: one masked-out token per encoder and row. The model then runs its
        connectors as for any batch, which ZeRO-3 needs on every rank (peer projects hang here otherwise)."""
        dims = self.ensemble.dims if self.ensemble is not None else None
        if not rows or not dims:
            return None
        return {name: (torch.zeros(rows, 1, dim), torch.zeros(rows, 1, dtype=torch.bool)) for name, dim in dims.items()}

    @staticmethod
    def _scatter(features: dict, rows: list[int | None]) -> dict:
        """Features of the audio examples → one row per kept example; text-only rows get all-False masks."""
        out = {}
        for name, (tokens, mask) in features.items():
            full_t = tokens.new_zeros(len(rows), *tokens.shape[1:])
            full_m = mask.new_zeros(len(rows), mask.shape[1])
            for i, r in enumerate(rows):
                if r is not None:
                    full_t[i], full_m[i] = tokens[r], mask[r]
            out[name] = (full_t, full_m)
        return out
