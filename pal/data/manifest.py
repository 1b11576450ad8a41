"""Curriculum manifests: JSONL in the conversation shape of docs/design.md#manifests, validated up front, served as
memory-mapped Arrow tables.

One example per line:
    {"id": "...", "audio": "clips/dog.wav", "task": "caption|qa|classify|asr",
     "messages": [{"role": "user", "content": "<audio>\\nWhat can you hear?"}, {"role": "assistant", "content": "..."}]}
`audio` is relative to the manifest's folder (or absolute); it may be missing or null for a text-only example. A
question about several clips lists them as `"audios": ["a.wav", "b.wav"]` (LLaMA-Factory's key) with one `<audio>` per
clip in its prompt, in the same order (docs/model.md#several-clips).

Before training every line is checked and every problem reported with its line number: UTF-8 and JSON, ids (unique),
task, the conversation (an optional system turn, then user and assistant alternating, ending with a non-empty
answer), the audio (string paths to readable audio files, not folders, long enough for the encoders; one `<audio>`
placeholder in the prompt per clip, none when there is no audio), and the length of the templated text against the
LLM's context.

Training reads a manifest as an Arrow file (`manifest_table`) written once by a streaming pass and memory-mapped by
every rank and every DataLoader worker (Hugging Face `datasets`), so no process holds a Python copy of every row: a
manifest of millions of lines costs page cache, not heap. Evaluation manifests are small and read as `Example` lists
(`validate_manifest`); both go through the same checks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from pal.common.manifest_lines import ManifestError, manifest_lines, resolve_audio
from pal.common.safe_write import atomic_write_json, check_writable, disk_errors
from pal.encoders.audio import audio_header_problem

__all__ = ["AUDIO", "TASKS", "Example", "ManifestError", "mismatched_audio", "without_audio", "write_without_audio",
           "validate_manifest", "read_questions", "check_lengths", "manifest_table", "examples_dataset"]

ROLES = ("system", "user", "assistant")
TASKS = ("caption", "qa", "classify", "asr")
AUDIO = "<audio>"


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
    group: str | None = None  # rows packed together (`pack_questions`): this key, else the audio path
    benchmark: dict | None = None  # a converted benchmark row: {"name", "row" (the official fields), "breakdown"}
    more_audio: tuple[str, ...] = ()  # a question about several clips: the second and later, in placeholder order

    @property
    def audios(self) -> tuple[str, ...]:
        """Every clip of the question, in placeholder order (none for a text-only example)."""
        return () if self.audio is None else (self.audio, *self.more_audio)

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


def mismatched_audio(examples: list[Example]) -> list[Example] | None:
    """The same examples, each asked with another clip's audio: the distinct clips, in order of first appearance, are
    shifted by one (clip j → clip j + 1, the last → the first), a fixed derangement, so no example keeps its own audio
    and a clip's several questions all move to the same other clip. Text-only examples stay as they are; each clip of
    a question about several moves the same way (so every position holds another clip, though one of the question's
    own may land in another position). → None when fewer than two distinct clips are there (no derangement exists)."""
    clips = list(dict.fromkeys(a for e in examples for a in e.audios))
    if len(clips) < 2:
        return None
    other = {clip: clips[(j + 1) % len(clips)] for j, clip in enumerate(clips)}
    return [e if e.audio is None else replace(e, audio=other[e.audio], more_audio=tuple(other[a] for a in e.more_audio))
            for e in examples]


def without_audio(row: dict) -> dict:
    """A manifest row with its audio removed: no `audio`, and `<audio>` (with the newline after it) gone from every
    turn; the clip stays as the row's packing `group`, so the clip's questions still pack together. The text-only
    trained baseline learns from such rows: the answers' prior, reached without hearing."""
    messages = [{**m, "content": m["content"].replace(AUDIO + "\n", "").replace(AUDIO, "")} for m in row["messages"]]
    group = row.get("group", row.get("audio"))
    return ({k: v for k, v in row.items() if k != "audio"} | {"messages": messages}
            | ({"group": group} if group is not None else {}))


