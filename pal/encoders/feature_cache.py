"""Feature cache: every encoder's tokens for a manifest, precomputed once into sharded safetensors.

Layout of a cache folder:
    index.json                 {"encoders": {name: encoder hash}, "entries": {audio hash: shard file}, "bad": {...}}
    shard-00000.safetensors    tensors "<name>/<encoder hash>/<audio hash>": the real tokens [n, D_e]
Entries are keyed by (audio content hash, encoder identity): editing an audio file or changing an encoder (its
settings, the content of its weights, or the feature code version, `identity.FEATURES_VERSION`) makes the old entries
unreachable, and reading with a different configuration is an error rather than silently stale features. Moving the
weights or the audio changes nothing. Building resumes: the shard being filled is written every few dozen clips, each
shard and the index atomically, so a killed build keeps what it did. Unreadable audio is skipped, counted and listed
under "bad" in the index; a listed file that reads on a later build is encoded and leaves the list. Large manifests
are built in parts (`manifest_part`, `pal features build --shard i/n`) on as many machines as wanted, and `merge_caches`
joins the part folders into the cache one run would have built.

Reading opens shards lazily (`safetensors.safe_open`, memory-mapped) and reads only the requested tensors; at most
`max_open` shards stay open (least recently used closed first), per process: a DataLoader worker forked from a process
that read opens its own, and a pickled cache carries no open file.

Notation: B clips, N_e tokens, D_e width.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict, defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from pal.common.audio_source import audio_hash, audio_problem
from pal.common.safe_write import atomic_write_json, check_writable, disk_errors

from .audio import AudioError
from .ensemble import AudioEncoderEnsemble, EnsembleConfig
from .identity import encoder_hash
from .outputs import EncoderOutputs, pad_rows

INDEX = "index.json"


def manifest_part(audio: list, part: int, parts: int) -> list:
    """Part `part` (0-based) of `parts` of a manifest's clips: clip k (in manifest order) goes to part k mod `parts`.

    The same on every machine that reads the same manifest, disjoint, together the whole manifest; lines appended
    later leave every earlier clip in its part.
    """
    if not 0 <= part < parts:
        raise ValueError(f"part {part}/{parts}: expected i/n with 0 <= i < n (the parts are 0/{parts} ... "
                         f"{max(parts - 1, 0)}/{parts}).")
    return audio[part::parts]


def part_folder(out: str | Path, part: int, parts: int) -> Path:
    """Where part i of n is built under a cache folder: `OUT/part-i-of-n`, so parts never write over each other."""
    return Path(out) / f"part-{part}-of-{parts}"


def _read_index(folder: Path) -> dict:
    if not (folder / INDEX).is_file():
        raise FileNotFoundError(f"{folder} is not a feature cache (no {INDEX}): give folders written by "
                                "`pal features build` (with --shard i/n: OUT/part-i-of-n).")
    return json.loads((folder / INDEX).read_text())


def _next_shard_id(root: Path) -> int:
    return 1 + max((int(p.stem.split("-")[1]) for p in root.glob("shard-*.safetensors")), default=-1)


def _drop_orphans(root: Path, index: dict) -> None:
    """Shard files no index entry points at (a kill between writing a shard and its index) and temporaries."""
    used = set(index["entries"].values())
    for path in list(root.glob("shard-*.safetensors")) + list(root.glob("shard-*.tmp")):
        if path.name not in used:
            path.unlink(missing_ok=True)


def merge_caches(out: str | Path, parts: list[str | Path]) -> dict:
    """Part folders (`pal features build --shard i/n`) → one cache in `out`, equal to one run over the whole manifest;
    returns {"cached", "added", "bad"} counts.

    Every part (and `out`, if it is a cache already) must hold the same encoder identities. Entries and "bad" lists
    are unioned: a part shard bringing new entries is linked (or copied) in under the next free shard name, then the
    index is written, each atomically, so a killed merge resumes and a repeated one adds nothing.
    """
    found = {Path(part): _read_index(Path(part)) for part in parts}
    if not found:
        raise ValueError("no part folder to merge: give at least one folder written by `pal features build --shard i/n`.")
    out = check_writable(out)
    first = next(iter(found))
    reference, index = (out, _read_index(out)) if (out / INDEX).is_file() else (
        first, {"encoders": found[first]["encoders"], "entries": {}, "bad": {}})
    for part, theirs in found.items():  # every check before the first write
        if theirs["encoders"] != index["encoders"]:
            raise ValueError(f"{part} was built for encoders {theirs['encoders']}, {reference} for {index['encoders']} "
                             "(name: identity): merge only parts built with the same ensemble YAML, weights and "
                             "FEATURES_VERSION; rebuild this part with them.")
    _drop_orphans(out, index)
    added = 0
    for part, theirs in found.items():
        new = defaultdict(list)  # part shard → its keys not in the merged cache yet
        for key, shard in theirs["entries"].items():
            if key not in index["entries"]:
                new[shard].append(key)
        for shard in sorted(new):
            target = out / f"shard-{_next_shard_id(out):05d}.safetensors"
            _link_or_copy(part / shard, target)
            index["entries"].update({key: target.name for key in new[shard]})
            atomic_write_json(out / INDEX, index)
            added += len(new[shard])
        index["bad"].update(theirs["bad"])
    atomic_write_json(out / INDEX, index)
    return {"cached": len(index["entries"]), "added": added, "bad": len(index["bad"])}


def _link_or_copy(source: Path, target: Path) -> None:
    """A shard file under a new name, atomically: a hard link on the same file system (no second copy of the bytes;
    builds replace shards, never edit them in place), a copy across file systems."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}, listed in {source.parent / INDEX}, is missing: that part is incomplete; "
                                "rebuild it with `pal features build --shard i/n` (a rerun resumes) or copy it in full.")
    tmp = target.with_name(target.name + ".tmp")  # a killed merge leaves shard-*.tmp, which the next one removes
    with disk_errors(target):
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)


