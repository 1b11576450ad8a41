"""Curriculum data: a stage's examples, its batches as real epochs, the DataLoader that prepares them, and collation.

Batches: a stage's data is one or more manifests (memory-mapped tables, data/manifest.py), each with a `weight`:
how many times each of its examples appears per epoch (1: once; 2: twice; 0.5: a fresh half each epoch, so every
example is seen before any repeats). An epoch is a shuffled pass over that many examples; with `group_by_length`, each
window of 16 global batches is sorted by length before it is cut into batches (similar lengths in a batch, less
padding), and the batches of the epoch are then shuffled. Global batch g is a pure function of (seed, stage, g): a
run killed mid-epoch resumes at the very batch it would have trained next. Rank r takes rows [r·b, (r+1)·b) of
each global batch.

Loading: a `torch.utils.data.DataLoader` with worker processes prepares the batches ahead of the training step:
reading and resampling audio (or reading cached features), templating and tokenizing the text. The frozen encoders
then run batched in the training process, on this rank's device (`Collator.finish`). A sample that fails (audio that
does not decode, a row that no longer fits once its PLITS audio tokens are in) is skipped, counted and written with
its manifest, line, id and reason to the stage's `bad_samples.rank*.jsonl`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from data.manifest import Example, example_from_row
from encoders.audio import AudioError
from pal.packing import pack_rows, pad_packed

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
    with neither is a group of its own. The text-only baseline's rows keep their clip as `group`."""
    named = table.data.column("group").to_pylist()
    by_clip: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    for row, audio in enumerate(table.data.column("audio").to_pylist()):
        key = named[row] if named[row] is not None else audio
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


def stage_loader(data: StageData, collator: "Collator", start: int, stop: int, rank: int, batch_size: int,
                 workers: int, prefetch: int = 2) -> torch.utils.data.DataLoader:
    """Prepared micro-batches of global batches [start, stop) for this rank (see `Collator.load`)."""
    return torch.utils.data.DataLoader(
        data, batch_sampler=RankBatches(data, start, stop, rank, batch_size), collate_fn=collator.load,
        num_workers=workers, prefetch_factor=prefetch if workers else None, pin_memory=torch.cuda.is_available(),
    )