def write_without_audio(src: str | Path, dst: str | Path) -> Path:
    """`without_audio` applied to every line of the manifest `src`, written to `dst`."""
    rows = [json.loads(line) for line in Path(src).read_text().splitlines() if line.strip()]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(json.dumps(without_audio(r)) + "\n" for r in rows))
    return dst


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


def _benchmark_problem(value) -> str | None:
    if value is None:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("row"), dict)
            and isinstance(value.get("breakdown", {}), dict)):
        return (f"\"benchmark\" = {str(value)[:80]}: expected {{\"name\", \"row\", \"breakdown\"}} as `pal data convert` "
                "writes it.")
    return None


def _row_problem(row, path: Path, require_answer: bool = True) -> tuple[str | None, list[str]]:
    """(problem, resolved audio paths, one per clip) for one parsed line."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}.", []
    if "id" in row and (isinstance(row["id"], bool) or not isinstance(row["id"], (str, int))):
        return f"id {row['id']!r}: expected a string or an integer.", []
    task = row.get("task")
    if task is not None and task not in TASKS:
        return f"task {task!r}: expected one of {list(TASKS)} (or leave it out).", []
    problem = _conversation_problem(row.get("messages"), require_answer) or _string_list_problem(row, "labels", 1) \
        or _string_list_problem(row, "choices", 2) or _string_list_problem(row, "references", 1) \
        or _benchmark_problem(row.get("benchmark"))
    if problem:
        return problem, []
    messages = row["messages"]
    placeholders = sum(m["content"].count(AUDIO) for m in messages if m["role"] != "assistant")
    if any(AUDIO in m["content"] for m in messages if m["role"] == "assistant"):
        return f"an assistant turn holds {AUDIO}: the placeholder belongs in the prompt.", []
    audios, problem = _clips(row)
    if problem:
        return problem, []
    if not audios:
        if placeholders:
            return (f"the prompt holds {AUDIO} but the line has no \"audio\" file: add the file or remove the "
                    "placeholder."), []
        return None, []
    if len(audios) == 1 and not placeholders and require_answer:
        return f"has audio but no `{AUDIO}` placeholder in its prompt.", []
    if placeholders != len(audios) and (placeholders or require_answer):
        # (inference puts one `<audio>` per clip in front of the first user turn when the prompt has none)
        return (f"the prompt holds {placeholders} `{AUDIO}` placeholder(s) for {len(audios)} clip(s): put one "
                f"`{AUDIO}` where each clip belongs, in the order of the clips."), []
    return None, [str(resolve_audio(a, path)) for a in audios]  # the files: checked with their headers


def _clips(row: dict) -> tuple[list[str], str | None]:
    """The line's clips, from `audio` (one, or null) or `audios` (a list, LLaMA-Factory's key) → (paths as written,
    problem)."""
    if "audios" in row and row.get("audio") is not None:
        return [], "the line has both \"audio\" and \"audios\": give one clip as \"audio\" or a list as \"audios\"."
    audios = row.get("audios") if "audios" in row else row.get("audio")
    if audios is None:
        return [], None
    many = isinstance(audios, list)
    for audio in audios if many else [audios]:
        if not isinstance(audio, str) or not audio.strip():
            return [], (f"\"audios\" holds {audio!r}: expected a path string to an audio file per clip." if many
                        else f"\"audio\" = {audio!r}: expected a path string to an audio file (or null for text-only).")
    return (audios if many else [audios]), None


CHUNK = 4096  # lines validated, header-checked and measured together: bounds memory whatever the manifest's size


def _checked_chunks(path: Path, check_audio: bool, min_seconds: float, require_answer: bool,
                    problems: list[tuple[int, str]],
                    bad_audio: list[tuple[int, str]] | None = None) -> Iterator[list[Example]]:
    """The manifest's valid examples in chunks of CHUNK lines; every problem found is appended to `problems`.

    `check_audio` also reads each distinct audio file's header (in threads: I/O-bound): unreadable files, files
    without samples and clips shorter than `min_seconds` (the ensemble's shortest usable input). Those go to
    `bad_audio` instead of `problems` when it is given (the rows set aside, not an error)."""
    chunk = []

    def header_checked(chunk: list[Example]) -> list[Example]:
        if not check_audio:
            return chunk
        files = sorted({a for e in chunk for a in e.audios})
        with ThreadPoolExecutor(max_workers=16) as pool:
            found = dict(zip(files, pool.map(lambda f: audio_header_problem(f, min_seconds), files)))
        bad = {e.line: next(found[a] for a in e.audios if found[a]) for e in chunk if any(found[a] for a in e.audios)}
        (problems if bad_audio is None else bad_audio).extend(
            (line, f"{path}:{line}: {problem}") for line, problem in bad.items())
        return [e for e in chunk if e.line not in bad]

    for number, row, problem in manifest_lines(path):
        audios = []
        if problem is None:
            problem, audios = _row_problem(row, path, require_answer)
        if problem:
            problems.append((number, f"{path}:{number}: {problem}"))
            continue
        messages = row["messages"]
        chunk.append(Example(str(row.get("id", f"{path.stem}-{number}")), audios[0] if audios else None, messages,
                             row.get("task") or "", sum(len(m["content"]) for m in messages), str(path), number,
                             row.get("labels"), row.get("choices"), row.get("references"),
                             None if row.get("group") is None else str(row["group"]), row.get("benchmark"),
                             tuple(audios[1:])))
        if len(chunk) == CHUNK:
            yield header_checked(chunk)
            chunk = []
    if chunk:
        yield header_checked(chunk)


def _duplicate_problems(path: Path, ids, lines) -> list[tuple[int, str]]:
    """Lines whose id an earlier line already has; `ids`, `lines`: sequences or Arrow columns (counted in Arrow)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(ids):
        return []
    table = pa.table({"id": ids, "line": lines})
    counts = table.group_by("id").aggregate([("line", "min"), ("line", "count")])
    repeated = counts.filter(pc.greater(counts["line_count"], 1))
    if not len(repeated):
        return []
    first = dict(zip(repeated["id"].to_pylist(), repeated["line_min"].to_pylist()))
    rows = table.filter(pc.is_in(table["id"], repeated["id"]))
    return [(line, f"{path}:{line}: duplicate id {i!r} (first on line {first[i]}).")
            for i, line in zip(rows["id"].to_pylist(), rows["line"].to_pylist()) if line != first[i]]


def _raise_problems(path: Path, problems: list[tuple[int, str]]) -> None:
    if problems:
        problems.sort()
        raise ManifestError(f"{len(problems)} problem(s) in manifest {path}:\n" + "\n".join(p for _, p in problems))


def validate_manifest(path: str | Path, check_audio: bool = True, min_seconds: float = 0.0,
                      require_answer: bool = True) -> list[Example]:
    """Read a manifest into Examples; raise ManifestError listing every bad line (line numbers from 1).

    `require_answer=False` (inference) accepts conversations that end with the user's question, and prompts without
    `<audio>` (the placeholder then goes in front of the first user turn).
    """
    path, problems = Path(path), []
    examples = [e for chunk in _checked_chunks(path, check_audio, min_seconds, require_answer, problems) for e in chunk]
    problems += _duplicate_problems(path, [e.id for e in examples], [e.line for e in examples])
    _raise_problems(path, problems)
    if not examples:
        raise ManifestError(f"{path}: no examples.")
    return examples


def read_questions(manifest: str | Path) -> list[Example]:
    """A manifest for inference: answers optional, `<audio>` optional (it goes in front of the first user turn)."""
    return validate_manifest(manifest, check_audio=False, require_answer=False)


class LengthCheck:
    """Each example's templated text measured in tokens (audio placeholders not counted) against `max_length`, over
    any number of chunks. Sets `example.length` (the length-grouping key).

    `too_long="reject"`: `finish` raises ManifestError listing every line over the limit. `"truncate"`: examples
    whose prompt alone reaches the limit are dropped, the others are cut at collation; `finish` → notes naming them.
    """

    def __init__(self, processor, max_length: int, too_long: str, source: str):
        self.processor, self.max_length, self.too_long, self.source = processor, max_length, too_long, source
        self.over, self.dropped, self.kept = [], [], 0

    def keep(self, examples: Iterable[Example]) -> list[Example]:
        kept, examples = [], list(examples)
        measured = self.processor.text_lengths([self.processor.segments(e.messages) for e in examples])
        for e, (length, prompt) in zip(examples, measured):
            e.length = length
            if length <= self.max_length:
                kept.append(e)
            elif self.too_long == "reject":
                self.over.append(f"{e.source}:{e.line}: {length} tokens of text, over max_length {self.max_length}.")
            elif prompt >= self.max_length:
                self.dropped.append(f"{e.source}:{e.line}")
            else:
                self.over.append(f"{e.source}:{e.line}")
                kept.append(e)
        self.kept += len(kept)
        return kept

    def finish(self) -> list[str]:
        limit = self.max_length
        if self.too_long == "reject" and self.over:
            raise ManifestError(
                f"{len(self.over)} example(s) longer than max_length = {limit} tokens (the LLM's context unless "
                "model.max_length says otherwise); shorten them, raise model.max_length if the LLM allows, or set "
                "model.too_long: truncate:\n" + "\n".join(self.over)
            )
        notes = []
        if self.over:
            notes.append(f"{len(self.over)} example(s) over max_length = {limit} tokens will be cut at the end: "
                         + ", ".join(self.over[:10]) + (" ..." if len(self.over) > 10 else ""))
        if self.dropped:
            notes.append(f"{len(self.dropped)} example(s) skipped because their prompt alone reaches max_length = "
                         f"{limit}: " + ", ".join(self.dropped[:10]) + (" ..." if len(self.dropped) > 10 else ""))
        if not self.kept:
            raise ManifestError(f"no example of {self.source} fits in max_length = {limit} tokens.")
        return notes


def check_lengths(examples: list[Example], processor, max_length: int, too_long: str) -> tuple[list[Example], list[str]]:
    """`LengthCheck` over a list, CHUNK examples at a time (the batched tokenizer's output stays small) → (kept
    examples, notes)."""
    check = LengthCheck(processor, max_length, too_long, examples[0].source if examples else "the manifest")
    kept = [e for start in range(0, len(examples), CHUNK) for e in check.keep(examples[start : start + CHUNK])]
    return kept, check.finish()


# ----------------------------------------------------------------------------------------------------------------------
# Arrow tables
# ----------------------------------------------------------------------------------------------------------------------

# Bump when the table's columns or the checks change, so tables written by older code are rebuilt.
TABLE_VERSION = 5
_JSON_COLUMNS = ("messages", "labels", "choices", "references", "benchmark", "more_audio")


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("audio", pa.string()), ("task", pa.string()), ("length", pa.int32()),
                      ("line", pa.int32()), ("group", pa.string()), *((name, pa.string()) for name in _JSON_COLUMNS)])


