"""PALProcessor: prompts or whole conversations (with an `<audio>` placeholder) → model inputs.

`<audio>` is not added to the vocabulary (the LLM's embeddings and logits stay exactly the bare model's). Instead each
prompt's `<audio>` expands into as many placeholder positions as the example has real PLITS tokens, flagged in
`audio_token_mask`; the model writes the projected audio there. A model that routes everything through LAL has no
in-sequence audio, and `<audio>` simply disappears from the prompt. A row without audio (a text-only example in a
mixed batch: its encoder masks are all False) expands `<audio>` to nothing as well.

Labels: -100 everywhere except the assistant turns (every assistant turn of a conversation), so the loss is taken on
what the model should say, including the chat template's end-of-turn tokens.

Output keys: input_ids [B, T], attention_mask [B, T], audio_token_mask [B, T], labels [B, T] (when there are
assistant turns), audio (passed through).
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

    # ------------------------------------------------------------------------------------------------ rendering
    def segments(self, messages: list[dict], add_generation_prompt: bool = True) -> list[tuple[str, bool]]:
        """A conversation as (text, is_assistant) pieces whose concatenation is the chat-template rendering.

        Each assistant turn is cut out by rendering the conversation up to it with and without that turn.
        """
        template = self.tokenizer.apply_chat_template
        out, done = [], ""
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            head = template(messages[:i], tokenize=False, add_generation_prompt=True)
            full = template(messages[: i + 1], tokenize=False)
            if not (head.startswith(done) and full.startswith(head)):
                raise ValueError("the chat template re-renders earlier turns when a turn is added; cannot mask labels.")
            out += [(head[len(done):], False), (full[len(head):], True)]
            done = full
        if messages and messages[-1].get("role") != "assistant":
            head = template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            if not head.startswith(done):
                raise ValueError("the chat template re-renders earlier turns; cannot build the prompt.")
            out.append((head[len(done):], False))
        return [(text, target) for text, target in out if text]

    def _encode(self, text: str, first: bool, chat: bool) -> list[int]:
        # A chat template writes its own BOS; raw prompts get the tokenizer's special tokens at the start only.
        return self.tokenizer(text, add_special_tokens=first and not chat)["input_ids"]

    def encode(self, segments: list[tuple[str, bool]], audio_tokens: int, plits_names: list[str], row: int,
               chat: bool = True) -> tuple[list[int], list[int], list[bool]]:
        """Segments → (ids, labels, audio flags), `<audio>` expanded to `audio_tokens` placeholder positions."""
        ids, labels, flags = [], [], []
        placeholders = sum(text.count(AUDIO_PLACEHOLDER) for text, target in segments if not target)
        if placeholders > 1:
            raise ValueError(f"prompt {row} holds {placeholders} `<audio>` placeholders; one audio per example.")
        if audio_tokens and not placeholders:
            raise ValueError(
                f"prompt {row} has no `<audio>` placeholder, but this model routes {plits_names} through PLITS: "
                "add `<audio>` where the audio belongs in the prompt."
            )
        for text, target in segments:
            pieces = [text] if target else text.split(AUDIO_PLACEHOLDER)
            for k, piece in enumerate(pieces):
                if k:  # the placeholder stood between piece k-1 and piece k
                    ids += [self.pad_id] * audio_tokens
                    labels += [IGNORE_INDEX] * audio_tokens
                    flags += [True] * audio_tokens
                part = self._encode(piece, first=not ids, chat=chat)
                if target and not chat and self.tokenizer.eos_token_id is not None:
                    part = part + [self.tokenizer.eos_token_id]
                ids += part
                labels += part if target else [IGNORE_INDEX] * len(part)
                flags += [False] * len(part)
        return ids, labels, flags

    def text_lengths(self, conversations: list[list[tuple[str, bool]]]) -> list[tuple[int, int]]:
        """(tokens, tokens before the first answer token) of each conversation's `segments`, audio placeholders not
        counted: what `encode(segments, 0, ...)` would give, from one batched tokenizer call (fast at millions)."""
        pieces, owner, in_prompt = [], [], []
        for row, segments in enumerate(conversations):
            answered = False
            for text, target in segments:
                for piece in [text] if target else text.split(AUDIO_PLACEHOLDER):
                    pieces.append(piece)
                    owner.append(row)
                    in_prompt.append(not (answered or target))
                answered = answered or target
        ids = self.tokenizer(pieces, add_special_tokens=False)["input_ids"] if pieces else []
        out = [[0, 0] for _ in conversations]
        for row, prompt, piece in zip(owner, in_prompt, ids):
            out[row][0] += len(piece)
            out[row][1] += len(piece) if prompt else 0
        return [tuple(lengths) for lengths in out]

    # ------------------------------------------------------------------------------------------------ batching
    def audio_token_counts(self, audio, rows: int) -> list[int]:
        """PLITS placeholder positions each of `rows` examples needs for these encoder outputs (0 without PLITS)."""
        if audio is None or not (self.config.encoders_on("plits") or self.config.summary_encoders()):
            return [0] * rows
        return plits_token_counts(self.config, {n: m for n, (_, m) in audio.items()}).tolist()

    def encode_example(self, prompt, audio_tokens: int, row: int = 0, answer: str | None = None,
                       chat: bool = True) -> tuple[list[int], list[int], list[bool]]:
        """One prompt (a string or a conversation) → (ids, labels, audio flags), `<audio>` expanded."""
        plits_names = self.config.encoders_on("plits") + self.config.summary_encoders()
        if chat:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            if answer is not None:
                messages = messages + [{"role": "assistant", "content": answer}]
            segments = self.segments(messages)
        else:
            segments = [(prompt, False)] + ([(answer, True)] if answer else [])
        return self.encode(segments, audio_tokens, plits_names, row, chat)

    @staticmethod
    def truncate(row: tuple[list[int], list[int], list[bool]], max_length: int, index: int = 0):
        """Cut the end of a row longer than `max_length`; ValueError if that would cut audio placeholder positions
        or leave no answer token (nothing would be left to learn from)."""
        ids, labels, flags = row
        if len(ids) <= max_length:
            return row
        if any(flags[max_length:]):
            raise ValueError(f"prompt {index}: {len(ids)} tokens with its audio, over max_length {max_length}, and "
                             "cutting the end would cut the audio.")
        if labels and all(label == IGNORE_INDEX for label in labels[:max_length]) and any(
                label != IGNORE_INDEX for label in labels):
            raise ValueError(f"prompt {index}: {len(ids)} tokens, over max_length {max_length}, and its answer "
                             "starts past the limit.")
        return ids[:max_length], labels[:max_length], flags[:max_length]

    def __call__(self, prompts, audio=None, answers: list[str] | None = None, chat: bool = True,
                 max_length: int | None = None) -> dict:
        """prompts: strings or chat-message lists (a conversation's assistant turns become labels); answers: one
        assistant reply per prompt, appended; audio: {name: (tokens, mask)} with one row per prompt; max_length: cut
        longer rows (see `truncate`)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            prompts = [prompts]
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts: give one answer per prompt.")
        counts = self.audio_token_counts(audio, len(prompts))
        rows = [self.encode_example(prompt, int(counts[i]), i, answers[i] if answers is not None else None, chat)
                for i, prompt in enumerate(prompts)]
        if max_length is not None:
            rows = [self.truncate(row, max_length, i) for i, row in enumerate(rows)]
        batch = self.pad(rows)
        if audio is not None:
            batch["audio"] = audio
        return batch

    def pad(self, rows: list[tuple[list[int], list[int], list[bool]]]) -> dict:
        """Pad (ids, labels, flags) rows on the processor's padding side into tensors."""
        width = max(len(ids) for ids, _, _ in rows)

        def pad(row, value):
            filler = [value] * (width - len(row))
            return filler + row if self.padding_side == "left" else row + filler

        batch = {
            "input_ids": torch.tensor([pad(ids, self.pad_id) for ids, _, _ in rows]),
            "attention_mask": torch.tensor([pad([1] * len(ids), 0) for ids, _, _ in rows]),
            "audio_token_mask": torch.tensor([pad(flags, False) for _, _, flags in rows]),
        }
        if any(l != IGNORE_INDEX for _, labels, _ in rows for l in labels):
            batch["labels"] = torch.tensor([pad(labels, IGNORE_INDEX) for _, labels, _ in rows])
        return batch

    def decode(self, sequences: torch.Tensor, prompt_length: int) -> list[str]:
        """Generated continuations (after `prompt_length` input positions) as text."""
        return self.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
