"""Curriculum data: a stage's examples, its batches as real epochs, the DataLoader that prepares them, and collation.

Batches: a stage's data is one or more manifests (memory-mapped tables, data/manifest.py), each with a `weight`:
how many times each of its examples appears per epoch (1: once; 2: twice; 0.5: a fresh half each epoch, so every
example is seen before any repeats). An epoch is a shuffled pass over that many examples; with `group_by_length`, each
window of 16 global batches is sorted by length before it is cut into batches (similar lengths in a batch, less
padding), and the batches of the epoch are then shuffled. Global batch g is a pure function of (seed, stage, g): a
run killed mid-epoch resumes at the very batch it would have trained next. Rank r takes rows [r·b, (r+1)·b) of
each global batch.

Loading: a `torch.utils.data.DataLoader` with worker processes prepares the batches ahead of the training step:
reading and resampling audio (or reading cached features), templating and tokenizing the text
(`PALProcessor.prepare`). The frozen encoders then run batched in the training process, on this rank's device
(`PALProcessor.collate`). A sample that fails (audio that does not decode, a row that no longer fits once its PLITS
audio tokens are in) is skipped, counted and written with its manifest, line, id and reason to the stage's
`bad_samples.rank*.jsonl`.
"""

from __future__ import annotations

import numpy as np
import torch

from pal.data.manifest import Example, example_from_row

GROUP_WINDOW = 16  # global batches sorted by length together


class StageData(torch.utils.data.Dataset):
    """The examples of one stage and its global batches of `global_batch` rows.

    sources: (table, weight, manifest path) per manifest; tables as `manifest_table` or `examples_dataset` return
    them. Index i of this dataset is row i of the tables laid end to end."""

    def __init__(self, sources: list[tuple[object, float, str]], seed: int, stage: int, global_batch: int,
                 group_by_length: bool = False, pack: int = 0):
        if any(w <= 0 for _, w, _ in sources):
            raise ValueError(f"manifest weights must be positive, got {[w for _, w, _ in sources]}.")
        self.tables = [table for table, _, _ in sources]
        self.names = [name for _, _, name in sources]
        # Only the length (and, to pack, the audio) columns are read whole; every other column stays mapped.
        row_lengths = [t.data.column("length").to_numpy() for t in self.tables]
        # An item is one example, or with `pack` up to `pack` examples about the same clip (`clip_groups`).
        self.groups = [clip_groups(t, pack) if pack else None for t in self.tables]
        self.sizes = [len(t) if g is None else len(g) for t, g in zip(self.tables, self.groups)]
        self.offsets = np.cumsum([0] + self.sizes[:-1])
        self.per_epoch = [max(1, round(w * n)) for (_, w, _), n in zip(sources, self.sizes)]
        self.lengths = np.concatenate([n if g is None else np.array([n[rows].sum() for rows in g], dtype=np.int64)
                                       for n, g in zip(row_lengths, self.groups)])
        self.seed, self.stage, self.size, self.group = seed, stage, global_batch, group_by_length
        self.batches_per_epoch = -(-sum(self.per_epoch) // global_batch)
        self._plan: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> Example | list[Example]:
        source = int(np.searchsorted(self.offsets, index, side="right")) - 1
        item, table, name = int(index - self.offsets[source]), self.tables[source], self.names[source]
        if self.groups[source] is None:
            return example_from_row(table[item], name)
        return [example_from_row(table[int(row)], name) for row in self.groups[source][item]]

    def _stream(self, source: int, start: int, count: int) -> np.ndarray:
        """Items [start, start + count) of the source's endless sequence of shuffled passes (pass p: its own seed)."""
        n, out = self.sizes[source], []
        for lap in range(start // n, (start + count - 1) // n + 1):
            order = np.random.default_rng([self.seed, self.stage, source, lap]).permutation(n)
            lo, hi = max(start - lap * n, 0), min(start + count - lap * n, n)
            out.append(order[lo:hi])
        return np.concatenate(out) + self.offsets[source]

    def epoch(self, epoch: int) -> np.ndarray:
        """The epoch's global batches as dataset indices [batches_per_epoch, global_batch]."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = np.random.default_rng([self.seed, self.stage, 1_000_003, epoch])
        order = rng.permutation(np.concatenate([self._stream(s, epoch * c, c) for s, c in enumerate(self.per_epoch)]))
        wrap = self.batches_per_epoch * self.size - len(order)  # the last batch is filled from the epoch's start
        order = np.concatenate([order, np.resize(order, wrap)]) if wrap else order
        batches = order.reshape(-1, self.size)
        if self.group:
            window = GROUP_WINDOW * self.size
            for lo in range(0, len(order), window):
                part = order[lo : lo + window]
                order[lo : lo + window] = part[np.argsort(self.lengths[part], kind="stable")]
            batches = order.reshape(-1, self.size)[rng.permutation(self.batches_per_epoch)]
        self._plan = (epoch, batches)
        return batches

    def global_batch(self, g: int) -> np.ndarray:
        """Global batch g of the stage (counting across epochs): dataset indices [global_batch]."""
        epoch, within = divmod(g, self.batches_per_epoch)
        return self.epoch(epoch)[within]


def clip_groups(table, size: int) -> list[np.ndarray]:
    """The table's rows grouped by clip, in first-seen order: lists of at most `size` row indices that share one
    packing key, the row's `group` or else its audio path (a clip with more questions gives several groups). A row
    with neither, or a question about several clips, is a group of its own. The text-only baseline's rows keep their
    clip as `group`."""
    named = table.data.column("group").to_pylist()
    several = table.data.column("more_audio").to_pylist()
    by_clip: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    for row, audio in enumerate(table.data.column("audio").to_pylist()):
        key = None if several[row] is not None else named[row] if named[row] is not None else audio
        (alone.append([row]) if key is None else by_clip.setdefault(key, []).append(row))
    groups = [rows[i : i + size] for rows in by_clip.values() for i in range(0, len(rows), size)] + alone
    return [np.asarray(g, dtype=np.int64) for g in sorted(groups, key=lambda g: g[0])]


class RankBatches(torch.utils.data.Sampler):
    """This rank's share of global batches [start, stop): lists of dataset indices (a DataLoader batch sampler)."""

    def __init__(self, data: StageData, start: int, stop: int, rank: int, batch_size: int):
        self.data, self.start, self.stop, self.rank, self.batch_size = data, start, stop, rank, batch_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        lo = self.rank * self.batch_size
        for g in range(self.start, self.stop):
            yield self.data.global_batch(g)[lo : lo + self.batch_size].tolist()


def stage_loader(data: StageData, processor, start: int, stop: int, rank: int, batch_size: int,
                 workers: int, prefetch: int = 2) -> torch.utils.data.DataLoader:
    """Micro-batches of global batches [start, stop) for this rank, as the workers prepare them
    (`PALProcessor.prepare`; the training process finishes each with `PALProcessor.collate`)."""
    return torch.utils.data.DataLoader(
        data, batch_sampler=RankBatches(data, start, stop, rank, batch_size), collate_fn=processor.prepare,
        num_workers=workers, prefetch_factor=prefetch if workers else None, pin_memory=torch.cuda.is_available(),
    )
