"""`pal data convert FORMAT`: public datasets and common message formats → our JSONL manifests.

Formats (the input is what each dataset distributes; audio files are looked up under `--audio-dir`):
- `audiocaps`  CSV `audiocap_id, youtube_id, start_time, caption`; audio `{youtube_id}_{start_time}.wav` by default
- `clotho`     CSV `file_name, caption_1..caption_5` (captions) — one row per caption, all five as references
- `clotho-aqa` CSV `file_name, QuestionText, answer[, confidence]`; the annotators' majority answer per question
- `openaqa`    LTU's JSON list of `{instruction, input, audio_id, task, output}`
- `audioset`   segments CSV `YTID, start_seconds, end_seconds, positive_labels` + `--ontology ontology.json`
- `messages`   LLaMA-Factory / ms-swift JSON or JSONL: `{"messages": [...], "audios": ["a.wav"]}`
Every row that cannot be converted is rejected with its reason (a missing audio file, a missing field, more than one
audio, ...), and the written manifest is validated like a training manifest. → a summary of both.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

CAPTION_PROMPT = "Describe what you hear in one sentence."
CLASSIFY_PROMPT = "Which sounds can you hear? List them."


def _turns(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": f"<audio>\n{question}"}, {"role": "assistant", "content": answer}]


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                for row in csv.DictReader(handle, skipinitialspace=True)]


def _need(row: dict, keys: tuple[str, ...]) -> str | None:
    missing = [k for k in keys if not row.get(k)]
    return f"missing {missing}" if missing else None


def audiocaps(path: Path, audio_dir: Path, pattern: str | None = None, **_) -> tuple[list[dict], list[str]]:
    pattern = pattern or "{youtube_id}_{start_time}.wav"
    rows, rejected, by_clip = [], [], {}
    for number, row in enumerate(_read_csv(path), start=2):
        problem = _need(row, ("audiocap_id", "youtube_id", "start_time", "caption"))
        if problem:
            rejected.append(f"line {number}: {problem}")
            continue
        by_clip.setdefault(pattern.format(**row), []).append(row)
    for audio, group in by_clip.items():
        references = [r["caption"] for r in group]
        for r in group:
            rows.append({"id": f"audiocaps-{r['audiocap_id']}", "audio": str(audio_dir / audio), "task": "caption",
                         "messages": _turns(CAPTION_PROMPT, r["caption"]), "references": references})
    return rows, rejected


def clotho(path: Path, audio_dir: Path, **_) -> tuple[list[dict], list[str]]:
    rows, rejected = [], []
    for number, row in enumerate(_read_csv(path), start=2):
        captions = [row[k] for k in sorted(row) if k.startswith("caption_") and row[k]]
        if not row.get("file_name") or not captions:
            rejected.append(f"line {number}: missing file_name or captions")
            continue
        for i, text in enumerate(captions, start=1):
            rows.append({"id": f"clotho-{Path(row['file_name']).stem}-{i}", "audio": str(audio_dir / row["file_name"]),
                         "task": "caption", "messages": _turns(CAPTION_PROMPT, text), "references": captions})
    return rows, rejected


def clotho_aqa(path: Path, audio_dir: Path, **_) -> tuple[list[dict], list[str]]:
    groups, rejected = {}, []
    for number, row in enumerate(_read_csv(path), start=2):
        problem = _need(row, ("file_name", "QuestionText", "answer"))
        if problem:
            rejected.append(f"line {number}: {problem}")
            continue
        if row.get("confidence", "yes").lower() == "no":
            rejected.append(f"line {number}: the annotator was not confident")
            continue
        groups.setdefault((row["file_name"], row["QuestionText"]), []).append(row["answer"].lower())
    rows = []
    for i, ((file_name, question), answers) in enumerate(groups.items()):
        answer = Counter(answers).most_common(1)[0][0]
        rows.append({"id": f"clotho-aqa-{i}", "audio": str(audio_dir / file_name), "task": "qa",
                     "messages": _turns(question, answer)})
    return rows, rejected


OPENAQA_TASKS = {"cla_label": "classify", "cla_label_des": "classify", "caption": "caption",
                 "closed-ended question": "qa", "open-ended question": None}


def openaqa(path: Path, audio_dir: Path, **_) -> tuple[list[dict], list[str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected LTU's JSON list of examples.")
    rows, rejected = [], []
    for i, item in enumerate(data):
        problem = _need(item, ("instruction", "audio_id", "output")) if isinstance(item, dict) else "not an object"
        if problem:
            rejected.append(f"item {i}: {problem}")
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
             **_) -> tuple[list[dict], list[str]]:
    if ontology is None:
        raise ValueError("audioset needs --ontology ontology.json (label ids → names).")
    names = {entry["id"]: entry["name"] for entry in json.loads(Path(ontology).read_text(encoding="utf-8"))}
    pattern = pattern or "{YTID}_{start_seconds}.wav"
    rows, rejected = [], []
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip() and not line.startswith("#")]
    for number, row in enumerate(csv.reader(lines, skipinitialspace=True), start=1):
        if len(row) < 4:
            rejected.append(f"segment {number}: expected YTID, start, end, labels")
            continue
        ytid, start, end, labels = row[0], row[1], row[2], row[3]
        unknown = [x for x in labels.split(",") if x not in names]
        if unknown:
            rejected.append(f"segment {number}: label id(s) {unknown} not in the ontology")
            continue
        label_names = [names[x] for x in labels.split(",")]
        audio = pattern.format(YTID=ytid, start_seconds=start, end_seconds=end)
        rows.append({"id": f"audioset-{ytid}-{start}", "audio": str(audio_dir / audio), "task": "classify",
                     "messages": _turns(CLASSIFY_PROMPT, ", ".join(label_names)), "labels": label_names})
    return rows, rejected


def messages(path: Path, audio_dir: Path, **_) -> tuple[list[dict], list[str]]:
    text = path.read_text(encoding="utf-8")
    items = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    rows, rejected = [], []
    for i, item in enumerate(items):
        audios = item.get("audios") or item.get("audio") or []
        audios = [audios] if isinstance(audios, str) else audios
        if not isinstance(item.get("messages"), list):
            rejected.append(f"item {i}: no \"messages\" list")
            continue
        if len(audios) > 1:
            rejected.append(f"item {i}: {len(audios)} audios; one audio per example")
            continue
        turns = [{"role": m.get("role"), "content": m.get("content")} for m in item["messages"]]
        row = {"id": str(item.get("id", f"messages-{i}")), "messages": turns}
        if audios:
            audio = Path(audios[0])
            row["audio"] = str(audio if audio.is_absolute() else audio_dir / audio)
        if item.get("task"):
            row["task"] = item["task"]
        rows.append(row)
    return rows, rejected


FORMATS = {"audiocaps": audiocaps, "clotho": clotho, "clotho-aqa": clotho_aqa, "openaqa": openaqa,
           "audioset": audioset, "messages": messages}


def convert(kind: str, source: str | Path, out: str | Path, audio_dir: str | Path, check_audio: bool = True,
            **options) -> dict:
    """Convert `source` to the manifest `out`; rows failing our validation are dropped and listed. → summary."""
    from .manifest import ManifestError, validate_manifest  # torch: only when converting, so `pal --help` stays quick

    if kind not in FORMATS:
        raise ValueError(f"format {kind!r}: expected one of {sorted(FORMATS)}.")
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist.")
    rows, rejected = FORMATS[kind](source, Path(audio_dir), **options)
    reasons = Counter(r.split(": ", 1)[1] for r in rejected)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if rows:
        try:
            validate_manifest(out, check_audio=check_audio)
        except ManifestError as err:  # drop the lines our rules refuse, with their reasons
            bad = {}
            for line in str(err).splitlines()[1:]:
                where, _, why = line.partition(": ")
                bad[int(where.rsplit(":", 1)[1])] = why
            kept = [r for n, r in enumerate(rows, start=1) if n not in bad]
            rejected += [f"{rows[n - 1]['id']}: {why}" for n, why in sorted(bad.items())]
            reasons.update(re.sub(r"\S*/\S*", "<path>", why) for why in bad.values())
            rows = kept
            out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out.with_suffix(".rejected.txt")).write_text("".join(f"{r}\n" for r in rejected))
    return {"converted": len(rows), "rejected": len(rejected), "reasons": dict(reasons), "out": str(out)}