def _record_batch(examples: list[Example]):
    import pyarrow as pa

    columns = {"id": [e.id for e in examples], "audio": [e.audio for e in examples], "task": [e.task for e in examples],
               "length": [e.length for e in examples], "line": [e.line for e in examples],
               "group": [e.group for e in examples]}
    for name in _JSON_COLUMNS:  # nested lists as JSON text: one cheap column type, decoded per row on access
        values = [getattr(e, name) for e in examples]  # (more_audio: () for one clip, stored as null)
        columns[name] = [None if v is None or v == () else json.dumps(v) for v in values]
    return pa.RecordBatch.from_pydict(columns, schema=_schema())


def examples_dataset(examples: list[Example]):
    """Examples as an in-memory `datasets.Dataset` with `manifest_table`'s columns (tests, small lists)."""
    from datasets import Dataset, Features

    return Dataset.from_dict(_record_batch(examples).to_pydict(), features=Features.from_arrow_schema(_schema()))


def example_from_row(row: dict, source: str) -> Example:
    """A table row (a dict, as `datasets` returns it) → Example."""
    decoded = {name: None if row.get(name) is None else json.loads(row[name]) for name in _JSON_COLUMNS}
    return Example(row["id"], row["audio"], decoded["messages"], row["task"], row["length"], source, row["line"],
                   decoded["labels"], decoded["choices"], decoded["references"], row.get("group"), decoded["benchmark"],
                   tuple(decoded["more_audio"] or ()))


