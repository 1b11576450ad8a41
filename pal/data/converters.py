"""`pal data convert FORMAT`: public datasets and common message formats → our JSONL manifests.

Formats (the input is what each dataset distributes; audio files are looked up under `--audio-dir`):
- `audiocaps`  CSV `audiocap_id, youtube_id, start_time, caption`; audio `{youtube_id}_{start_time}.wav` by default
- `clotho`     CSV `file_name, caption_1..caption_5` (captions) — one row per caption, all five as references
- `clotho-aqa` CSV `file_name, QuestionText, answer[, confidence]`; the annotators' majority answer per question
- `openaqa`    LTU's JSON list of `{instruction, input, audio_id, task, output}`
- `audioset`   segments CSV `YTID, start_seconds, end_seconds, positive_labels` + `--ontology ontology.json`
- `messages`   LLaMA-Factory / ms-swift JSON or JSONL: `{"messages": [...], "audios": ["a.wav"]}`
- the benchmarks `mmau`, `mmar`, `air-bench`, `librispeech` (benchmarks.py) and `clotho-aqa` above keep the official
  row under `benchmark`, for `pal eval score --export`
Every row that cannot be converted is set aside with where it stands and why (a line that is not JSON, a missing
field, more than one audio, a missing audio file, ...), counted, and listed in `OUT.skipped.json`; every good row is
written, and the manifest is validated like a training manifest. A file that cannot be read at all (not UTF-8 text,
not a CSV), or an option that names a column the file does not have, is an error that says so before anything is
written.
"""

from __future__ import annotations

import csv
import json
import string
from collections import Counter
from pathlib import Path

CAPTION_PROMPT = "Describe what you hear in one sentence."
CLASSIFY_PROMPT = "Which sounds can you hear? List them."
CLOTHO_AQA_INSTRUCTION = "Answer the question using a single word only."  # lmms-eval's clotho_aqa task


def _turns(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": f"<audio>\n{question}"}, {"role": "assistant", "content": answer}]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}): "
                         "give the dataset's CSV or JSON file, saved as UTF-8.") from None


def _read_csv(path: Path) -> list[dict]:
    text = _read_text(path)
    try:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                for row in csv.DictReader(text.splitlines(), skipinitialspace=True)]
    except csv.Error as err:
        raise ValueError(f"{path}: not a CSV file ({err}).") from None


def _need(row: dict, keys: tuple[str, ...]) -> str | None:
    missing = [k for k in keys if not row.get(k)]
    return f"missing {missing}" if missing else None


def _audio_pattern(pattern: str, columns, option: str = "--audio-pattern") -> str:
    """`pattern` if every {field} in it is one of `columns`; else a ValueError naming the field and the columns."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as err:
        raise ValueError(f"{option} {pattern!r}: {err}.") from None
    unknown = sorted(fields - set(columns))
    if unknown or "" in fields:
        raise ValueError(f"{option} {pattern!r} names {unknown or ['{}']}, which the file does not have: use "
                         f"{', '.join('{' + c + '}' for c in columns)}.")
    return pattern


def _json_items(path: Path) -> tuple[list[tuple[str, object]], list[tuple[str, str]]]:
    """A JSON list or a JSONL file → ([(where, item)], [(where, why)] for the lines that are not JSON)."""
    text = _read_text(path)
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg}).") from None
        return [(f"item {i}", item) for i, item in enumerate(data)], []
    items, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            bad.append((f"line {number}", f"not valid JSON ({err.msg})"))
    return items, bad


Rejected = list[tuple[str, str]]  # (where: "line 4", "item 2" or an id; why)


def audiocaps(path: Path, audio_dir: Path, pattern: str | None = None, **_) -> tuple[list[dict], Rejected]:
    table = _read_csv(path)
    pattern = _audio_pattern(pattern or "{youtube_id}_{start_time}.wav", table[0] if table else
                             ("audiocap_id", "youtube_id", "start_time", "caption"))
    rows, rejected, by_clip = [], [], {}
    for number, row in enumerate(table, start=2):
        problem = _need(row, ("audiocap_id", "youtube_id", "start_time", "caption"))
        if problem:
            rejected.append((f"line {number}", problem))
            continue
        by_clip.setdefault(pattern.format(**row), []).append(row)
    for audio, group in by_clip.items():
        references = [r["caption"] for r in group]
        for r in group:
            rows.append({"id": f"audiocaps-{r['audiocap_id']}", "audio": str(audio_dir / audio), "task": "caption",
                         "messages": _turns(CAPTION_PROMPT, r["caption"]), "references": references})
    return rows, rejected


def clotho(path: Path, audio_dir: Path, **_) -> tuple[list[dict], Rejected]:
    rows, rejected = [], []
    for number, row in enumerate(_read_csv(path), start=2):
        captions = [row[k] for k in sorted(row) if k.startswith("caption_") and row[k]]
        if not row.get("file_name") or not captions:
            rejected.append((f"line {number}", "missing file_name or captions"))
            continue
        for i, text in enumerate(captions, start=1):
            rows.append({"id": f"clotho-{Path(row['file_name']).stem}-{i}", "audio": str(audio_dir / row["file_name"]),
                         "task": "caption", "messages": _turns(CAPTION_PROMPT, text), "references": captions})
    return rows, rejected


def clotho_aqa(path: Path, audio_dir: Path, **_) -> tuple[list[dict], Rejected]:
    """One row per question: the annotators' majority answer (confident ones only) is the gold answer; the prompt is
    lmms-eval's (the question, then "Answer the question using a single word only."), scored by its exact match."""
    groups, rejected = {}, []
    for number, row in enumerate(_read_csv(path), start=2):
        problem = _need(row, ("file_name", "QuestionText", "answer"))
        if problem:
            rejected.append((f"line {number}", problem))
            continue
        if row.get("confidence", "yes").lower() == "no":
            rejected.append((f"line {number}", "the annotator was not confident"))
            continue
        groups.setdefault((row["file_name"], row["QuestionText"]), []).append(row["answer"].lower())
    rows = []
    for i, ((file_name, question), answers) in enumerate(groups.items()):
        answer = Counter(answers).most_common(1)[0][0]
        official = {"file_name": file_name, "QuestionText": question, "answers": answers}
        kind = "yes_no" if answer in ("yes", "no") else "one_word"
        rows.append({"id": f"clotho-aqa-{i}", "audio": str(audio_dir / file_name), "task": "qa",
                     "messages": _turns(f"{question}\n{CLOTHO_AQA_INSTRUCTION}", answer),
                     "benchmark": {"name": "clotho-aqa", "row": official, "breakdown": {"answer_type": kind}}})
    return rows, rejected


