"""`pal sslam extract`: SSLAM tokens (or pooled vectors) of audio files into one .npz, keyed by file stem.

The output folder is checked before any encoding. A file that cannot be used (missing, corrupt, shorter than one
25 ms fbank frame, ...) is skipped and listed; the good ones are still written, and the caller exits non-zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from pal.common.safe_write import check_writable, disk_errors

from ..audio import AudioError, load_audio
from .checkpoint import load_sslam
from .features import SSLAMFeatures
from .frontend import FrontendConfig


def extract_to_npz(checkpoint: str | Path, audio: list[str | Path], out: str | Path, layer: int | None = None,
                   pool: str = "none", long_audio: str = "truncate", trust_checkpoint: bool = False,
                   batch_size: int = 8) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Writes `{stem: [N, D] tokens (CLS first, patches time-major) or [D] pooled}` for every usable file.

    → ({stem: shape} written, {path: problem} skipped). Nothing is written if no file is usable.
    """
    stems = [Path(a).stem for a in audio]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several audio files share the stem(s) {duplicates}; the .npz keys would collide.")
    out = Path(out)
    check_writable(out.parent)
    features = SSLAMFeatures(load_sslam(checkpoint, trust_checkpoint=trust_checkpoint),
                             FrontendConfig(long_audio=long_audio), layer=layer)
    arrays, bad = {}, {}
    for start in tqdm(range(0, len(audio), batch_size), desc="sslam extract", unit="batch"):
        paths, waves = [], []
        for path in audio[start : start + batch_size]:  # one by one, so a bad file costs only itself
            try:
                waves.append(load_audio(path, min_samples=features.min_samples))
                paths.append(path)
            except AudioError as err:
                bad[str(path)] = str(err)
        if not waves:
            continue
        tokens, mask = features(waves, pool=pool)
        for path, row, real in zip(paths, tokens, mask):
            arrays[Path(path).stem] = (row if pool != "none" else row[real]).numpy()
    if arrays:
        tmp = out.with_name(out.name + ".partial.npz")
        with disk_errors(out):
            np.savez(tmp, **arrays)
            tmp.replace(out)  # atomic: a crash never leaves a truncated file under the final name
    return {k: v.shape for k, v in arrays.items()}, bad