class Collator:
    """Examples → model inputs: audio decoded and encoded (or read from the feature cache), chat template applied,
    labels on assistant tokens only, padding on the processor's side. `load` is the part a DataLoader worker does
    (audio reading and resampling or cache reads, templating); `finish` runs the frozen encoders and builds the batch.

    A sample that fails here is dropped from the batch and returned with its reason: audio that does not decode, a
    row over `max_length` once its PLITS audio tokens are in (`too_long="truncate"` cuts it instead, counted in
    `self.counts`). Audio past an encoder's window is truncated or split by that encoder's policy, counted too.
    """

    def __init__(self, processor, ensemble=None, cache=None, max_length: int | None = None, too_long: str = "reject"):
        self.processor, self.ensemble, self.cache = processor, ensemble, cache
        self.max_length, self.too_long = max_length, too_long
        self.counts: Counter = Counter()  # "truncated", "long audio: <encoder> <policy>", ...

    def load(self, examples: list[Example] | list[list[Example]]) -> dict:
        """The worker's part: each example's audio read at the encoders' rates (or its cached features) and its
        conversation templated; a clip that several examples share is read once. `examples` may hold groups of
        examples about one clip (`StageData` with `pack`), which `finish` packs into one sequence each.
        → {"examples": kept, "bad": [(example, problem)], "rows": each kept example's audio row or None, "clips" or
        "cached", "segments", "groups": each kept example's group, "packed", "counts"}."""
        bad, kept, rows, clips, paths, segments, groups, counts = [], [], [], [], [], [], [], Counter()
        read: dict[str, int] = {}  # audio path → its row in clips / paths
        items = [(g, e) for g, item in enumerate(examples) for e in (item if isinstance(item, list) else [item])]
        for group, example in items:
            try:  # AudioError is a ValueError; so is a conversation the chat template cannot split
                pieces = self.processor.segments(example.messages)
                row = read.get(example.audio) if example.audio is not None else None
                if example.audio is not None and row is None and self.cache is not None:
                    if example.audio not in self.cache:
                        raise AudioError(f"{example.audio} is not in the feature cache {self.cache.root}")
                    paths.append(example.audio)
                    row = read[example.audio] = len(paths) - 1
                elif example.audio is not None and row is None:
                    clip = self.ensemble.load(example.audio)
                    counts.update(self.ensemble.long_audio_events(clip))
                    clips.append(clip)
                    row = read[example.audio] = len(clips) - 1
            except ValueError as err:
                bad.append((example, str(err)))
                continue
            kept.append(example)
            rows.append(row)
            segments.append(pieces)
            groups.append(group)
        return {"examples": kept, "bad": bad, "rows": rows, "clips": clips,
                "cached": self.cache.get(paths) if paths else None, "segments": segments, "groups": groups,
                "packed": any(isinstance(item, list) for item in examples), "counts": counts}

    def audio(self, loaded: dict) -> dict | None:
        """Encoder outputs with one row per kept example: the frozen encoders run here, batched, on their device."""
        if loaded["cached"] is None and not loaded["clips"]:
            return self.no_audio(len(loaded["examples"]))
        features = loaded["cached"] if loaded["cached"] is not None else self.ensemble.encode_loaded(loaded["clips"])
        return scatter_rows(features, loaded["rows"])

    def features(self, examples: list[Example]) -> tuple[dict | None, list[Example], list[tuple[Example, str]]]:
        """→ (audio features with one row per kept example or None, kept examples, [(example, problem)] skipped)."""
        loaded = self.load(examples)
        return self.audio(loaded), loaded["examples"], loaded["bad"]

    def __call__(self, examples: list[Example]) -> tuple[dict | None, list[tuple[Example, str]]]:
        """→ (batch, or None when nothing usable is left; [(example, problem)] of the skipped examples)."""
        return self.finish(self.load(examples))

    def finish(self, loaded: dict) -> tuple[dict | None, list[tuple[Example, str]]]:
        """The training process's part of `__call__`, on what `load` prepared."""
        self.counts.update(loaded["counts"])
        audio, kept, bad = self.audio(loaded), loaded["examples"], list(loaded["bad"])
        counts = self.processor.audio_token_counts(audio, len(kept))
        plits = self.processor.config.encoders_on("plits") + self.processor.config.summary_encoders()
        rows, keep = [], []
        for i, example in enumerate(kept):
            try:
                row = self.processor.encode(loaded["segments"][i], int(counts[i]), plits, i)
                if self.max_length is not None and len(row[0]) > self.max_length:
                    if self.too_long != "truncate":
                        raise ValueError(f"{len(row[0])} tokens with its audio, over max_length {self.max_length}.")
                    row = self.processor.truncate(row, self.max_length, i)
                    self.counts["truncated"] += 1
            except ValueError as err:
                bad.append((example, str(err).replace(f"prompt {i}", "the example", 1)))
                continue
            if all(label == -100 for label in row[1]):
                bad.append((example, "no assistant tokens after templating."))
                continue
            rows.append(row)
            keep.append(i)
        if not rows:
            return None, bad
        if loaded.get("packed"):
            batch, keep = self.pack(rows, keep, loaded["groups"])
        else:
            batch = self.processor.pad(rows)
        if audio is not None:
            batch["audio"] = {n: (t[keep], m[keep]) for n, (t, m) in audio.items()}
        batch["examples"] = len(rows)  # question-answer examples in the batch (a packed row holds several)
        return batch, bad

    def pack(self, rows: list, keep: list[int], groups: list[int]) -> tuple[dict, list[int]]:
        """Each group's rows packed into shared-prefix sequences (pal/packing.py) → (batch, each packed row's audio
        row among the kept examples)."""
        by_group: dict[int, list[int]] = {}
        for r, i in enumerate(keep):
            by_group.setdefault(groups[i], []).append(r)
        packed, audio_rows = [], []
        for members in by_group.values():
            for row in pack_rows([rows[r] for r in members], self.max_length):
                packed.append(row)
                audio_rows.append(keep[members[0]])
        return pad_packed(packed, self.processor.pad_id), audio_rows

    def no_audio(self, rows: int) -> dict | None:
        """Features for a batch without audio: one masked-out token per encoder and row. The model then runs its
        connectors as for any batch, which ZeRO-3 needs on every rank (peer projects hang here otherwise)."""
        dims = self.ensemble.dims if self.ensemble is not None else None
        if not rows or not dims:
            return None
        return {name: (torch.zeros(rows, 1, dim), torch.zeros(rows, 1, dtype=torch.bool)) for name, dim in dims.items()}


def scatter_rows(features: dict, rows: list[int | None]) -> dict:
    """Features of the audio examples → one row per example; `rows[i]` is example i's row in `features`, or None for
    a text-only example, which gets an all-False mask (it sees no audio on any route)."""
    out = {}
    for name, (tokens, mask) in features.items():
        full_t = tokens.new_zeros(len(rows), *tokens.shape[1:])
        full_m = mask.new_zeros(len(rows), mask.shape[1])
        for i, r in enumerate(rows):
            if r is not None:
                full_t[i], full_m[i] = tokens[r], mask[r]
        out[name] = (full_t, full_m)
    return out
