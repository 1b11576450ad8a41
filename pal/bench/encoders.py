"""Encoder benchmark (`pal bench encoders`): front-end and SSLAM throughput, and what the feature cache saves.

Side by side in one run, on 10 s clips (random noise; the cost does not depend on content):
  1. our batched torch Kaldi fbank vs transformers' `ASTFeatureExtractor` (numpy path) on the same clips;
  2. clips per second through front-end + SSLAM ViT-B (random weights), batch 8;
  3. one training step's feature cost with the encoder run on the fly vs read from the feature cache.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)  # the estimate least disturbed by other load on a shared machine


def run(batch: int = 8, repeats: int = 3, preset: str = "vitb") -> dict:
    from transformers import ASTFeatureExtractor

    from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from pal.encoders.feature_cache import FeatureCache
    from pal.encoders.kaldi_fbank import kaldi_fbank
    from pal.encoders.sslam.features import SSLAMFeatures
    from pal.encoders.sslam.model import PRESETS, SSLAMEncoder

    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(160000)).astype(np.float32) for _ in range(batch)]
    waves = [torch.from_numpy(c) for c in clips]

    ast = ASTFeatureExtractor(num_mel_bins=128, max_length=1024, do_normalize=False)
    ast_s = _timed(lambda: ast(clips, sampling_rate=16000, return_tensors="np"), repeats)
    ours_s = _timed(lambda: kaldi_fbank(torch.stack(waves)), repeats)

    features = SSLAMFeatures(SSLAMEncoder(PRESETS[preset]))
    encode_s = _timed(lambda: features(waves), repeats)

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, clip in enumerate(clips):
            soundfile.write(Path(tmp) / f"{i}.wav", clip, 16000, subtype="FLOAT")
            paths.append(Path(tmp) / f"{i}.wav")
        config = EnsembleConfig.from_dict({"encoders": {"sslam": {"type": "sslam", "preset": preset}}})
        ensemble = AudioEncoderEnsemble(config, members={"sslam": features})
        cache = FeatureCache(Path(tmp) / "cache", config)
        cache.build(paths, ensemble=ensemble, progress=False)
        on_the_fly_s = _timed(lambda: ensemble.encode_files(paths), repeats)
        cached_s = _timed(lambda: FeatureCache(Path(tmp) / "cache", config).get(paths), repeats)

    return {
        "batch": batch, "clip_seconds": 10.0, "sslam": preset, "threads": torch.get_num_threads(),
        "fbank_ours_s": ours_s, "fbank_ast_s": ast_s, "fbank_speedup": ast_s / ours_s,
        "sslam_clips_per_s": batch / encode_s,
        "features_on_the_fly_s": on_the_fly_s, "features_cached_s": cached_s,
        "cache_speedup": on_the_fly_s / cached_s,
    }


def main(args) -> int:
    report = run(batch=args.batch, repeats=args.repeats, preset=args.sslam)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['batch']} clips of 10 s, SSLAM {report['sslam']}, {report['threads']} threads")
    print(f"fbank: ours {report['fbank_ours_s'] * 1e3:.1f} ms vs ASTFeatureExtractor {report['fbank_ast_s'] * 1e3:.1f} ms"
          f" -> {report['fbank_speedup']:.1f}x (target >= 10x)")
    print(f"front-end + SSLAM: {report['sslam_clips_per_s']:.2f} clips/s")
    print(f"features per batch: on the fly {report['features_on_the_fly_s']:.3f} s vs feature cache "
          f"{report['features_cached_s'] * 1e3:.1f} ms -> {report['cache_speedup']:.0f}x")
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sslam", choices=["tiny", "small", "vitb"], default="vitb")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(main(p.parse_args()))
