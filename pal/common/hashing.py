"""Content hashes of files and folders: what identifies audio, weights and manifests wherever they lie."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (of a folder: of every file's path inside it and bytes, in name order), first 16 hex
    digits. Where the file or folder lies and what it is called do not count, so a moved or renamed file keeps its
    identity.

    Memoised on (path, size, modification time), so a cache lookup per training step does not re-read the audio;
    an edited file gets a new entry.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamps = tuple((str(f), f.relative_to(path).as_posix() if f != path else "", f.stat().st_size, f.stat().st_mtime_ns)
                   for f in files)
    return _hash_files(stamps)


@lru_cache(maxsize=1 << 16)
def _hash_files(stamps: tuple) -> str:
    digest = hashlib.sha256()
    for name, inside, size, _ in stamps:
        digest.update(f"{inside}\0{size}\0".encode())  # the size ends each file's bytes: no two folders hash alike
        with open(name, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]
