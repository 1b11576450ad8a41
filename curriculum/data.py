"""Curriculum data: JSONL manifests in the DESIGN.md shape, validated up front, mixed, length-grouped and collated.

One example per line:
    {"id": "...", "audio": "clips/dog.wav", "task": "caption|qa|classify|asr",
     "messages": [{"role": "user", "content": "<audio>\\nWhat can you hear?"}, {"role": "assistant", "content": "..."}]}
`audio` is relative to the manifest's folder (or absolute); it may be missing or null for a text-only example.

Before training (`validate_manifest`, then `check_lengths`), every line is checked and every problem reported with its
line number: UTF-8 and JSON, ids (unique), task, the conversation (an optional system turn, then user and assistant
alternating, ending with a non-empty answer), the audio (a string path to a readable audio file, not a folder, long
enough for the encoders; exactly one `<audio>` placeholder in the prompt when there is audio, none when there is not),
and the length of the templated text against the LLM's context. During training, a sample that still fails (audio
that does not decode, a row that no longer fits once its PLITS audio tokens are in) is skipped, counted and written
with its manifest, line, id and reason to the stage's `bad_samples.rank*.jsonl`.

Batches: each optimizer step draws its global batch from the stage's mixture (weights per manifest), as a function of
(seed, stage, step) so a resumed run sees exactly the batches an uninterrupted one would; with `group_by_length`, a
window of steps is drawn at once and sorted by length, so a batch holds examples of similar length.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from encoders.audio import AudioError, audio_header_problem

ROLES = ("system", "user", "assistant")
TASKS = ("caption", "qa", "classify", "asr")
AUDIO = "<audio>"


class ManifestError(ValueError):
    """Every problem of a manifest, one per line of the message: `path:line: what is wrong`."""


@dataclass
class Example:
    id: str
    audio: str | None  # absolute path, or None for text-only
    messages: list[dict]
    task: str
    length: int  # the length-grouping key: characters at validation, templated text tokens after check_lengths
    source: str = ""  # the manifest it came from
    line: int = 0  # its line number there (from 1)
    labels: list[str] | None = None  # classification: the gold label(s), for evaluation
    choices: list[str] | None = None  # multiple-choice QA: the options, for evaluation
    references: list[str] | None = None  # captioning: every reference caption, for evaluation

    @property
    def prompt(self) -> list[dict]:
        """The conversation up to its last user turn (what the model is asked)."""
        end = len(self.messages) - 1 if self.messages[-1]["role"] == "assistant" else len(self.messages)
        return self.messages[:end]

    @property
    def answer(self) -> str | None:
        """The gold answer: the last assistant turn, or None if the conversation ends with the user."""
        return self.messages[-1]["content"] if self.messages[-1]["role"] == "assistant" else None

    def where(self) -> dict:
        return {"manifest": self.source, "line": self.line, "id": self.id}


def _conversation_problem(messages, require_answer: bool = True) -> str | None:
    """What is wrong with a `messages` list, or None (`require_answer=False`: it may end with the user's turn)."""
    if not isinstance(messages, list) or not messages:
        return "missing key \"messages\" (a list of {role, content} turns)."
    bad = [i for i, m in enumerate(messages) if not isinstance(m, dict) or m.get("role") not in ROLES
           or not isinstance(m.get("content"), str)]
    if bad:
        return f"messages {bad} need a role in {ROLES} and a string content."
    roles = [m["role"] for m in messages]
    turns = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    if not turns or turns != expected[: len(turns)]:
        return (f"roles {roles}: expected an optional system turn, then user and assistant turns alternating, "
                "starting with the user.")
    if turns[-1] != "assistant" and require_answer:
        return "the last message must be the assistant's answer (the training target)."
    empty = [i for i, m in enumerate(messages) if m["role"] == "assistant" and not m["content"].strip()]
    if empty:
        return f"assistant message(s) {empty} are empty: there is no answer to learn."
    return None


def _string_list_problem(row: dict, key: str, least: int) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) < least or not all(isinstance(v, str) and v.strip() for v in value):
        return f"\"{key}\" = {value!r}: expected a list of at least {least} non-empty string(s)."
    return None


