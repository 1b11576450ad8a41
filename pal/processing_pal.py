"""PALProcessor: prompts (plain text or chat messages with an `<audio>` placeholder) → model inputs.

`<audio>` is not added to the vocabulary (the LLM's embeddings and logits stay exactly the bare model's). Instead each
prompt's `<audio>` expands into as many placeholder positions as the example has real PLITS tokens, flagged in
`audio_token_mask`; the model writes the projected audio there. A model that routes everything through LAL has no
in-sequence audio, and `<audio>` simply disappears from the prompt.

Output keys: input_ids [B, T], attention_mask [B, T], audio_token_mask [B, T], labels [B, T] (when answers are
given: -100 everywhere but the answer), audio (passed through).
"""

from __future__ import annotations

import torch

from .configuration_pal import PALConfig
from .plits import plits_token_counts

AUDIO_PLACEHOLDER = "<audio>"
IGNORE_INDEX = -100


class PALProcessor:
    def __init__(self, tokenizer, config: PALConfig, padding_side: str = "left"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side = {padding_side!r}: expected 'left' (generation) or 'right'.")
        self.tokenizer = tokenizer
        self.config = config
        self.padding_side = padding_side
        # The placeholder id is only a filler: the model overwrites those embeddings.
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    def render(self, prompt, answer: str | None = None, chat: bool = True) -> tuple[str, str]:
        """The prompt text as the LLM sees it (chat template applied), and the answer text that follows it."""
        if not chat:
            return prompt, answer or ""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        head = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if answer is None:
            return head, ""
        full = self.tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": answer}], tokenize=False
        )
        if not full.startswith(head):
            raise ValueError("the chat template renders the answer turn in a way that changes the prompt; cannot mask it.")
        return head, full[len(head):]

    def _encode(self, text: str, first: bool, chat: bool) -> list[int]:
        # A chat template writes its own BOS; raw prompts get the tokenizer's special tokens at the start only.
        return self.tokenizer(text, add_special_tokens=first and not chat)["input_ids"]

    def __call__(self, prompts, audio=None, answers: list[str] | None = None, chat: bool = True) -> dict:
        """prompts: list of strings or of chat-message lists; audio: {name: (tokens, mask)} with one row per prompt."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            prompts = [prompts]
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts: give one answer per prompt.")
        needs_audio_tokens = self.config.has_plits_tokens() and audio is not None
        counts = plits_token_counts(self.config, {n: m for n, (_, m) in audio.items()}) if needs_audio_tokens else None

        rows, label_rows, audio_rows = [], [], []
        for i, prompt in enumerate(prompts):
            head, tail = self.render(prompt, answers[i] if answers is not None else None, chat)
            pieces = head.split(AUDIO_PLACEHOLDER)
            if len(pieces) > 2:
                raise ValueError(f"prompt {i} holds {len(pieces) - 1} `<audio>` placeholders; one audio per example.")
            if needs_audio_tokens and len(pieces) == 1:
                raise ValueError(
                    f"prompt {i} has no `<audio>` placeholder, but this model routes "
                    f"{self.config.encoders_on('plits') + self.config.summary_encoders()} through PLITS: add `<audio>` "
                    "where the audio belongs in the prompt."
                )
            ids = self._encode(pieces[0], first=True, chat=chat)
            is_audio = [False] * len(ids)
            if len(pieces) == 2:
                n = int(counts[i]) if counts is not None else 0
                ids += [self.pad_id] * n
                is_audio += [True] * n
                ids += self._encode(pieces[1], first=False, chat=chat)
                is_audio += [False] * (len(ids) - len(is_audio))
            labels = [IGNORE_INDEX] * len(ids)
            if tail:
                answer_ids = self._encode(tail, first=False, chat=chat)
                if not chat and self.tokenizer.eos_token_id is not None:
                    answer_ids.append(self.tokenizer.eos_token_id)
                ids += answer_ids
                labels += answer_ids
                is_audio += [False] * len(answer_ids)
            rows.append(ids)
            label_rows.append(labels)
            audio_rows.append(is_audio)

        width = max(len(r) for r in rows)

        def pad(row, value):
            filler = [value] * (width - len(row))
            return filler + row if self.padding_side == "left" else row + filler

        batch = {
            "input_ids": torch.tensor([pad(r, self.pad_id) for r in rows]),
            "attention_mask": torch.tensor([pad([1] * len(r), 0) for r in rows]),
            "audio_token_mask": torch.tensor([pad(r, False) for r in audio_rows]),
        }
        if answers is not None:
            batch["labels"] = torch.tensor([pad(r, IGNORE_INDEX) for r in label_rows])
        if audio is not None:
            batch["audio"] = audio
        return batch

    def decode(self, sequences: torch.Tensor, prompt_length: int) -> list[str]:
        """Generated continuations (after `prompt_length` input positions) as text."""
        return self.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
