"""Where a manifest's audio comes from: a file, or one row of a Hugging Face dataset read in place.

A manifest's `audio` is a file path (relative to the manifest's folder, or absolute) or a dataset row,

    dataset://LOCATION/SPLIT/COLUMN/ROW     e.g. "dataset://clotho-hf/development/audio/17"

LOCATION a `save_to_disk` folder, or a folder of the Parquet or Arrow files a Hub dataset is distributed as (relative
to the manifest's folder, or absolute); SPLIT, COLUMN and ROW the split, its audio column and the row's index.
`pal data convert hf` writes such rows. The row's encoded bytes (an `Audio` column read with `decode=False`, or a
binary column) are decoded by our own reader like a file's, so a dataset's audio is never copied out to files; a
column holding paths names files relative to LOCATION. `datasets` is imported only when a row is read.

Everything that touches a manifest's audio goes through here: resolving it (`resolve_audio`), whether it exists,
its bytes or file (`audio_source`), its content hash (`audio_hash`: the same for a row and for a file holding the same
bytes) and a name that identifies it across manifests (`audio_identity`).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .hashing import file_hash

SCHEME = "dataset://"


class AudioSourceError(ValueError):
    """An audio entry that names nothing readable: a missing dataset, split, column or row."""


@dataclass(frozen=True)
class DatasetAudio:
    """One row's audio of a Hugging Face dataset; `str()` gives its `dataset://` form."""

    location: str
    split: str
    column: str
    row: int

    def __str__(self) -> str:
        return f"{SCHEME}{self.location}/{self.split}/{self.column}/{self.row}"


def dataset_audio(audio: str) -> DatasetAudio | None:
    """The dataset row an audio entry names, or None for a file path; AudioSourceError for a malformed one."""
    if not audio.startswith(SCHEME):
        return None
    parts = audio[len(SCHEME):].rsplit("/", 3)
    if len(parts) != 4 or not all(parts[:3]) or not parts[3].isdigit():
        raise AudioSourceError(f"audio {audio!r}: expected {SCHEME}LOCATION/SPLIT/COLUMN/ROW (ROW a row index).")
    return DatasetAudio(parts[0], parts[1], parts[2], int(parts[3]))


def resolve_audio(audio: str, manifest: str | Path) -> str:
    """An `audio` entry with its file (or its dataset's folder) made absolute: as given (~ expanded) when absolute,
    else relative to the manifest's folder."""
    row = dataset_audio(audio)
    path = Path(row.location if row else audio).expanduser()
    path = path if path.is_absolute() else Path(manifest).parent / path
    return str(replace(row, location=os.path.abspath(path))) if row else str(path)


def audio_identity(audio: str) -> str:
    """A resolved audio entry as one name per clip wherever it was read from: a file's real path, or the row."""
    return audio if dataset_audio(audio) else str(Path(audio).resolve())


def open_dataset(location: str | Path, split: str | None = None):
    """A Hugging Face dataset folder, opened by `datasets` itself: a `save_to_disk` folder is memory-mapped in place;
    a folder of the Parquet or Arrow files the Hub serves goes through `load_dataset` (which converts them to Arrow
    once, in its own cache). → the split `split` (None: the only one); AudioSourceError naming what is missing."""
    import datasets

    folder = Path(location)
    if not folder.exists():
        raise AudioSourceError(f"dataset {location} does not exist.")
    try:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(str(folder))
    except Exception as err:  # FileNotFoundError, DatasetNotFoundError, ValueError: all mean "not a dataset here"
        raise AudioSourceError(f"dataset {location} cannot be opened by `datasets`: {err}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        if split not in loaded:
            raise AudioSourceError(f"dataset {location} has no split {split!r}; its splits: {sorted(loaded)} (choose "
                                   "one with --split).")
        loaded = loaded[split]
    return loaded


@functools.lru_cache(maxsize=16)
def _split(location: str, split: str, column: str):
    """The split's `column` alone, audio left encoded: opened once per process (memory-mapped Arrow files)."""
    import datasets

    loaded = open_dataset(location, split)
    if column not in loaded.column_names:
        raise AudioSourceError(f"dataset {location} (split {split}) has no column {column!r}; its columns: "
                               f"{loaded.column_names}.")
    loaded = loaded.select_columns([column])
    if isinstance(loaded.features[column], datasets.Audio):
        loaded = loaded.cast_column(column, datasets.Audio(decode=False))  # {"bytes", "path"}: we decode
    return loaded


def audio_source(audio: str) -> Path | bytes:
    """A resolved audio entry → the file to read, or the dataset row's encoded bytes; AudioSourceError if the row
    cannot be read."""
    row = dataset_audio(audio)
    if row is None:
        return Path(audio)
    data = _split(row.location, row.split, row.column)
    if row.row >= len(data):
        raise AudioSourceError(f"{audio}: row {row.row} does not exist (split {row.split} has {len(data)} rows).")
    value = data[row.row][row.column]
    found, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
    if isinstance(found, str):  # a column of file names
        found, path = None, found
    if isinstance(found, (bytes, bytearray)) and found:
        return bytes(found)
    if path:
        return Path(path) if Path(path).is_absolute() else Path(row.location) / path
    raise AudioSourceError(f"{audio}: the column holds {type(value).__name__} {str(value)[:60]!r}, neither encoded "
                           "audio bytes nor a file name.")


def bytes_hash(data: bytes) -> str:
    """`file_hash` of a file holding these bytes, without the file."""
    return hashlib.sha256(f"\0{len(data)}\0".encode() + data).hexdigest()[:16]


def audio_hash(audio: str) -> str:
    """The content hash of a resolved audio entry (a dataset row and a file with the same bytes hash alike)."""
    source = audio_source(audio)
    return file_hash(source) if isinstance(source, Path) else bytes_hash(source)


def audio_problem(audio: str) -> str | None:
    """Why a resolved audio entry cannot be read before its header is looked at (no file, no row), or None."""
    try:
        source = audio_source(audio)
    except AudioSourceError as err:
        return str(err)
    if isinstance(source, Path) and source.is_dir():
        return f"audio {source} is a folder, not an audio file."
    if isinstance(source, Path) and not source.is_file():
        return f"audio file {source} does not exist."
    return None
