"""`pal sslam extract`: SSLAM tokens (or pooled vectors) of audio files into one .npz, keyed by file stem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..audio import load_audio
from .checkpoint import load_sslam
from .features import SSLAMFeatures
from .frontend import FrontendConfig


def extract_to_npz(checkpoint: str | Path, audio: list[str | Path], out: str | Path, layer: int | None = None,
                   pool: str = "none", long_audio: str = "truncate", trust_checkpoint: bool = False,
                   batch_size: int = 8) -> dict[str, tuple[int, ...]]:
    """Writes `{stem: [N, D] tokens (CLS first, patches time-major) or [D] pooled}`; returns {stem: shape}."""
    stems = [Path(a).stem for a in audio]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several audio files share the stem(s) {duplicates}; the .npz keys would collide.")
    features = SSLAMFeatures(load_sslam(checkpoint, trust_checkpoint=trust_checkpoint),
                             FrontendConfig(long_audio=long_audio), layer=layer)
    arrays = {}
    for start in tqdm(range(0, len(audio), batch_size), desc="sslam extract", unit="batch"):
        paths = audio[start : start + batch_size]
        tokens, mask = features([load_audio(p) for p in paths], pool=pool)
        for path, row, real in zip(paths, tokens, mask):
            arrays[Path(path).stem] = (row if pool != "none" else row[real]).numpy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)  # atomic: a crash never leaves a truncated file under the final name
    return {k: v.shape for k, v in arrays.items()}
