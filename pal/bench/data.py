"""Data-path benchmark (`pal bench data`): peak memory of one rank that reads a large manifest and feeds batches
through a DataLoader with worker processes, with the manifest as a memory-mapped Arrow table (what training uses)
and as an in-memory list of examples (what it used before), side by side, each in its own process.

The manifest is generated: `--rows` caption examples over one short clip. Each variant validates the manifest and
measures every conversation in tokens (the SmolLM2 tokenizer), builds the stage's batches, then prepares `--batches`
micro-batches through `--workers` DataLoader workers (audio read and resampled, chat template applied). Reported per
variant: seconds to validate and measure, peak RSS of the rank's process and of its largest worker
(`getrusage` high-water marks, so nothing between two samples is missed), and the prepared examples/s.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("list", "arrow")


def _manifest(root: Path, rows: int) -> Path:
    import soundfile

    soundfile.write(root / "clip.wav", (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    path = root / "big.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"ex{i}", "audio": "clip.wav", "task": "caption", "messages": [
                {"role": "user", "content": "<audio>\nDescribe the sound in one sentence."},
                {"role": "assistant", "content": f"A steady tone, number {i}, with a soft hum behind it."}]}) + "\n")
    return path


def measure(variant: str, manifest: Path, batches: int, batch_size: int, workers: int) -> dict:
    import torch
    from transformers import AutoConfig

    from pal import PALConfig, PALProcessor
    from pal.curriculum.stage_data import StageData, stage_loader
    from pal.data.manifest import check_lengths, examples_dataset, manifest_table, validate_manifest
    from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from pal.llm import load_tokenizer, resolve_llm_path

    ensemble = AudioEncoderEnsemble(EnsembleConfig.from_dict({"encoders": {"sslam": {"type": "sslam", "preset": "tiny"}}}))
    text_config = AutoConfig.from_pretrained(resolve_llm_path(None), local_files_only=True).to_dict()
    processor = PALProcessor(load_tokenizer(None), PALConfig(text_config=text_config, encoder_dims=ensemble.dims),
                             padding_side="right", ensemble=ensemble)
    start = time.perf_counter()
    if variant == "arrow":
        table, _, _ = manifest_table(manifest, processor, 2048, "reject", ensemble.min_seconds, manifest.parent / "tables")
    else:
        examples, _ = check_lengths(validate_manifest(manifest, min_seconds=ensemble.min_seconds), processor, 2048,
                                    "reject")
        table = examples_dataset(examples)
    validate_s = time.perf_counter() - start
    data = StageData([(table, 1.0, str(manifest))], 0, 0, batch_size, group_by_length=True)
    start, seen = time.perf_counter(), 0
    for loaded in stage_loader(data, processor, 0, batches, 0, batch_size, workers):
        seen += len(loaded.examples)
    loader_s = time.perf_counter() - start

    def rss(who) -> float:
        return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux

    return {"variant": variant, "validate_s": validate_s, "examples_per_s": seen / loader_s,
            "peak_rss_mb": rss(resource.RUSAGE_SELF), "peak_worker_rss_mb": rss(resource.RUSAGE_CHILDREN),
            "torch_threads": torch.get_num_threads()}


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000, help="lines of the generated manifest")
    parser.add_argument("--batches", type=int, default=200, help="micro-batches prepared through the loader")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)


def main(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"generating a manifest of {args.rows:,} rows ...", flush=True)
        manifest = _manifest(Path(tmp), args.rows)
        results = []
        for variant in VARIANTS:  # each in a fresh process: peak RSS is a per-process high-water mark
            cmd = [sys.executable, "-m", "pal.bench.data", "--worker", variant, str(manifest), str(args.batches),
                   str(args.batch_size), str(args.workers)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"the {variant} variant failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\n{args.rows:,} rows, {args.batches} batches of {args.batch_size}, {args.workers} workers")
    print(f"{'manifest as':14s} {'validate s':>10s} {'peak RSS MB':>12s} {'worker peak MB':>15s} {'examples/s':>11s}")
    for r in results:
        print(f"{r['variant']:14s} {r['validate_s']:10.1f} {r['peak_rss_mb']:12.0f} {r['peak_worker_rss_mb']:15.0f} "
              f"{r['examples_per_s']:11.1f}")
    a, b = results
    print(f"arrow/list: peak RSS {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x, "
          f"worker peak {b['peak_worker_rss_mb'] / a['peak_worker_rss_mb']:.2f}x")
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    variant, manifest, batches, batch_size, workers = sys.argv[2:7]
    print(json.dumps(measure(variant, Path(manifest), int(batches), int(batch_size), int(workers))))
