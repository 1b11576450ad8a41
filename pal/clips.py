"""Several clips in one question: how the audio rows of a batch map to its text rows.

The encoders see clips, one audio row each; a question may ask about several (`<audio>` once per clip in its prompt).
`clip_rows` [C] says which text row each audio row belongs to: non-decreasing, a text row's clips in the order of its
placeholders, every text row holding at least one audio row (a text-only row holds one with an all-False mask, as in
`PALProcessor.no_audio`). Without it there is one clip per text row, audio row b for text row b.

- PLITS projects each clip on its own (a downsampling group or a latent query never mixes two clips) and
  `splice_audio_tokens` writes the clips' tokens, in order, into the placeholders in order: each placeholder expands in
  place.
- LAL reads a text row's clips joined along the token axis (`join_clips`), in clip order, and tags each token with its
  clip's index within the row, so that the LLM can tell the clips apart (lal_injection.py, "Several clips";
  docs/model.md#several-clips).

Notation: B text rows, C audio rows (clips), N_e encoder tokens, D_e encoder width.
"""

from __future__ import annotations

import torch

from pal.encoders.outputs import pad_rows


def check_clip_rows(clip_rows: torch.Tensor | None, clips: int, batch: int) -> torch.Tensor:
    """`clip_rows` [C] checked against C audio rows and B text rows (None: one clip per row) → clip_rows [C] long."""
    if clip_rows is None:
        if clips != batch:
            raise ValueError(f"{clips} audio rows for {batch} text rows: give one audio row per text row, or "
                             "`clip_rows` naming the text row of each audio row.")
        return torch.arange(batch)
    clip_rows = torch.as_tensor(clip_rows).long().cpu()
    if clip_rows.shape != (clips,):
        raise ValueError(f"clip_rows has shape {tuple(clip_rows.shape)}, but there are {clips} audio rows: give one "
                         "text row per audio row.")
    steps = clip_rows.diff()  # 0: the same question's next clip, 1: the next question
    if clips and (int(clip_rows[0]) != 0 or int(clip_rows[-1]) != batch - 1 or bool(((steps < 0) | (steps > 1)).any())):
        raise ValueError(f"clip_rows {clip_rows.tolist()} must run through the {batch} text rows in order, each "
                         "holding at least one audio row (its clips in the order of its `<audio>` placeholders).")
    return clip_rows


def clip_rows_for(features: list[dict | None]) -> list[int] | None:
    """Questions' features, each {name: (tokens [k, N_e, D_e], mask [k, N_e])} for its k clips or None without audio,
    stacked one question after another → the question of each stacked row; None when every question has one row."""
    counts = [1 if f is None else next(iter(f.values()))[0].shape[0] for f in features]
    return None if all(k == 1 for k in counts) else [i for i, k in enumerate(counts) for _ in range(k)]


def clip_index(clip_rows: torch.Tensor) -> torch.Tensor:
    """[C] → each audio row's index among its text row's clips (0 for the first clip of each row)."""
    starts = torch.ones_like(clip_rows, dtype=torch.bool)
    starts[1:] = clip_rows[1:] != clip_rows[:-1]
    first = torch.cummax(torch.where(starts, torch.arange(len(clip_rows)), 0), 0).values
    return torch.arange(len(clip_rows)) - first


def join_clips(audio: dict, clip_rows: torch.Tensor, batch: int) -> tuple[dict, dict]:
    """Each text row's clips joined along the token axis, their real tokens in clip order, real tokens first.

    audio {name: (tokens [C, N_e, D_e], mask [C, N_e])} → ({name: (tokens [B, N_j, D_e], mask [B, N_j])},
    {name: clip [B, N_j] long, each token's clip index within its row, 0 at padding}). One clip per row returns the
    audio as it is."""
    if len(clip_rows) == batch:  # one clip per text row (check_clip_rows: every row holds one)
        return audio, {name: torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
                       for name, (_, mask) in audio.items()}
    index = clip_index(clip_rows)
    joined, clips = {}, {}
    for name, (tokens, mask) in audio.items():
        rows = [[] for _ in range(batch)]
        tags = [[] for _ in range(batch)]
        for c, row in enumerate(clip_rows.tolist()):
            real = tokens[c][mask[c]]
            rows[row].append(real)
            tags[row].append(torch.full((real.shape[0],), int(index[c]), dtype=torch.long))
        joined[name] = pad_rows([torch.cat(r) for r in rows])
        clips[name] = pad_rows([torch.cat(t) for t in tags])[0].to(mask.device)
    return joined, clips


def row_totals(per_clip: torch.Tensor, clip_rows: torch.Tensor, batch: int) -> torch.Tensor:
    """A per-clip count [C] summed per text row → [B]."""
    return torch.zeros(batch, dtype=per_clip.dtype, device=per_clip.device).index_add_(
        0, clip_rows.to(per_clip.device), per_clip)


def repeat_clips(clip_rows: torch.Tensor, batch: int, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every text row repeated `repeats` times (beams, several samples, several questions per clip), with its clips:
    → (the audio rows to take, in order, [C·repeats]; the new clip_rows [C·repeats])."""
    take, rows = [], []
    for row in range(batch):
        own = (clip_rows == row).nonzero().flatten().tolist()
        for r in range(repeats):
            take += own
            rows += [row * repeats + r] * len(own)
    return torch.tensor(take, dtype=torch.long), torch.tensor(rows, dtype=torch.long)
