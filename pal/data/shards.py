"""`pal data convert wds SHARDS`: WebDataset tar shards (a folder of `.tar` files, or one) → our manifest, the audio
left inside the shards.

A WebDataset sample is the members of a shard that share a key (`clip00042.flac`, `clip00042.json`, ...); the
`webdataset` package groups them. Each sample becomes one row (or one per caption) whose audio is the shard member
(`tar://SHARD.tar#clip00042.flac`, pal/common/audio_source.py), read in place wherever the manifest is used. Its
text comes from the fields named as for `pal data convert hf` (`--caption-columns`, `--question-column` with
`--answer-column`, ...), looked up in the sample's JSON member, or else a member with that extension (`caption.txt`
style). A sample without audio or text is set aside with its shard and key; a shard that cannot be read to its end
is counted with its error, the samples read before it kept; a member whose bytes are not audio is set aside by the
manifest's validation. Rows are indexed (mixtures, epochs, length grouping and exact resume work as for files), so
the shards must lie on a seekable file system.
"""

from __future__ import annotations

import json
from pathlib import Path

from pal.common.audio_source import ShardMember

from .converters import Rejected
from .hub import _conversation, text_mode

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus", "m4a")


def _shards(path: Path) -> list[Path]:
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not shards:
        raise ValueError(f"{path}: no .tar shards in this folder.")
    return shards


def _fields(sample: dict, json_key: str) -> tuple[dict, str | None]:
    """The sample's text fields: its JSON member's object, plus each other member decoded as UTF-8 text by its
    extension (a field of the JSON wins)."""
    fields = {}
    for key, value in sample.items():
        if key.startswith("__") or key == json_key or not isinstance(value, bytes):
            continue
        try:
            fields[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            continue  # binary: the audio, or something else
    if json_key in sample:
        try:
            found = json.loads(sample[json_key])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return fields, f"its .{json_key} member is not JSON ({err})"
        if not isinstance(found, dict):
            return fields, f"its .{json_key} member holds {type(found).__name__}, not an object"
        fields.update(found)
    return fields, None


def webdataset_shards(path: Path, audio_dir: Path, audio_column: str | None = None, json_key: str = "json",
                      id_column: str | None = None, caption_columns: list[str] | None = None,
                      question_column: str | None = None, answer_column: str | None = None,
                      label_column: str | None = None, transcript_column: str | None = None,
                      messages_column: str | None = None, **_) -> tuple[list[dict], Rejected]:
    """Every sample of every shard under `path` (audio_dir is not used: the audio is in the shards). `audio_column`:
    the audio member's extension (default: the first of AUDIO_EXTENSIONS the sample has)."""
    import webdataset

    mode, columns = text_mode("wds", "fields", caption=caption_columns, question=question_column,
                              answer=answer_column, label=label_column, transcript=transcript_column,
                              messages=messages_column)
    extensions = (audio_column,) if audio_column and audio_column != "audio" else AUDIO_EXTENSIONS
    rows, rejected = [], []
    for shard in _shards(path):
        errors = []  # a damaged shard: keep what was read before the damage, count the rest
        samples = webdataset.WebDataset(str(shard), shardshuffle=False, handler=lambda exn, seen=errors: seen.append(exn),
                                        empty_check=False)
        for sample in samples:
            where = f"{shard.name} {sample['__key__']}"
            extension = next((e for e in extensions if e in sample), None)
            if extension is None:
                rejected.append((where, f"no audio member ({', '.join('.' + e for e in extensions)})"))
                continue
            fields, problem = _fields(sample, json_key)
            if problem is None:
                conversation, problem = _conversation(fields, mode, columns)
            if problem:
                rejected.append((where, problem))
                continue
            audio = str(ShardMember(str(shard.resolve()), f"{sample['__key__']}.{extension}"))
            name = str(fields[id_column]) if id_column and id_column in fields else sample["__key__"]
            many = conversation if isinstance(conversation, list) else [conversation]
            for k, one in enumerate(many):  # several captions of one clip: a row each, numbered
                rows.append({"id": f"{name}-{k + 1}" if len(many) > 1 else name, "audio": audio, **one})
        if errors:
            rejected.append((shard.name, f"the shard could not be read to its end ({errors[0]}); the samples "
                                         "before the damage were kept"))
    return rows, rejected