def _table_key(path: Path, processor, max_length: int, too_long: str, min_seconds: float, bad_audio: str,
               max_bad_audio: float) -> str:
    """What the table depends on: the manifest's bytes (size and modification time stand in), the checks' settings
    and the tokenizer that measured the lengths."""
    stat = path.stat()
    tokenizer = processor.tokenizer
    record = [TABLE_VERSION, str(path.resolve()), stat.st_size, stat.st_mtime_ns, max_length, too_long, min_seconds,
              bad_audio, max_bad_audio, tokenizer.name_or_path, len(tokenizer), tokenizer.chat_template]
    return hashlib.sha256(json.dumps(record, default=str).encode()).hexdigest()[:16]


def manifest_table(path: str | Path, processor, max_length: int, too_long: str, min_seconds: float,
                   cache_dir: str | Path, bad_audio: str = "skip", max_bad_audio: float = 0.05):
    """A training manifest, validated and measured in one streaming pass, as a memory-mapped `datasets.Dataset`
    (columns: id, audio, task, length, line, and messages / labels / choices / references as JSON text).

    The Arrow file is written once under `cache_dir` (atomically) and reused while the manifest, the checks'
    settings and the tokenizer are unchanged. → (dataset, notes about truncated or skipped examples, the rows set
    aside for their audio: [{"manifest", "line", "problem"}]). Raises ManifestError listing every bad line, as
    `validate_manifest` does; rows whose audio cannot be used (unreadable, empty, shorter than `min_seconds`) are
    among them with `bad_audio="error"`, and set aside with "skip" unless they are more than `max_bad_audio` of
    the rows (then something is wrong with the manifest as a whole, such as its audio folder).
    """
    import pyarrow as pa
    from datasets import Dataset

    path, cache_dir = Path(path), Path(cache_dir)
    if not path.is_file():
        list(manifest_lines(path))  # the reader's own error for a folder or a missing file
    if bad_audio not in ("skip", "error"):
        raise ValueError(f"bad_audio = {bad_audio!r}: expected 'skip' or 'error'.")
    key = _table_key(path, processor, max_length, too_long, min_seconds, bad_audio, max_bad_audio)
    arrow, notes_file = cache_dir / f"{path.stem}-{key}.arrow", cache_dir / f"{path.stem}-{key}.json"
    if not (arrow.is_file() and notes_file.is_file()):
        problems, lengths = [], LengthCheck(processor, max_length, too_long, str(path))
        set_aside = [] if bad_audio == "skip" else None
        check_writable(cache_dir)
        tmp = arrow.with_suffix(f".tmp{os.getpid()}")
        try:
            with disk_errors(arrow), pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, _schema()) as writer:
                for chunk in _checked_chunks(path, True, min_seconds, True, problems, set_aside):
                    if kept := lengths.keep(chunk):
                        writer.write_batch(_record_batch(kept))
            written = pa.ipc.open_stream(pa.memory_map(str(tmp))).read_all()
            problems += _duplicate_problems(path, written["id"], written["line"])
            rows = len(written) + len(lengths.over) + len(lengths.dropped) + len(set_aside or [])
            if set_aside and len(set_aside) > max_bad_audio * rows:
                problems += set_aside[:20]
                problems.append((0, f"{path}: {len(set_aside)} of {rows} rows ({len(set_aside) / rows:.1%}) have "
                                    f"audio that cannot be used, over the {max_bad_audio:.0%} that model.max_bad_audio "
                                    "sets aside: check the manifest's audio paths (the first 20 are listed)."))
            _raise_problems(path, problems)
            if not lengths.kept and not lengths.dropped and not lengths.over:
                raise ManifestError(f"{path}: no examples.")
            notes = lengths.finish()
            if set_aside:
                notes.append(f"{path}: {len(set_aside)} row(s) with audio that cannot be used set aside "
                             "(bad_audio: skip); each stage that reads it lists them in its bad_samples.manifest.jsonl")
            os.replace(tmp, arrow)
        finally:
            tmp.unlink(missing_ok=True)
        atomic_write_json(notes_file, {"manifest": str(path), "rows": len(written), "notes": notes,
                                       "set_aside": [{"manifest": str(path), "line": line,
                                                      "problem": problem.split(": ", 1)[1]}
                                                     for line, problem in sorted(set_aside or [])]})
    record = json.loads(notes_file.read_text())
    return Dataset.from_file(str(arrow)), record["notes"], record["set_aside"]
