"""`pal data convert hf DATASET`: a Hugging Face dataset (a `save_to_disk` folder, or the Parquet / Arrow files a Hub
dataset is distributed as) → our manifest, its audio left inside the dataset.

Each row of the manifest names its audio as a row of the dataset (`dataset://DATASET/SPLIT/COLUMN/ROW`,
pal/common/audio_source.py), read in place wherever the manifest is used: training, the feature cache, evaluation.
The text comes from the columns the user names, one way per manifest:
- `--caption-columns C1 [C2 ...]`   captions: one row per non-empty caption, every caption of the clip as references
- `--question-column Q --answer-column A`   open or closed questions (task qa)
- `--label-column L`   event labels (a list, or one string; task classify)
- `--transcript-column T`   speech to text (task asr)
- `--messages-column M`   whole conversations, LLaMA-Factory style `[{"role", "content"}, ...]`
A row whose text column is empty or of the wrong type is set aside with its row and column; a row whose audio cannot
be read is set aside by the manifest's validation, with the same row named.
"""

from __future__ import annotations

from pathlib import Path

from pal.common.audio_source import AudioSourceError, DatasetAudio, open_dataset

from .converters import CAPTION_PROMPT, CLASSIFY_PROMPT, Rejected, _turns

ASR_PROMPT = "Transcribe the speech."  # the demo's and the LibriSpeech benchmark's


def _text(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _conversation(row: dict, mode: str, columns: dict) -> tuple[dict | list[dict] | None, str | None]:
    """(the manifest fields of this dataset row, or a list of them for several captions; None and why if it has none)."""
    if mode == "caption":
        captions = [c for c in (_text(row.get(k)) for k in columns["caption"]) if c]
        if not captions:
            return None, f"no caption in columns {columns['caption']}"
        return [{"task": "caption", "messages": _turns(CAPTION_PROMPT, c), "references": captions} for c in captions], None
    if mode == "qa":
        question, answer = _text(row.get(columns["question"])), _text(row.get(columns["answer"]))
        if not question or not answer:
            return None, f"empty or missing {columns['question']!r} or {columns['answer']!r}"
        return {"task": "qa", "messages": _turns(question, answer)}, None
    if mode == "classify":
        labels = row.get(columns["label"])
        labels = [labels] if isinstance(labels, str) else labels
        if not isinstance(labels, list) or not labels or not all(_text(x) for x in labels):
            return None, f"{columns['label']!r} = {str(labels)[:60]!r}: expected a label or a list of labels"
        labels = [x.strip() for x in labels]
        return {"task": "classify", "messages": _turns(CLASSIFY_PROMPT, ", ".join(labels)), "labels": labels}, None
    if mode == "asr":
        transcript = _text(row.get(columns["transcript"]))
        if not transcript:
            return None, f"empty or missing {columns['transcript']!r}"
        return {"task": "asr", "messages": _turns(ASR_PROMPT, transcript), "references": [transcript]}, None
    turns = row.get(columns["messages"])
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return None, f"{columns['messages']!r} is not a list of {{role, content}} turns"
    turns = [{"role": t.get("role"), "content": t.get("content")} for t in turns]
    first_user = next((t for t in turns if t["role"] == "user" and isinstance(t["content"], str)), None)
    if first_user is not None and "<audio>" not in "".join(str(t["content"]) for t in turns):
        first_user["content"] = f"<audio>\n{first_user['content']}"  # the clip goes before the first question
    return {"messages": turns}, None


def text_mode(kind: str, what: str, **columns) -> tuple[str, dict]:
    """The one way the user named the text (`columns`: caption, question, answer, label, transcript, messages →
    the names given or None) → (the mode `_conversation` reads, the columns); ValueError unless exactly one way."""
    given = {"caption": columns["caption"], "qa": columns["question"] or columns["answer"],
             "classify": columns["label"], "asr": columns["transcript"], "messages": columns["messages"]}
    chosen = [mode for mode, named in given.items() if named]
    if len(chosen) != 1:
        raise ValueError(f"{kind}: name the text {what} one way: --caption-columns, --question-column with "
                         "--answer-column, --label-column, --transcript-column or --messages-column.")
    if chosen[0] == "qa" and not (columns["question"] and columns["answer"]):
        raise ValueError(f"{kind}: questions need both --question-column and --answer-column.")
    return chosen[0], columns


def with_placeholders(messages: list[dict], clips: int) -> list[dict]:
    """A conversation about `clips` clips: the one `<audio>` a converter put in front of the first question becomes
    one per clip, in column order; a conversation that already holds a placeholder per clip stays as it is (any other
    count is named by the manifest's validation)."""
    placed = sum(str(m["content"]).count("<audio>") for m in messages if m["role"] != "assistant")
    if clips == 1 or placed != 1:
        return messages
    first = next(i for i, m in enumerate(messages) if "<audio>" in str(m["content"]))
    turn = dict(messages[first], content=messages[first]["content"].replace("<audio>\n", "<audio>\n" * clips, 1))
    return messages[:first] + [turn] + messages[first + 1:]


def hf_dataset(path: Path, audio_dir: Path, split: str | None = None, audio_column: str | list[str] = "audio",
               id_column: str | None = None, caption_columns: list[str] | None = None,
               question_column: str | None = None, answer_column: str | None = None, label_column: str | None = None,
               transcript_column: str | None = None, messages_column: str | None = None,
               **_) -> tuple[list[dict], Rejected]:
    """The rows of one split of the dataset at `path` (audio_dir is not used: the audio is in the dataset). Several
    `audio_column`s: each row a question about several clips, one per column, in that order (`"audios"`)."""
    audio_columns = [audio_column] if isinstance(audio_column, str) else list(audio_column)
    mode, columns = text_mode("hf", "columns", caption=caption_columns, question=question_column,
                              answer=answer_column, label=label_column, transcript=transcript_column,
                              messages=messages_column)
    try:
        data = open_dataset(path, split)
    except AudioSourceError as err:
        raise ValueError(str(err)) from None
    named = [c for c in ([*audio_columns, id_column] + [v for k, v in columns.items() if k != "caption"]
                         + (caption_columns or [])) if c]
    missing = [c for c in named if c not in data.column_names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing} in split {split or data.split}; its columns: "
                         f"{data.column_names}.")
    split_name = split or str(data.split or "train")
    text = data.remove_columns(audio_columns)  # the text alone: the audio stays where it is, read per row later
    rows, rejected = [], []
    for index, row in enumerate(text):
        fields, problem = _conversation(row, mode, columns)
        if problem:
            rejected.append((f"{split_name} row {index}", problem))
            continue
        audios = [str(DatasetAudio(str(Path(path).resolve()), split_name, c, index)) for c in audio_columns]
        clips = {"audio": audios[0]} if len(audios) == 1 else {"audios": audios}
        name = str(row[id_column]) if id_column else f"{Path(path).name}-{split_name}-{index}"
        many = fields if isinstance(fields, list) else [fields]
        for k, one in enumerate(many):  # several captions of one clip: a row each, numbered
            one = {**one, "messages": with_placeholders(one["messages"], len(audios))}
            rows.append({"id": f"{name}-{k + 1}" if len(many) > 1 else name, **clips, **one})
    return rows, rejected
