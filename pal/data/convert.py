"""`pal data convert FORMAT INPUT --out M.jsonl`: run a dataset's or a benchmark's converter, validate what it wrote
like a training manifest, and set aside (counted, with where and why) every row that cannot be used."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

from pal.common.safe_write import atomic_write_json, atomic_write_text, check_writable

from .benchmarks import CONVERTERS
from .converters import FORMATS
from .hub import hf_dataset
from .shards import webdataset_shards


def formats() -> dict:
    """Every format `pal data convert` reads: the datasets (converters.py) and the benchmarks (benchmarks.py)."""
    return FORMATS | CONVERTERS | {"hf": hf_dataset, "wds": webdataset_shards}


def portable_audio(row: dict, folder: Path) -> dict:
    """`row` with its absolute audio path (or a dataset row's dataset folder) made relative to `folder` (the
    manifest's) when it lies inside it, so the dataset folder can move with its manifest; audio elsewhere stays
    absolute, so the manifest alone can move."""
    from pal.common.audio_source import audio_path, with_path

    def portable(audio):
        if not isinstance(audio, str):
            return audio
        path = audio_path(audio)
        if os.path.isabs(path):
            relative = os.path.relpath(path, folder)
            if not (relative == os.pardir or relative.startswith(os.pardir + os.sep)):
                return with_path(audio, relative)
        return audio

    if isinstance(row.get("audios"), list):  # a question about several clips
        return {**row, "audios": [portable(a) for a in row["audios"]]}
    return {**row, "audio": portable(row["audio"])} if "audio" in row else row


def convert(kind: str, source: str | Path, out: str | Path, audio_dir: str | Path, check_audio: bool = True,
            **options) -> dict:
    """Convert `source` to the manifest `out`; rows that cannot be converted, or that our validation refuses, are
    set aside and listed in `OUT.skipped.json` ([{where, why}]). → summary."""
    from .manifest import ManifestError, validate_manifest  # torch: only when converting, so `pal --help` stays quick

    known = formats()
    if kind not in known:
        raise ValueError(f"format {kind!r}: expected one of {sorted(known)}.")
    source, out = Path(source), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist.")
    # The converters resolve audio against the working directory that `--audio-dir` (and a LibriSpeech split folder)
    # was given in; the manifest then holds them relative to its own folder, where it can (`portable_audio`).
    rows, rejected = known[kind](Path(os.path.abspath(source)), Path(os.path.abspath(audio_dir)), **options)
    rows = [portable_audio(row, Path(os.path.abspath(out.parent))) for row in rows]
    rejected = [(f"{source.name} {where}", why) for where, why in rejected]
    reasons = Counter(why for _, why in rejected)
    check_writable(out.parent)
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    if rows:
        try:
            # A benchmark's test split may withhold its answers: those rows are questions to answer and export.
            validate_manifest(out, check_audio=check_audio, require_answer=kind in FORMATS or kind in ("hf", "wds"))
        except ManifestError as err:  # drop the lines our rules refuse, with their reasons
            bad = {}
            for line in str(err).splitlines()[1:]:
                where, _, why = line.partition(": ")
                bad[int(where.rsplit(":", 1)[1])] = why
            kept = [r for n, r in enumerate(rows, start=1) if n not in bad]
            rejected += [(rows[n - 1]["id"], why) for n, why in sorted(bad.items())]
            reasons.update(re.sub(r"\S*/\S*", "<path>", why) for why in bad.values())
            rows = kept
            atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    skipped = out.with_suffix(".skipped.json")
    if rejected:
        atomic_write_json(skipped, [{"where": where, "why": why} for where, why in rejected])
    else:
        skipped.unlink(missing_ok=True)  # from an earlier run of the same output
    return {"converted": len(rows), "rejected": len(rejected), "reasons": dict(reasons), "out": str(out),
            "skipped": str(skipped) if rejected else None}


def summary_lines(summary: dict) -> list[str]:
    """`pal data convert`'s report: what was written, and each reason rows were set aside, counted."""
    lines = [f"{summary['converted']} examples written to {summary['out']}; {summary['rejected']} rows skipped"]
    lines += [f"  {count} × {reason}" for reason, count in summary["reasons"].items()]
    if summary["skipped"]:
        lines.append(f"  each skipped row, where it stands and why: {summary['skipped']}")
    return lines