def _row_problem(row, path: Path, check_audio: bool, require_answer: bool = True) -> tuple[str | None, str | None]:
    """(problem, resolved audio path) for one parsed line."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}.", None
    if "id" in row and (isinstance(row["id"], bool) or not isinstance(row["id"], (str, int))):
        return f"id {row['id']!r}: expected a string or an integer.", None
    task = row.get("task")
    if task is not None and task not in TASKS:
        return f"task {task!r}: expected one of {list(TASKS)} (or leave it out).", None
    problem = _conversation_problem(row.get("messages"), require_answer) or _string_list_problem(row, "labels", 1) \
        or _string_list_problem(row, "choices", 2) or _string_list_problem(row, "references", 1)
    if problem:
        return problem, None
    messages = row["messages"]
    placeholders = sum(m["content"].count(AUDIO) for m in messages if m["role"] != "assistant")
    if any(AUDIO in m["content"] for m in messages if m["role"] == "assistant"):
        return f"an assistant turn holds {AUDIO}: the placeholder belongs in the prompt.", None
    audio = row.get("audio")
    if audio is None:
        if placeholders:
            return (f"the prompt holds {AUDIO} but the line has no \"audio\" file: add the file or remove the "
                    "placeholder."), None
        return None, None
    if not isinstance(audio, str) or not audio.strip():
        return f"\"audio\" = {audio!r}: expected a path string to an audio file (or null for text-only).", None
    if placeholders > 1:
        return f"the prompt holds {placeholders} `{AUDIO}` placeholders; one audio per example takes exactly one.", None
    if not placeholders and require_answer:  # (inference puts `<audio>` in front of the first user turn)
        return f"has audio but no `{AUDIO}` placeholder in its prompt.", None
    resolved = Path(audio).expanduser()
    resolved = resolved if resolved.is_absolute() else path.parent / resolved
    if check_audio:
        if resolved.is_dir():
            return f"audio {resolved} is a folder, not an audio file.", None
        if not resolved.is_file():
            return f"audio file {resolved} does not exist.", None
    return None, str(resolved)


def validate_manifest(path: str | Path, check_audio: bool = True, min_seconds: float = 0.0,
                      require_answer: bool = True) -> list[Example]:
    """Read a manifest; raise ManifestError listing every bad line (line numbers from 1).

    `require_answer=False` (inference) accepts conversations that end with the user's question, and prompts without
    `<audio>` (the placeholder then goes in front of the first user turn).
    `check_audio` also reads each audio file's header (in parallel threads): unreadable files, files without samples
    and clips shorter than `min_seconds` (the ensemble's shortest usable input) are reported here, before training.
    """
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder; expected a JSONL manifest file.")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found.")
    examples, problems, seen = [], [], {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append((number, f"{where}: not UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1}); "
                                         "re-encode the manifest as UTF-8."))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append((number, f"{where}: not valid JSON ({err.msg} at column {err.colno})."))
                continue
            problem, audio = _row_problem(row, path, check_audio, require_answer)
            if problem:
                problems.append((number, f"{where}: {problem}"))
                continue
            example_id = str(row.get("id", f"{path.stem}-{number}"))
            if example_id in seen:
                problems.append((number, f"{where}: duplicate id {example_id!r} (first on line {seen[example_id]})."))
                continue
            seen[example_id] = number
            messages = row["messages"]
            examples.append(Example(example_id, audio, messages, row.get("task") or "",
                                    sum(len(m["content"]) for m in messages), str(path), number,
                                    row.get("labels"), row.get("choices"), row.get("references")))
    if check_audio:
        with_audio = [e for e in examples if e.audio is not None]
        with ThreadPoolExecutor(max_workers=16) as pool:  # header reads are I/O-bound
            found = list(pool.map(lambda e: audio_header_problem(e.audio, min_seconds), with_audio))
        bad = {e.line: f"{path}:{e.line}: {why}" for e, why in zip(with_audio, found) if why}
        problems += list(bad.items())
        examples = [e for e in examples if e.line not in bad]
    if problems:
        problems.sort()
        raise ManifestError(f"{len(problems)} problem(s) in manifest {path}:\n" + "\n".join(p for _, p in problems))
    if not examples:
        raise ManifestError(f"{path}: no examples.")
    return examples


def check_lengths(examples: list[Example], processor, max_length: int, too_long: str) -> tuple[list[Example], list[str]]:
    """Measure each example's templated text in tokens (audio placeholders not counted) against `max_length`.

    Sets `example.length` to that count (the length-grouping key). `too_long="reject"`: ManifestError listing every
    line over the limit. `"truncate"`: examples whose prompt alone reaches the limit are dropped, the others are cut
    at collation; → (kept examples, notes naming the lines).
    """
    over, dropped, kept = [], [], []
    for e in examples:
        segments = processor.segments(e.messages)
        ids, labels, _ = processor.encode(segments, 0, [], 0)
        e.length = len(ids)
        prompt = next((i for i, label in enumerate(labels) if label != -100), len(labels))
        if len(ids) <= max_length:
            kept.append(e)
        elif too_long == "reject":
            over.append(f"{e.source}:{e.line}: {len(ids)} tokens of text, over max_length {max_length}.")
        elif prompt >= max_length:
            dropped.append(f"{e.source}:{e.line}")
        else:
            over.append(f"{e.source}:{e.line}")
            kept.append(e)
    if too_long == "reject" and over:
        raise ManifestError(
            f"{len(over)} example(s) longer than max_length = {max_length} tokens (the LLM's context unless "
            "model.max_length says otherwise); shorten them, raise model.max_length if the LLM allows, or set "
            "model.too_long: truncate:\n" + "\n".join(over)
        )
    notes = []
    if over:
        notes.append(f"{len(over)} example(s) over max_length = {max_length} tokens will be cut at the end: "
                     + ", ".join(over[:10]) + (" ..." if len(over) > 10 else ""))
    if dropped:
        notes.append(f"{len(dropped)} example(s) skipped because their prompt alone reaches max_length = "
                     f"{max_length}: " + ", ".join(dropped[:10]) + (" ..." if len(dropped) > 10 else ""))
    if not kept:
        raise ManifestError(f"no example of {examples[0].source} fits in max_length = {max_length} tokens.")
    return kept, notes


def examples_dataset(examples: list[Example]):
    """Validated examples as a Hugging Face `datasets.Dataset` (audio as a path column, decoded by us)."""
    from datasets import Dataset

    return Dataset.from_dict({
        "id": [e.id for e in examples],
        "audio": [e.audio or "" for e in examples],
        "messages": [json.dumps(e.messages) for e in examples],
        "task": [e.task for e in examples],
        "length": [e.length for e in examples],
        "source": [e.source for e in examples],
        "line": [e.line for e in examples],
    })


class StageData:
    """The examples of one stage (its manifests and weights) and the deterministic per-step batch draw."""

    def __init__(self, sources: list[tuple[list[Example], float]], seed: int, stage: int):
        self.datasets = [examples_dataset(examples) for examples, _ in sources]
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
        return Example(row["id"], row["audio"] or None, json.loads(row["messages"]), row["task"], row["length"],
                       row["source"], row["line"])

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
    labels on assistant tokens only, padding on the processor's side.

    A sample that fails here is dropped from the batch and returned with its reason: audio that does not decode, a
    row over `max_length` once its PLITS audio tokens are in (`too_long="truncate"` cuts it instead, counted in
    `self.counts`). Audio past an encoder's window is truncated or split by that encoder's policy, counted too.
    """

    def __init__(self, processor, ensemble=None, cache=None, max_length: int | None = None, too_long: str = "reject"):
        self.processor, self.ensemble, self.cache = processor, ensemble, cache
        self.max_length, self.too_long = max_length, too_long
        self.counts: Counter = Counter()  # "truncated", "long audio: <encoder> <policy>", ...

    def features(self, examples: list[Example]) -> tuple[dict | None, list[Example], list[tuple[Example, str]]]:
        """→ (audio features with one row per kept example or None, kept examples, [(example, problem)] skipped)."""
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
                    clip = self.ensemble.load(example.audio)
                    self.counts.update(self.ensemble.long_audio_events(clip))
                    clips.append(clip)
                kept.append(example)
                rows.append(len(paths) + len(clips) - 1)
            except AudioError as err:
                bad.append((example, str(err)))
        if not (paths or clips):
            return self.no_audio(len(kept)), kept, bad
        features = self.cache.get(paths) if self.cache is not None else self.ensemble.encode_loaded(clips)
        return scatter_rows(features, rows), kept, bad

    def __call__(self, examples: list[Example]) -> tuple[dict | None, list[tuple[Example, str]]]:
        """→ (batch, or None when nothing usable is left; [(example, problem)] of the skipped examples)."""
        audio, kept, bad = self.features(examples)
        counts = self.processor.audio_token_counts(audio, len(kept))
        rows, keep = [], []
        for i, example in enumerate(kept):
            try:
                row = self.processor.encode_example(example.messages, int(counts[i]), i)
                if self.max_length is not None and len(row[0]) > self.max_length:
                    if self.too_long != "truncate":
                        raise ValueError(f"{len(row[0])} tokens with its audio, over max_length {self.max_length}.")
                    row = self.processor.truncate(row, self.max_length, i)
                    self.counts["truncated"] += 1
            except ValueError as err:
                bad.append((example, str(err).replace(f"prompt {i}", "the example", 1)))
                continue
            if all(label == -100 for label in row[1]):
                bad.append((example, "no assistant tokens after templating."))
                continue
            rows.append(row)
            keep.append(i)
        if not rows:
            return None, bad
        batch = self.processor.pad(rows)
        if audio is not None:
            batch["audio"] = {n: (t[keep], m[keep]) for n, (t, m) in audio.items()}
        return batch, bad

    def no_audio(self, rows: int) -> dict | None:
        """Features for a batch without audio: one masked-out token per encoder and row. The model then runs its
        connectors as for any batch, which ZeRO-3 needs on every rank (peer projects hang here otherwise)."""
        dims = self.ensemble.dims if self.ensemble is not None else None
        if not rows or not dims:
            return None
        return {name: (torch.zeros(rows, 1, dim), torch.zeros(rows, 1, dtype=torch.bool)) for name, dim in dims.items()}


def scatter_rows(features: dict, rows: list[int | None]) -> dict:
    """Features of the audio examples → one row per example; `rows[i]` is example i's row in `features`, or None for
    a text-only example, which gets an all-False mask (it sees no audio on any route)."""
    out = {}
    for name, (tokens, mask) in features.items():
        full_t = tokens.new_zeros(len(rows), *tokens.shape[1:])
        full_m = mask.new_zeros(len(rows), mask.shape[1])
        for i, r in enumerate(rows):
            if r is not None:
                full_t[i], full_m[i] = tokens[r], mask[r]
        out[name] = (full_t, full_m)
    return out
