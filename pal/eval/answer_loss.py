"""Teacher-forced answer losses: the cross-entropy of each gold answer (nats per answer token) given its prompt and an
audio row. The audio-reliance gap (reliance.py) compares them with a clip's own audio and with another clip's."""

from __future__ import annotations

import torch

from pal.inference.audio_llm import AudioLLM, per_row
from pal.processing_pal import to_device


@torch.no_grad()
def answer_losses(llm: AudioLLM, conversations: list[list[dict]], audio: dict | None,
                  first_tokens: list[int] | None = None) -> torch.Tensor:
    """Each conversation's assistant turns scored teacher-forced, given its prompt and its audio row → [B]
    (`first_tokens`: see `answer_losses_about_one_clip`)."""
    inputs = to_device(llm.processor.with_settings(padding_side="right")(conversations, audio), llm.device)
    logits = llm.model(**inputs).logits  # right padding, as in training
    if first_tokens is not None:
        return summed_first_token_losses(logits, inputs["labels"], first_tokens)
    return mean_answer_losses(logits, inputs["labels"])


@torch.no_grad()
def answer_losses_about_one_clip(llm: AudioLLM, conversations: list[list[dict]], features: dict | None,
                                 first_tokens: list[int] | None = None) -> torch.Tensor:
    """`answer_losses` of B conversations about one clip (`features`: {name: (tokens [1, N_e, D_e], mask [1, N_e])},
    or None for a prompt without audio) → [B]: the mean per answer token, or with `first_tokens` the summed loss of
    each row's first `first_tokens[i]` answer tokens (the negative log-likelihood of an answer's start). As in
    `AudioLLM.generate_about_one_clip`, the prompt prefix they share (the template's opening and the PLITS audio: most
    of each row) runs through the LLM once and each row's own rest continues from its cache; the losses are those of
    `answer_losses` with the clip per row, up to float rounding."""
    repeats = len(conversations)
    prefix, suffixes = llm.shared_prefix(conversations, features)
    longest = max((len(prefix["input_ids"][0]) + len(ids) for ids, _, _ in suffixes), default=0) if prefix else 0
    if (prefix is None or any(labels[0] != -100 for _, labels, _ in suffixes)
            or (llm.processor.max_length and longest > llm.processor.max_length)):
        # Nothing shared, an answer token right after the prefix (its logit would be the prefix's), or rows the
        # processor would cut: every row whole.
        audio = per_row(features, repeats) if features is not None else None
        return answer_losses(llm, conversations, audio, first_tokens)
    cache = llm.prefix_cache(prefix, features, repeats)
    rest = to_device(llm.processor.with_settings(padding_side="right").pad(suffixes), llm.device)
    shared = prefix["input_ids"].shape[1]
    mask = torch.cat([torch.ones(repeats, shared, dtype=rest["attention_mask"].dtype, device=llm.device),
                      rest["attention_mask"]], dim=1)
    out = llm.model(input_ids=rest["input_ids"], attention_mask=mask, labels=rest["labels"], past_key_values=cache)
    if first_tokens is not None:
        return summed_first_token_losses(out.logits, rest["labels"], first_tokens)
    return mean_answer_losses(out.logits, rest["labels"])


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N_supervised, V] at the positions whose next label is supervised (row-major, as the model returns them
    with `labels`), labels [B, T] → (cross-entropy of each supervised token [N_supervised], its row [N_supervised])."""
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    rows = (shifted != -100).nonzero()[:, 0]
    return torch.nn.functional.cross_entropy(logits.float(), shifted[shifted != -100], reduction="none"), rows


def mean_answer_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`token_losses` → mean cross-entropy per row [B]."""
    loss, rows = token_losses(logits, labels)
    sums = torch.zeros(len(labels), device=loss.device).index_add_(0, rows, loss)
    return (sums / torch.bincount(rows, minlength=len(labels)).clamp(min=1)).cpu()


def summed_first_token_losses(logits: torch.Tensor, labels: torch.Tensor, first_tokens: list[int]) -> torch.Tensor:
    """`token_losses` → per row [B], the sum over its first `first_tokens[row]` supervised tokens."""
    loss, rows = token_losses(logits, labels)
    starts = torch.searchsorted(rows, torch.arange(len(labels), device=rows.device))
    rank = torch.arange(len(rows), device=rows.device) - starts[rows]  # each token's place in its row's answer
    keep = rank < torch.tensor(first_tokens, device=rows.device)[rows]
    return torch.zeros(len(labels), device=loss.device).index_add_(0, rows[keep], loss[keep]).cpu()