OPENAQA_TASKS = {"cla_label": "classify", "cla_label_des": "classify", "caption": "caption",
                 "closed-ended question": "qa", "open-ended question": None}


def openaqa(path: Path, audio_dir: Path, **_) -> tuple[list[dict], Rejected]:
    items, rejected = _json_items(path)
    rows = []
    for i, (where, item) in enumerate(items):
        problem = _need(item, ("instruction", "audio_id", "output")) if isinstance(item, dict) else "not an object"
        if not problem and not all(isinstance(item.get(k, ""), str) for k in ("instruction", "input", "audio_id",
                                                                               "output", "task")):
            problem = "instruction, input, audio_id, output and task must be strings"
        if problem:
            rejected.append((where, problem))
            continue
        question = item["instruction"] + (f"\n{item['input']}" if item.get("input") else "")
        audio = Path(item["audio_id"])
        row = {"id": f"openaqa-{i}", "audio": str(audio if audio.is_absolute() else audio_dir / audio),
               "messages": _turns(question, item["output"])}
        task = OPENAQA_TASKS.get(item.get("task", ""), None)
        if task:
            row["task"] = task
        rows.append(row)
    return rows, rejected


def audioset(path: Path, audio_dir: Path, ontology: Path | None = None, pattern: str | None = None,
             **_) -> tuple[list[dict], Rejected]:
    if ontology is None:
        raise ValueError("audioset needs --ontology ontology.json (label ids → names).")
    try:
        names = {entry["id"]: entry["name"] for entry in json.loads(_read_text(Path(ontology)))}
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise ValueError(f"{ontology}: expected AudioSet's ontology.json, a list of {{id, name}} ({err}).") from None
    pattern = _audio_pattern(pattern or "{YTID}_{start_seconds}.wav", ("YTID", "start_seconds", "end_seconds"))
    rows, rejected = [], []
    lines = [line for line in _read_text(path).splitlines() if line.strip() and not line.startswith("#")]
    try:
        table = list(csv.reader(lines, skipinitialspace=True))
    except csv.Error as err:
        raise ValueError(f"{path}: not a CSV file ({err}).") from None
    for number, row in enumerate(table, start=1):
        if len(row) < 4:
            rejected.append((f"segment {number}", "expected YTID, start, end, labels"))
            continue
        ytid, start, end, labels = row[0], row[1], row[2], row[3]
        unknown = [x for x in labels.split(",") if x not in names]
        if unknown:
            rejected.append((f"segment {number}", f"label id(s) {unknown} not in the ontology"))
            continue
        label_names = [names[x] for x in labels.split(",")]
        audio = pattern.format(YTID=ytid, start_seconds=start, end_seconds=end)
        rows.append({"id": f"audioset-{ytid}-{start}", "audio": str(audio_dir / audio), "task": "classify",
                     "messages": _turns(CLASSIFY_PROMPT, ", ".join(label_names)), "labels": label_names})
    return rows, rejected


def messages(path: Path, audio_dir: Path, **_) -> tuple[list[dict], Rejected]:
    items, rejected = _json_items(path)
    rows = []
    for i, (where, item) in enumerate(items):
        if not isinstance(item, dict):
            rejected.append((where, f"expected an object with \"messages\", found {type(item).__name__}"))
            continue
        audios = item.get("audios") or item.get("audio") or []
        audios = [audios] if isinstance(audios, str) else audios
        if not isinstance(item.get("messages"), list) or not all(isinstance(m, dict) for m in item["messages"]):
            rejected.append((where, "no \"messages\" list of {role, content} objects"))
            continue
        if not isinstance(audios, list) or not all(isinstance(a, str) and a for a in audios):
            rejected.append((where, f"audios = {audios!r}: expected a list of audio file paths"))
            continue
        turns = [{"role": m.get("role"), "content": m.get("content")} for m in item["messages"]]
        row = {"id": str(item.get("id", f"messages-{i}")), "messages": turns}
        paths = [str(Path(a) if Path(a).is_absolute() else audio_dir / a) for a in audios]
        if len(paths) == 1:
            row["audio"] = paths[0]
        elif paths:  # a question about several clips (docs/model.md#several-clips)
            row["audios"] = paths
        if item.get("task"):
            row["task"] = item["task"]
        rows.append(row)
    return rows, rejected


FORMATS = {"audiocaps": audiocaps, "clotho": clotho, "clotho-aqa": clotho_aqa, "openaqa": openaqa,
           "audioset": audioset, "messages": messages}
