"""The server's memory of clips: a follow-up question about a clip it already holds skips the encoders and the
audio keys/values.

Keyed by the sha256 of the audio file's bytes, so the same clip sent again (a follow-up turn, another user) is found
whatever the request around it. Each entry holds the clip's encoder outputs and what `prepare_audio` computed from
them (LAL's per-layer audio keys/values, the cross-attention blocks'); a request gets a fresh `PALCache` that
carries them, so only the text runs. Bounded: past `capacity` clips the least recently used one is dropped.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from pal import PALCache


@dataclass
class CachedClip:
    features: dict  # {name: (tokens [1, N_e, D_e], mask [1, N_e])} on the model's device
    side: dict | None = None  # {cache attribute: value} from `prepare_audio` (audio keys/values, their source),
    #                           computed when a question about this clip alone first needs them


class ClipCache:
    def __init__(self, capacity: int = 64):
        if capacity < 0:
            raise ValueError(f"capacity = {capacity}: expected a number of clips >= 0.")
        self.capacity = capacity
        self.entries: OrderedDict[str, CachedClip] = OrderedDict()
        self.hits = self.misses = 0
        self.lock = threading.Lock()

    @staticmethod
    def key(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def get_or_make(self, data: bytes, make) -> tuple[CachedClip, bool]:
        """The clip of these bytes, from memory or `make()` (→ CachedClip) → (clip, whether it was held)."""
        key = self.key(data)
        with self.lock:
            clip = self.entries.get(key)
            if clip is not None:
                self.entries.move_to_end(key)
                self.hits += 1
                return clip, True
            self.misses += 1
        clip = make()
        with self.lock:
            if self.capacity:
                self.entries[key] = clip
                while len(self.entries) > self.capacity:
                    self.entries.popitem(last=False)
        return clip, False

    def stats(self) -> dict:
        with self.lock:
            return {"clips": len(self.entries), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}


def prepared_cache(model, clip: CachedClip) -> PALCache:
    """A fresh PALCache holding the clip's audio keys/values (the text cache empty), for one request about it
    alone; the keys/values are computed by `prepare_audio` the first time and kept with the clip."""
    if clip.side is None:
        side = {}
        if model.side_connectors():
            prepared = model.prepare_audio(clip.features)
            side = {c.cache_key: getattr(prepared, c.cache_key) for c in model.side_connectors()}
            side["audio_source"] = prepared.audio_source
        clip.side = side
    cache = PALCache(config=model.llm.config)
    for key, value in clip.side.items():
        setattr(cache, key, value)
    return cache


def cached_clip(features: dict) -> CachedClip:
    """Features [1, ...] → what the cache keeps (the audio keys/values follow with `prepared_cache`)."""
    return CachedClip(features)


__all__ = ["CachedClip", "ClipCache", "cached_clip", "prepared_cache"]
