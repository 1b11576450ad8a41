"""Where a manifest's audio comes from: a file, one row of a Hugging Face dataset, or one member of a WebDataset
shard, each read in place.

A manifest's `audio` is a file path (relative to the manifest's folder, or absolute), a dataset row or a shard member,

    dataset://LOCATION/SPLIT/COLUMN/ROW     e.g. "dataset://clotho-hf/development/audio/17"
    tar://SHARD.tar#MEMBER                  e.g. "tar://shards/train-0003.tar#clip00042.flac"

LOCATION a `save_to_disk` folder, or a folder of the Parquet or Arrow files a Hub dataset is distributed as; SHARD a
tar file (both relative to the manifest's folder, or absolute); SPLIT, COLUMN and ROW the split, its audio column and
the row's index; MEMBER the audio file inside the shard. `pal data convert hf` and `pal data convert wds` write such
rows. The encoded bytes (an `Audio` column read with `decode=False`, a binary column, a shard member) are decoded by
our own reader like a file's, so a dataset's audio is never copied out to files; a column holding paths names files
relative to LOCATION. `datasets` is imported only when a row is read; a shard's member list is read once per process
(`tarfile`), and each member's bytes are read by seeking to them.

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


@dataclass(frozen=True)
class ShardMember:
    """One member of a WebDataset shard (a tar file); `str()` gives its `tar://` form."""

    shard: str
    member: str

    def __str__(self) -> str:
        return f"{TAR_SCHEME}{self.shard}#{self.member}"


TAR_SCHEME = "tar://"


def shard_member(audio: str) -> ShardMember | None:
    """The shard member an audio entry names, or None; AudioSourceError for a malformed one."""
    if not audio.startswith(TAR_SCHEME):
        return None
    shard, found, member = audio[len(TAR_SCHEME):].rpartition(".tar#")
    if not found or not shard or not member:
        raise AudioSourceError(f"audio {audio!r}: expected {TAR_SCHEME}SHARD.tar#MEMBER.")
    return ShardMember(shard + ".tar", member)


def _container(audio: str) -> tuple[DatasetAudio | ShardMember | None, str]:
    """(the dataset row or shard member an entry names, or None; the path it lies at: the file, folder or shard)."""
    inside = dataset_audio(audio) or shard_member(audio)
    return inside, inside.location if isinstance(inside, DatasetAudio) else inside.shard if inside else audio


def with_path(audio: str, path: str) -> str:
    """The same audio entry with its file, dataset folder or shard at `path`."""
    inside, _ = _container(audio)
    if isinstance(inside, DatasetAudio):
        return str(replace(inside, location=path))
    return str(replace(inside, shard=path)) if inside else path


def resolve_audio(audio: str, manifest: str | Path) -> str:
    """An `audio` entry with its file (or its dataset's folder, or its shard) made absolute: as given (~ expanded)
    when absolute, else relative to the manifest's folder."""
    inside, at = _container(audio)
    path = Path(at).expanduser()
    path = path if path.is_absolute() else Path(manifest).parent / path
    return with_path(audio, os.path.abspath(path)) if inside else str(path)


def read_in_place(audio: str) -> bool:
    """Whether an audio entry names a dataset row or a shard member (its bytes come from `audio_source`)."""
    return audio.startswith((SCHEME, TAR_SCHEME))


def audio_path(audio: str) -> str:
    """Where an audio entry lies on disk: the file, the dataset's folder or the shard."""
    return _container(audio)[1]


def audio_identity(audio: str) -> str:
    """A resolved audio entry as one name per clip wherever it was read from: a file's real path, or the row or
    member (its container's real path)."""
    inside, at = _container(audio)
    return with_path(audio, str(Path(at).resolve())) if inside else str(Path(audio).resolve())


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


@functools.lru_cache(maxsize=256)
def _members(shard: str) -> dict[str, tuple[int, int]]:
    """{member name: (offset of its bytes, size)} of a shard, read once per process by `tarfile`; a shard damaged
    part-way lists the members before the damage."""
    import tarfile

    if not Path(shard).is_file():
        raise AudioSourceError(f"shard {shard} does not exist.")
    members = {}
    try:
        with tarfile.open(shard) as tar:
            for info in tar:
                if info.isfile():
                    members[info.name] = (info.offset_data, info.size)
    except (tarfile.TarError, OSError) as err:
        if not members:
            raise AudioSourceError(f"shard {shard} is not a readable tar file ({err}).") from None
    return members


def _member_bytes(shard: str, member: str) -> bytes:
    members = _members(shard)
    if member not in members:
        raise AudioSourceError(f"shard {shard} has no member {member!r}.")
    offset, size = members[member]
    with open(shard, "rb") as handle:  # a handle per read: forked DataLoader workers share no file position
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise AudioSourceError(f"shard {shard}: member {member!r} is cut short ({len(data)} of {size} bytes).")
    return data


def audio_source(audio: str) -> Path | bytes:
    """A resolved audio entry → the file to read, or the dataset row's or shard member's encoded bytes;
    AudioSourceError if the row or member cannot be read."""
    member = shard_member(audio)
    if member is not None:
        return _member_bytes(member.shard, member.member)
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
