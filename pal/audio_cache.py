"""Audio keys/values handed to the LLM's layers, and the generation cache that keeps them.

Both side routes produce the same thing: per audio layer, keys and values of the clip's audio tokens, with the
tokens' mask. LAL (lal_injection.py) prepends them to that layer's own text keys/values; the cross-attention baseline
(cross_attention.py) attends to them in a block of its own. They are computed once per forward, or once at prefill
when generating, and `PALCache` keeps them beside the text cache so every decoding step reads them in place.

Notation: B batch (text rows), N_a audio tokens, H_kv key/value heads, D_h head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class AudioKV:
    """Audio keys/values for every audio layer, ready to prepend to that layer's text keys/values.

    keys[l], values[l]: [B / rows_per_audio, H_kv, N_a, D_h] (keys already rotated when RoPE is on); mask: [B, N_a],
    True = real token; bias: [B] logit offset of every real audio key of the example (-log n_b), or None.
    rows_per_audio: how many consecutive text rows share one row of keys/values (several questions about one clip,
    `shared_repeat`): the keys are stored once and a decoding step reads them once for all those rows.
    """

    keys: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]
    mask: torch.Tensor
    bias: torch.Tensor | None = None
    rows_per_audio: int = 1

    def layer_rows(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s keys and values with one row per text row, [B, H_kv, N_a, D_h] (a copy when rows share)."""
        k, v = self.keys[layer], self.values[layer]
        if self.rows_per_audio > 1:
            k, v = k.repeat_interleave(self.rows_per_audio, 0), v.repeat_interleave(self.rows_per_audio, 0)
        return k, v

    def only_layer(self, layer: int) -> AudioKV:
        """This layer alone, one row of keys/values per text row (what a backend that packs per example needs)."""
        k, v = self.layer_rows(layer)
        return AudioKV({layer: k}, {layer: v}, self.mask, self.bias)

    def _map(self, fn) -> AudioKV:
        rows = {l: self.layer_rows(l) for l in self.keys}
        return AudioKV({l: fn(k) for l, (k, _) in rows.items()}, {l: fn(v) for l, (_, v) in rows.items()},
                          fn(self.mask), None if self.bias is None else fn(self.bias))

    def index_select(self, index: torch.Tensor) -> AudioKV:
        """Rows `index` of the batch (batch selection)."""
        return self._map(lambda t: t.index_select(0, index.to(t.device)))

    def repeat_interleave(self, repeats: int) -> AudioKV:
        """Each row `repeats` times, copied (for keys that every row then changes on its own)."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def once_per_call(self, name: str, attention_mask, key: tuple, build):
        """`build()`, computed once per decoder call and reused by every audio layer: the decoder hands all layers the
        same mask object, so (that object, `key`) identifies the call. The memo holds the mask, so its identity
        cannot be reused by a later call's mask."""
        memo = self.__dict__.get(name)
        if memo is None or memo[0] is not attention_mask or memo[1] != key:
            memo = self.__dict__[name] = (attention_mask, key, build())
        return memo[2]

    def shared_repeat(self, repeats: int) -> AudioKV:
        """Each row `repeats` times without copying the keys/values: the new rows share them."""
        repeat = lambda t: None if t is None else t.repeat_interleave(repeats, dim=0)  # noqa: E731
        return AudioKV(self.keys, self.values, repeat(self.mask), repeat(self.bias), self.rows_per_audio * repeats)


class PALCache(DynamicCache):
    """A DynamicCache that also holds the audio keys/values (LAL's and cross-attention's), so they are computed once
    at prefill.

    Batch expansion (beams, several samples per prompt) repeats the audio rows with the text cache (LAL's without
    copying them: the new rows share). Beam reordering needs nothing: it only permutes the beams of one example,
    whose audio rows are identical.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lal_audio: AudioKV | None = None
        self.xattn_audio: AudioKV | None = None  # the cross-attention blocks' keys/values (cross_attention.py)
        self.audio_source = None  # (the features they were computed from, repeats) when filled by `prepare_audio`

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.lal_audio is not None:  # read in place by the LAL attention: the new rows share the keys
            self.lal_audio = self.lal_audio.shared_repeat(repeats)
        if self.xattn_audio is not None:
            self.xattn_audio = self.xattn_audio.repeat_interleave(repeats)
        if self.audio_source is not None:
            self.audio_source = (self.audio_source[0], self.audio_source[1] * repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        for key in ("lal_audio", "xattn_audio"):
            if getattr(self, key) is not None:
                setattr(self, key, getattr(self, key).index_select(indices))


__all__ = ["AudioKV", "PALCache"]
