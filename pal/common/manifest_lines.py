"""Reading JSONL manifests, one line at a time: the one reader behind every manifest of the project (training and
evaluation manifests, feature-cache and SSLAM pre-training audio lists). What a line must hold is each user's
business; here only UTF-8, JSON and where relative audio paths point."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from .audio_source import audio_identity, resolve_audio  # noqa: F401 - resolve_audio: readers import it here


class ManifestError(ValueError):
    """Every problem of a manifest, one per line of the message: `path:line: what is wrong`."""


def manifest_lines(path: str | Path) -> Iterator[tuple[int, object, str | None]]:
    """(line number from 1, the parsed JSON value or None, the problem or None) for each non-blank line.

    Streams: a manifest of millions of lines is never held in memory."""
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder; expected a JSONL manifest file.")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found.")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, None, (f"not UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1}); re-encode the "
                                     "manifest as UTF-8.")
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as err:
                yield number, None, f"not valid JSON ({err.msg} at column {err.colno})."


def audio_paths(path: str | Path) -> list[str]:
    """The audio of a JSONL manifest (`{"audio": ...}` per line: a file relative to the manifest's folder, or a
    dataset row, audio_source.py), each resolved once, for the feature cache and SSLAM pre-training; ManifestError
    listing every line without an audio string."""
    audio, problems = [], []
    for number, row, problem in manifest_lines(path):
        if problem is None and not (isinstance(row, dict) and isinstance(row.get("audio"), str) and row["audio"].strip()):
            problem = "each line needs an \"audio\" path string."
        if problem:
            problems.append(f"{path}:{number}: {problem}")
        else:
            audio.append(audio_identity(resolve_audio(row["audio"], path)))
    if problems:
        raise ManifestError(f"{len(problems)} problem(s) in manifest {path}:\n" + "\n".join(problems))
    return audio
