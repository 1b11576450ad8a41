"""SSLAM pre-training's data: the clip list (`read_audio_manifest`), each clip read into its normalised log-mel
(`ClipDataset`; an unreadable clip is reported, not raised) and the step-indexed batches each rank reads
(`StepBatches`: a function of seed and step, so a resumed run reads what the uninterrupted one would have)."""

from __future__ import annotations

from pathlib import Path

import torch

from pal.common.manifest_lines import audio_paths
from pal.encoders.audio import AudioError, load_audio
from pal.encoders.sslam.frontend import FrontendConfig, model_inputs


def read_audio_manifest(path: str | Path) -> list[str]:
    """JSONL (`{"audio": ...}` per line) or fairseq tsv (first line the root, then `relative<TAB>size`)."""
    path = Path(path)
    if path.suffix == ".tsv" and path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        root = Path(lines[0].strip())
        return [str(root / line.split("\t")[0]) for line in lines[1:]]
    return audio_paths(path)


class ClipDataset(torch.utils.data.Dataset):
    """Clip g → (g, normalised log-mel [T, M] or None, error message or None)."""

    def __init__(self, paths: list[Path], frontend: FrontendConfig):
        self.paths, self.frontend = paths, frontend

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            waveform = load_audio(self.paths[index], min_samples=self.frontend.min_samples)
            spec, _ = model_inputs([waveform], self.frontend)
            return index, spec[0], None
        except AudioError as err:
            return index, None, str(err)


def collate(items):
    good = [(i, s) for i, s, _ in items if s is not None]
    bad = [(i, e) for i, _, e in items if e is not None]
    specs = torch.stack([s for _, s in good]) if good else None
    return [i for i, _ in good], specs, bad


class StepBatches(torch.utils.data.Sampler):
    """Index lists for this rank, step after step from `start_step`: a fresh permutation per epoch (seeded), each
    step's global batch cut into contiguous per-rank slices; the incomplete tail of an epoch is dropped."""

    def __init__(self, size: int, per_rank: int, rank: int, world: int, seed: int, start_step: int, steps: int):
        self.size, self.per_rank, self.rank, self.world = size, per_rank, rank, world
        self.seed, self.start_step, self.steps = seed, start_step, steps
        self.per_epoch = size // (per_rank * world)
        if self.per_epoch == 0:
            raise ValueError(f"{size} clips are fewer than one global batch of {per_rank * world}: add data.")

    def global_indices(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.per_epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        width = self.per_rank * self.world
        return order[within * width : (within + 1) * width].tolist()

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            glob = self.global_indices(step)
            yield glob[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)
