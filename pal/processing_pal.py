"""PALProcessor: the one path from examples to model inputs, for training, evaluation, inference and serving.

It pairs the tokenizer with the audio front-ends (the frozen encoder ensemble, or a feature cache):

    prepare(examples)  the part a DataLoader worker does: each clip read once at every encoder's rate (or its
                       cached features), each conversation templated; bad samples set aside with their reason
    collate(prepared)  the training process's part: the encoders run batched, `<audio>` expanded, rows cut to
                       `max_length`, packed (a clip's questions in one sequence) or padded
    __call__(prompts, audio)   prompts or conversations with features already computed (generation)

`<audio>` is not added to the vocabulary (the LLM's embeddings and logits stay exactly the bare model's). Instead each
prompt's `<audio>` expands into as many placeholder positions as the example has real PLITS tokens, flagged in
`audio_token_mask`; the model writes the projected audio there. A model that routes everything through LAL has no
in-sequence audio, and `<audio>` simply disappears from the prompt. A row without audio (a text-only example in a
mixed batch: its encoder masks are all False) expands `<audio>` to nothing as well.

Labels: -100 everywhere except the assistant turns (every assistant turn of a conversation), so the loss is taken on
what the model should say, including the chat template's end-of-turn tokens.

Output keys: input_ids [B, T], attention_mask [B, T], audio_token_mask [B, T], labels [B, T] (when there are
assistant turns), audio {name: (tokens [B, N_e, D_e], mask [B, N_e])} when there is audio; `to_device` moves a batch.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pal.encoders.audio import AudioError

from .clips import check_clip_rows
from .configuration_pal import PALConfig
from .packing import IGNORE_INDEX, pack_rows, pad_packed
from .plits import plits_token_counts

AUDIO_PLACEHOLDER = "<audio>"
PROCESSOR_CONFIG = "processor_config.json"


@dataclass
class Prepared:
    """What `PALProcessor.prepare` hands `collate`, built in a DataLoader worker: the kept examples, each with its
    audio row, templated pieces and packing group, one entry per kept example in each list."""

    examples: list  # the kept examples (data.manifest.Example)
    bad: list  # [(example, problem)]: set aside, with why
    rows: list  # each kept example's clips' rows in `clips` or `cached`, in placeholder order; [] without audio
    clips: list  # clips read at the encoders' rates, one per distinct audio file (without a feature cache)
    cached: dict | None  # {name: (tokens, mask)} read from the feature cache, one row per distinct file
    segments: list  # each kept example's conversation, templated into pieces
    groups: list  # each kept example's packing group (examples of one group share a clip)
    packed: bool  # the examples came in groups, to be packed into one sequence per group
    counts: Counter = field(default_factory=Counter)  # long-audio events while reading


class PALProcessor:
    """tokenizer: the LLM's; config: the model's PALConfig; padding_side: "left" to generate, "right" to train;
    ensemble: the frozen encoders (an AudioEncoderEnsemble), needed to read audio; cache: a FeatureCache to read
    features from instead; max_length / too_long: a row longer than max_length once its PLITS audio is in is skipped
    ("reject") or cut ("truncate"). `counts` counts what `prepare` and `collate` did to the data (rows truncated,
    clips past an encoder's window)."""

    def __init__(self, tokenizer, config: PALConfig, padding_side: str = "left", ensemble=None, cache=None,
                 max_length: int | None = None, too_long: str = "reject"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side = {padding_side!r}: expected 'left' (generation) or 'right'.")
        if too_long not in ("reject", "truncate"):
            raise ValueError(f"too_long = {too_long!r}: expected 'reject' or 'truncate'.")
        self.tokenizer = tokenizer
        self.config = config
        self.padding_side = padding_side
        self.ensemble, self.cache = ensemble, cache
        self.max_length, self.too_long = max_length, too_long
        self.counts: Counter = Counter()  # "truncated", "long_audio_<encoder>_<policy>", ...
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

    def encode(self, segments: list[tuple[str, bool]], audio_tokens: int | list[int], plits_names: list[str],
               row: int, chat: bool = True) -> tuple[list[int], list[int], list[bool]]:
        """Segments → (ids, labels, audio flags), `<audio>` expanded to `audio_tokens` placeholder positions; a list
        gives each clip's count for an example with several clips, one `<audio>` per clip in order."""
        ids, labels, flags = [], [], []
        placeholders = sum(text.count(AUDIO_PLACEHOLDER) for text, target in segments if not target)
        if isinstance(audio_tokens, list):
            if placeholders != len(audio_tokens):
                raise ValueError(f"prompt {row} holds {placeholders} `<audio>` placeholders for {len(audio_tokens)} "
                                 "clips: put one `<audio>` where each clip belongs, in the order of the clips.")
            expansions = iter(audio_tokens)
        else:
            if placeholders > 1:
                raise ValueError(f"prompt {row} holds {placeholders} `<audio>` placeholders for one clip: give one "
                                 "clip per placeholder (a list of audio files), or one `<audio>`.")
            if audio_tokens and not placeholders:
                raise ValueError(
                    f"prompt {row} has no `<audio>` placeholder, but this model routes {plits_names} through PLITS: "
                    "add `<audio>` where the audio belongs in the prompt."
                )
            expansions = iter([audio_tokens] * placeholders)
        for text, target in segments:
            pieces = [text] if target else text.split(AUDIO_PLACEHOLDER)
            for k, piece in enumerate(pieces):
                if k:  # a placeholder stood between piece k-1 and piece k
                    count = next(expansions)
                    ids += [self.pad_id] * count
                    labels += [IGNORE_INDEX] * count
                    flags += [True] * count
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
    def audio_token_counts(self, audio, rows: int, clip_rows=None) -> list[int] | list[list[int]]:
        """PLITS placeholder positions each of `rows` examples needs for these encoder outputs (0 without PLITS);
        with `clip_rows` (several clips per example, pal/clips.py), a list per example, one count per clip."""
        if audio is None:
            return [0] * rows
        audio_rows = next(iter(audio.values()))[0].shape[0]
        if not (self.config.encoders_on("plits") or self.config.summary_encoders()):
            counts = [0] * audio_rows
        else:
            counts = plits_token_counts(self.config, {n: m for n, (_, m) in audio.items()}).tolist()
        if clip_rows is None:
            return counts
        clip_rows = check_clip_rows(clip_rows, audio_rows, rows).tolist()
        heard = torch.stack([m.any(-1) for _, m in audio.values()]).any(0).tolist()  # a text-only row's is all False
        return [[n for n, r, h in zip(counts, clip_rows, heard) if r == row and h] for row in range(rows)]

    def encode_example(self, prompt, audio_tokens: int | list[int], row: int = 0, answer: str | None = None,
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
                 max_length: int | None = None, clip_rows=None) -> dict:
        """prompts: strings or chat-message lists (a conversation's assistant turns become labels); answers: one
        assistant reply per prompt, appended; audio: {name: (tokens, mask)} with one row per prompt, or one per clip
        with `clip_rows` [C] naming each clip's prompt (several clips per prompt, one `<audio>` each, pal/clips.py);
        max_length: cut longer rows (see `truncate`)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            prompts = [prompts]
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts: give one answer per prompt.")
        counts = self.audio_token_counts(audio, len(prompts), clip_rows)
        rows = [self.encode_example(prompt, counts[i], i, answers[i] if answers is not None else None, chat)
                for i, prompt in enumerate(prompts)]
        if max_length is not None:
            rows = [self.truncate(row, max_length, i) for i, row in enumerate(rows)]
        batch = self.pad(rows)
        if audio is not None:
            batch["audio"] = audio
        if clip_rows is not None:
            batch["clip_rows"] = torch.as_tensor(clip_rows).long()
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

    def with_settings(self, **changes) -> PALProcessor:
        """The same tokenizer, config and audio front-ends with other settings (e.g. padding_side="left" to generate
        from a training processor), counting on its own."""
        settings = {"padding_side": self.padding_side, "ensemble": self.ensemble, "cache": self.cache,
                    "max_length": self.max_length, "too_long": self.too_long, **changes}
        return PALProcessor(self.tokenizer, self.config, **settings)

    # ------------------------------------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | Path) -> None:
        """The tokenizer and `processor_config.json` (padding side, length limit) into `folder`, beside the model
        and its `encoders.json` (which names the audio front-ends)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        settings = {"processor_class": type(self).__name__, "padding_side": self.padding_side,
                    "max_length": self.max_length, "too_long": self.too_long}
        (folder / PROCESSOR_CONFIG).write_text(json.dumps(settings, indent=1))

    @classmethod
    def from_pretrained(cls, folder: str | Path, **settings) -> PALProcessor:
        """The processor of a model folder: its tokenizer, its settings (`settings` override them), the model's
        PALConfig, and the encoders its `encoders.json` names, built (none when the folder has no record)."""
        from transformers import AutoTokenizer

        from pal.encoders.ensemble import AudioEncoderEnsemble
        from pal.encoders.identity import ENSEMBLE_RECORD, read_ensemble_record

        folder = Path(folder)
        saved = json.loads((folder / PROCESSOR_CONFIG).read_text()) if (folder / PROCESSOR_CONFIG).is_file() else {}
        saved.pop("processor_class", None)
        if "ensemble" not in settings and (folder / ENSEMBLE_RECORD).is_file():
            settings["ensemble"] = AudioEncoderEnsemble(read_ensemble_record(folder)[0])
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cls(tokenizer, PALConfig.from_pretrained(folder), **{**saved, **settings})

    # --------------------------------------------------------------------------------------------- audio front-ends
    def load_audio(self, audio, warn: bool = True, **limits) -> dict[int, torch.Tensor]:
        """A file, a file's bytes, or a mono 16 kHz waveform [S] → the clip at each encoder's sample rate
        ({rate: [S_rate]}); AudioError names a file that cannot be read, or one whose PLITS tokens would not fit the
        LLM (`check_fits`). limits: `max_seconds`, `setting` (what raises it) and `name` (what errors call bytes), as
        `AudioEncoderEnsemble.load` takes them. `warn`: a warning for each encoder that drops the clip's end
        (`long_audio: truncate`; training counts them instead)."""
        if self.ensemble is None:
            raise ValueError("this processor has no encoders to read audio for: build it with ensemble=...")
        name = limits.get("name", audio if isinstance(audio, (str, Path)) else "the audio")
        clip = self.ensemble.at_member_rates(audio, 16000) if torch.is_tensor(audio) else \
            self.ensemble.load(audio, **limits)
        self.check_fits(clip, name)
        for member, seconds in (self.ensemble.dropped_seconds(clip) if warn else {}).items():
            warnings.warn(f"{name}: {member} keeps its first window only (long_audio: truncate) and drops "
                          f"{seconds:.1f} s; set long_audio: split in the encoders' config to hear all of it.",
                          stacklevel=2)
        return clip

    def check_fits(self, clip: dict[int, torch.Tensor], name) -> None:
        """AudioError, before any encoder runs, when a loaded clip's PLITS tokens alone would not fit the LLM's
        context (LAL's audio never enters the sequence, so only PLITS routes count)."""
        context = getattr(self.config.text_config, "max_position_embeddings", None)
        routed = self.config.encoders_on("plits") + self.config.summary_encoders()
        if not context or not routed or not all(hasattr(m, "token_count") for m in self.ensemble.members.values()):
            return
        counts = self.ensemble.token_counts(clip)
        needed = int(plits_token_counts(self.config, {n: torch.ones(1, max(counts[n], 1), dtype=torch.bool)
                                                      for n in self.config.encoder_dims})[0])
        if needed >= context:
            seconds = max(c.shape[-1] / rate for rate, c in clip.items())
            raise AudioError(
                f"{name}: {seconds:.0f} s of audio would take {needed} positions of the LLM's sequence through PLITS "
                f"({', '.join(f'{n}: {counts[n]} tokens' for n in routed)}), over its context of {context}: cut the "
                "audio, raise plits_config.mlp_downsample, or route that encoder through LAL, whose audio does not "
                "enter the sequence.")

    def encode_audio(self, clips: list[dict[int, torch.Tensor]], device=None) -> dict:
        """Loaded clips → {name: (tokens [B, N_e, D_e], mask [B, N_e])}, the frozen encoders run batched (on
        `device` if given)."""
        features = self.ensemble.encode_loaded(clips)
        if device is None:
            return features
        return {n: (t.to(device), m.to(device)) for n, (t, m) in features.items()}

    # -------------------------------------------------------------------------------------------- examples → batch
    def prepare(self, examples) -> Prepared:
        """The worker's part: each example's audio read at the encoders' rates (or its cached features) and its
        conversation templated; a clip that several examples share is read once. `examples` (data.manifest.Example)
        may hold groups of examples about one clip (a list each), which `collate` packs into one sequence each."""
        bad, kept, rows, clips, paths, segments, groups, counts = [], [], [], [], [], [], [], Counter()
        read: dict[str, int] = {}  # audio path → its row in clips / paths

        def row_of(audio: str) -> int:
            if audio in read:
                return read[audio]
            if self.cache is not None:
                if audio not in self.cache:
                    raise AudioError(f"{audio} is not in the feature cache {self.cache.root}")
                paths.append(audio)
                read[audio] = len(paths) - 1
            else:
                clip = self.load_audio(audio, warn=False)
                counts.update(self.ensemble.long_audio_events(clip))
                clips.append(clip)
                read[audio] = len(clips) - 1
            return read[audio]

        items = [(g, e) for g, item in enumerate(examples) for e in (item if isinstance(item, list) else [item])]
        for group, example in items:
            try:  # AudioError is a ValueError; so is a conversation the chat template cannot split
                pieces = self.segments(example.messages)
                own = [row_of(audio) for audio in example.audios]
            except ValueError as err:
                bad.append((example, str(err)))
                continue
            kept.append(example)
            rows.append(own)
            segments.append(pieces)
            groups.append(group)
        return Prepared(examples=kept, bad=bad, rows=rows, clips=clips, cached=self.cache.get(paths) if paths else None,
                        segments=segments, groups=groups, packed=any(isinstance(item, list) for item in examples),
                        counts=counts)

    def prepared_audio(self, prepared: Prepared) -> dict | None:
        """Encoder outputs with one row per kept example of `prepare`'s output, or one per clip when an example holds
        several (`prepared_clip_rows` says whose each row is); the encoders run here, batched."""
        if prepared.cached is None and not prepared.clips:
            return self.no_audio(len(prepared.examples))
        features = prepared.cached if prepared.cached is not None else self.encode_audio(prepared.clips)
        return scatter_rows(features, [r for own in prepared.rows for r in (own or [None])])

    @staticmethod
    def prepared_clip_rows(prepared: Prepared) -> list[int] | None:
        """The example of each row of `prepared_audio` (pal/clips.py's clip_rows); None when none holds several."""
        if all(len(own) <= 1 for own in prepared.rows):
            return None
        return [i for i, own in enumerate(prepared.rows) for _ in (own or [None])]

    @staticmethod
    def _example_audio_rows(prepared: Prepared) -> list[list[int]]:
        """Each kept example's rows of `prepared_audio`: one per clip, or the one all-masked row of a text-only one."""
        out, start = [], 0
        for own in prepared.rows:
            width = max(len(own), 1)
            out.append(list(range(start, start + width)))
            start += width
        return out

    def collate(self, prepared: Prepared) -> tuple[dict | None, list]:
        """The training process's part, on what `prepare` gave: → (batch, or None when nothing usable is left;
        [(example, problem)] of the skipped examples). A sample is skipped for audio that does not decode, a row over
        `max_length` once its PLITS audio tokens are in (`too_long="truncate"` cuts it instead, counted), or no
        assistant token. batch["examples"]: the question-answer examples in it (a packed row holds several)."""
        self.counts.update(prepared.counts)
        audio, kept, bad = self.prepared_audio(prepared), prepared.examples, list(prepared.bad)
        clip_rows = self.prepared_clip_rows(prepared)
        counts = self.audio_token_counts(audio, len(kept), clip_rows)
        plits = self.config.encoders_on("plits") + self.config.summary_encoders()
        rows, keep = [], []
        for i, example in enumerate(kept):
            try:
                row = self.encode(prepared.segments[i], counts[i], plits, i)
                if self.max_length is not None and len(row[0]) > self.max_length:
                    if self.too_long != "truncate":
                        raise ValueError(f"{len(row[0])} tokens with its audio, over max_length {self.max_length}.")
                    row = self.truncate(row, self.max_length, i)
                    self.counts["truncated"] += 1
            except ValueError as err:
                bad.append((example, str(err).replace(f"prompt {i}", "the example", 1)))
                continue
            if all(label == IGNORE_INDEX for label in row[1]):
                bad.append((example, "no assistant tokens after templating."))
                continue
            rows.append(row)
            keep.append(i)
        if not rows:
            return None, bad
        if prepared.packed:
            batch, keep = self._pack(rows, keep, prepared.groups)
        else:
            batch = self.pad(rows)
        if audio is not None:  # the audio rows of each row's example, in order
            own = self._example_audio_rows(prepared)
            take = [c for i in keep for c in own[i]]
            batch["audio"] = {n: (t[take], m[take]) for n, (t, m) in audio.items()}
            if clip_rows is not None:
                batch["clip_rows"] = torch.tensor([row for row, i in enumerate(keep) for _ in own[i]])
        batch["examples"] = len(rows)
        return batch, bad

    def _pack(self, rows: list, keep: list[int], groups: list[int]) -> tuple[dict, list[int]]:
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
        return pad_packed(packed, self.pad_id), audio_rows

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


def to_device(batch: dict, device) -> dict:
    """A batch's tensors and its audio features on `device` (other entries, e.g. "examples", dropped)."""
    out = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
    if batch.get("audio") is not None:
        out["audio"] = {n: (t.to(device), m.to(device)) for n, (t, m) in batch["audio"].items()}
    return out
