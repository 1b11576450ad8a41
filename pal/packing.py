"""Question packing: several questions about one clip trained as one sequence, exactly as if each were alone.

Every question about a clip starts with the same tokens: the chat template's opening, the user turn's header and the
audio (its PLITS placeholders). Packed, that shared prefix is written once and each question-answer follows it as a
branch. A branch sees the prefix and itself, never another branch, and its positions continue from the end of the
prefix, so each branch's tokens get the positions, the context and therefore the loss they would get as a separate
example (tests/test_packing.py checks the losses and gradients). The prefix, its audio and its LAL keys/values are
computed once for all the branches: a clip with k questions costs one prefix instead of k.

Packing needs what the templates give here: the audio inside the shared prefix, no answer token in it.

Notation: P prefix tokens, L_k tokens of branch k, T = P + Σ L_k (one packed row), B rows, W the padded width.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # labels that take no loss (torch's cross-entropy default)

Row = tuple[list[int], list[int], list[bool]]  # (ids, labels, audio flags), as PALProcessor.encode gives them


def shared_prefix_length(rows: list[Row]) -> int:
    """Tokens the rows share from the start, stopped before the first answer token of any row and one short of the
    shortest row (every branch keeps a token of its own)."""
    limit = min(len(ids) for ids, _, _ in rows) - 1
    for _, labels, _ in rows:
        limit = min(limit, next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels)))
    first = rows[0][0]
    length = 0
    while length < limit and all(ids[length] == first[length] for ids, _, _ in rows):
        length += 1
    return length


def pack_rows(rows: list[Row], max_length: int | None = None) -> list[tuple[Row, list[int], list[int]]]:
    """The rows of one clip → packed rows, each (ids, labels, flags) [T] with positions [T] and branch ids [T]
    (0: the shared prefix, k ≥ 1: branch k). Rows whose audio lies outside the shared prefix, and branches that would
    take a packed row past `max_length`, go into further packed rows; a row left alone is returned as it was, with
    plain positions and branch ids all 0."""
    if len(rows) == 1:
        return [_alone(rows[0])]
    prefix = shared_prefix_length(rows)
    if any(any(flags[prefix:]) for _, _, flags in rows):  # audio after the shared part: nothing safe to share
        return [_alone(row) for row in rows]
    out, current = [], None
    for ids, labels, flags in rows:
        tail = len(ids) - prefix
        if current is None or (max_length is not None and len(current[0][0]) + tail > max_length):
            if current is not None:
                out.append(current)
            current = ((ids[:prefix], labels[:prefix], flags[:prefix]), list(range(prefix)), [0] * prefix)
        (c_ids, c_labels, c_flags), positions, branches = current
        branch = max(branches, default=0) + 1
        c_ids += ids[prefix:]
        c_labels += labels[prefix:]
        c_flags += flags[prefix:]
        positions += list(range(prefix, len(ids)))
        branches += [branch] * tail
    out.append(current)
    return out


def _alone(row: Row) -> tuple[Row, list[int], list[int]]:
    return row, list(range(len(row[0]))), [0] * len(row[0])


def branch_attention_mask(branches: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """branches [B, W] (0: shared prefix or unpacked, k ≥ 1: branch k), real [B, W] bool → the attention mask
    [B, 1, W, W] bool (True: query i may attend key j): causal, real keys only, and a branch sees the prefix and
    itself. A padding query attends itself alone, so no softmax row is empty."""
    width = branches.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = branches[:, :, None] == branches[:, None, :]
    prefix_key = (branches == 0)[:, None, :]
    allowed = causal & (same | prefix_key) & real[:, None, :] & real[:, :, None]
    allowed |= torch.diag_embed(~real)
    return allowed[:, None]


def pad_packed(packed: list[tuple[Row, list[int], list[int]]], pad_id: int) -> dict:
    """Packed rows → a right-padded batch: input_ids, labels, audio_token_mask [B, W], position_ids [B, W] and the
    branch attention mask [B, 1, W, W] (`branch_attention_mask`)."""
    width = max(len(row[0]) for row, _, _ in packed)

    def pad(values, filler):
        return values + [filler] * (width - len(values))

    real = torch.tensor([pad([True] * len(row[0]), False) for row, _, _ in packed])
    branches = torch.tensor([pad(b, -1) for _, _, b in packed])
    batch = {
        "input_ids": torch.tensor([pad(row[0], pad_id) for row, _, _ in packed]),
        "labels": torch.tensor([pad(row[1], IGNORE_INDEX) for row, _, _ in packed]),
        "audio_token_mask": torch.tensor([pad(row[2], False) for row, _, _ in packed]),
        "position_ids": torch.tensor([pad(p, 0) for _, p, _ in packed]),
        "attention_mask": branch_attention_mask(branches, real),
    }
    return batch
