"""Teacher-forced answer losses: the cross-entropy of each gold answer (nats per answer token) given its prompt and an
audio row. The audio-reliance gap (reliance.py) compares them with a clip's own audio and with another clip's."""

from __future__ import annotations

import torch

from pal.inference.audio_llm import AudioLLM, per_row
from pal.processing_pal import to_device


@torch.no_grad()
def answer_losses(llm: AudioLLM, conversations: list[list[dict]], audio: dict | None) -> torch.Tensor:
    """Each conversation's assistant turns scored teacher-forced, given its prompt and its audio row → [B]."""
    inputs = to_device(llm.processor.with_settings(padding_side="right")(conversations, audio), llm.device)
    return mean_answer_losses(llm.model(**inputs).logits, inputs["labels"])  # right padding, as in training


@torch.no_grad()
def answer_losses_about_one_clip(llm: AudioLLM, conversations: list[list[dict]], features: dict) -> torch.Tensor:
    """`answer_losses` of B conversations about one clip (`features`: {name: (tokens [1, N_e, D_e], mask [1, N_e])})
    → [B]. As in `AudioLLM.generate_about_one_clip`, the prompt prefix they share (the template's opening and the
    PLITS audio: most of each row) runs through the LLM once and each row's own rest continues from its cache; the
    losses are those of `answer_losses` with the clip per row, up to float rounding."""
    repeats = len(conversations)
    prefix, suffixes = llm.shared_prefix(conversations, features)
    longest = max((len(prefix["input_ids"][0]) + len(ids) for ids, _, _ in suffixes), default=0) if prefix else 0
    if (prefix is None or any(labels[0] != -100 for _, labels, _ in suffixes)
            or (llm.processor.max_length and longest > llm.processor.max_length)):
        # Nothing shared, an answer token right after the prefix (its logit would be the prefix's), or rows the
        # processor would cut: every row whole.
        return answer_losses(llm, conversations, per_row(features, repeats))
    cache = llm.prefix_cache(prefix, features, repeats)
    rest = to_device(llm.processor.with_settings(padding_side="right").pad(suffixes), llm.device)
    shared = prefix["input_ids"].shape[1]
    mask = torch.cat([torch.ones(repeats, shared, dtype=rest["attention_mask"].dtype, device=llm.device),
                      rest["attention_mask"]], dim=1)
    out = llm.model(input_ids=rest["input_ids"], attention_mask=mask, labels=rest["labels"], past_key_values=cache)
    return mean_answer_losses(out.logits, rest["labels"])


def mean_answer_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [N_supervised, V] at the positions whose next label is supervised (row-major, as the model returns them
    with `labels`), labels [B, T] → mean cross-entropy per row [B]."""
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    rows = (shifted != -100).nonzero()[:, 0]
    token_loss = torch.nn.functional.cross_entropy(logits.float(), shifted[shifted != -100], reduction="none")
    sums = torch.zeros(len(labels), device=token_loss.device).index_add_(0, rows, token_loss)
    return (sums / torch.bincount(rows, minlength=len(labels)).clamp(min=1)).cpu()