class FeatureCache:
    """A cache folder for one ensemble: `build(paths)` fills it, `path in cache` and `get(paths)` read it.

    `max_open` bounds the shards held open (memory-mapped) at once; a read touches only the tensors it returns.
    """

    def __init__(self, root: str | Path, config: EnsembleConfig, max_open: int = 8):
        if max_open < 1:
            raise ValueError(f"max_open = {max_open}: expected at least 1 open shard.")
        self.root = Path(root)
        self.config = config
        self.max_open = max_open
        self.hashes = {name: encoder_hash(spec, config.dtype) for name, spec in config.encoders.items()}
        self.index = _read_index(self.root) if (self.root / INDEX).is_file() else {
            "encoders": dict(self.hashes), "entries": {}, "bad": {}
        }
        stale = {n: (self.index["encoders"].get(n), h) for n, h in self.hashes.items()
                 if self.index["encoders"].get(n) != h}
        if stale:
            raise ValueError(
                f"feature cache {self.root} was built for other encoder configurations {stale} (cached hash, current "
                "hash: settings, weights content and FEATURES_VERSION of encoders/identity.py): rebuild it with "
                "`pal features build` into a new folder."
            )
        self._handles: OrderedDict[str, object] = OrderedDict()  # shard file → safe_open handle, oldest first
        self._pid = os.getpid()  # the process that opened them

    # ------------------------------------------------------------------------------------------------ building

    def build(self, audio: list[str | Path], ensemble: AudioEncoderEnsemble | None = None, batch_size: int = 8,
              shard_size: int = 256, flush_every: int = 64, progress: bool = True) -> dict:
        """Encode every not-yet-cached file; returns {"cached", "added", "bad"} counts.

        The shard being filled is written (atomically, with the index) every `flush_every` clips, so a build killed
        part-way keeps all but the last few clips. A file listed as bad is tried again and forgotten once it reads.
        """
        check_writable(self.root)
        _drop_orphans(self.root, self.index)
        todo, seen = [], set(self.index["entries"])
        for path in audio:
            problem = audio_problem(str(path))
            if problem:
                self.index["bad"][str(path)] = problem
                continue
            key = audio_hash(str(path))
            if key in seen:
                self.index["bad"].pop(str(path), None)
            else:
                todo.append((path, key))
                seen.add(key)
        added = 0
        if todo:
            ensemble = ensemble or AudioEncoderEnsemble(self.config)
            shard_id = _next_shard_id(self.root)
            bar = tqdm(total=len(todo), desc="features", unit="clip", disable=not progress)
            for start in range(0, len(todo), shard_size):
                shard = f"shard-{shard_id:05d}.safetensors"
                tensors, keys, unflushed = {}, [], 0
                for b in range(start, min(start + shard_size, len(todo)), batch_size):
                    batch = todo[b : b + batch_size]
                    loaded, good = [], []
                    for path, key in batch:  # read one by one so a bad file costs only itself
                        try:
                            loaded.append(ensemble.load(path))
                            good.append((path, key))
                        except AudioError as err:
                            self.index["bad"][str(path)] = str(err)
                    for (path, key), row in zip(good, self._encode(ensemble, loaded)):
                        for name, tokens in row.items():
                            tensors[f"{name}/{self.hashes[name]}/{key}"] = tokens.contiguous()
                        keys.append(key)
                        self.index["bad"].pop(str(path), None)
                    unflushed += len(good)
                    bar.update(len(batch))
                    if unflushed >= flush_every:
                        self._write_shard(shard, tensors, keys)
                        unflushed = 0
                if unflushed:
                    self._write_shard(shard, tensors, keys)
                added += len(keys)
                shard_id += 1 if keys else 0
            bar.close()
        atomic_write_json(self.root / INDEX, self.index)
        return {"cached": len(self.index["entries"]), "added": added, "bad": len(self.index["bad"])}

    def _write_shard(self, shard: str, tensors: dict, keys: list[str]) -> None:
        """(Re)write a shard with everything it holds so far, then the index that points at it: a resume point."""
        tmp = self.root / (shard + ".tmp")
        with disk_errors(self.root / shard):
            save_file(tensors, str(tmp))
            os.replace(tmp, self.root / shard)
        self._handles.pop(shard, None)  # an open handle still maps the replaced file
        self.index["entries"].update({k: shard for k in keys})
        atomic_write_json(self.root / INDEX, self.index)

    @staticmethod
    def _encode(ensemble: AudioEncoderEnsemble, loaded: list[dict]) -> list[dict[str, torch.Tensor]]:
        """Loaded clips → per clip {name: its real tokens [n, D_e]}."""
        if not loaded:
            return []
        features = ensemble.encode_loaded(loaded)
        return [{name: tokens[i][mask[i]].cpu() for name, (tokens, mask) in features.items()}
                for i in range(len(loaded))]

    # ------------------------------------------------------------------------------------------------- reading

    def __contains__(self, path) -> bool:
        return audio_problem(str(path)) is None and audio_hash(str(path)) in self.index["entries"]

    def get(self, paths: list[str | Path]) -> EncoderOutputs:
        """Cached features of these files, padded into a batch: {name: (tokens [B, N_e, D_e], mask [B, N_e])}."""
        rows = []
        for path in paths:
            key = audio_hash(str(path)) if audio_problem(str(path)) is None else None
            shard = self.index["entries"].get(key) if key else None
            if shard is None:
                raise KeyError(f"{path} is not in the feature cache {self.root}: run `pal features build` on its manifest.")
            handle = self._open(shard)
            rows.append({n: handle.get_tensor(f"{n}/{h}/{key}") for n, h in self.hashes.items()})  # [n, D_e] each
        dtype = getattr(torch, self.config.dtype)
        return {name: pad_rows([r[name] for r in rows], dtype) for name in self.hashes}

    def _open(self, shard: str):
        """The shard's handle, opened on first use in this process; the least recently used beyond `max_open` close."""
        if self._pid != os.getpid():  # forked (a DataLoader worker): the parent's handles are not this process's
            self._handles, self._pid = OrderedDict(), os.getpid()
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            if not (self.root / shard).is_file():
                raise FileNotFoundError(f"{self.root / shard}, listed in {self.root / INDEX}, is missing: the cache "
                                        "folder is incomplete; rebuild it with `pal features build` into a new folder.")
            self._handles[shard] = safe_open(self.root / shard, framework="pt")
            while len(self._handles) > self.max_open:
                self._handles.popitem(last=False)  # dropping the handle unmaps the file
        return self._handles[shard]

    def __getstate__(self) -> dict:
        """Pickled (to a spawned DataLoader worker) without open files; the copy opens its own."""
        return {**self.__dict__, "_handles": OrderedDict()}


def cache_summary(out: str | Path, stats: dict, action: str) -> str:
    """One line on a built or merged cache: `stats` from `FeatureCache.build` or `merge_caches`."""
    return (f"feature cache {out}: {stats['cached']} clips cached ({stats['added']} {action}), "
            f"{stats['bad']} unreadable (listed under \"bad\" in {Path(out) / 'index.json'})")
