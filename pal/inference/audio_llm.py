"""Asking a trained model about audio: `AudioLLM` holds a model folder with its processor and its encoders.

    llm = AudioLLM.from_pretrained("runs/demo/curriculum/stage3-all/final")
    llm.ask("dog.wav", "What can you hear?")                       # one clip, one question
    llm.ask_batch(["a.wav", "b.wav"], ["Is there a bell?", "How many sounds?"])
    llm.ask_many("a.wav", ["Is there a bell?", "How many sounds?", ...])   # the clip encoded once, LAL K/V once

A folder written by `pal train` records the encoders it was trained with (`encoders.json`: their config and the
identity of their weights), so they are rebuilt as they were; changed weights, or features of other encoders, are
errors naming both sides. Prompts go through the model's chat template with left padding; a batch gives the same
tokens as its questions asked one by one (tested for every connector). `device_map="auto"` spreads an LLM larger than
one GPU over the available devices (accelerate); on a CPU everything stays on the CPU.

Notation: B prompts, N_e encoder tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from pal import AUDIO_PLACEHOLDER, PALForConditionalGeneration, PALProcessor
from pal.clips import clip_rows_for
from pal.encoders.audio import AudioError
from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
from pal.encoders.identity import read_ensemble_record
from pal.encoders.outputs import pad_rows
from pal.packing import IGNORE_INDEX
from pal.processing_pal import to_device


@dataclass
class Decoding:
    """Generation settings (recorded with every result)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_beams: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()  # strings that end the answer (kept out of it)

    def kwargs(self) -> dict:
        out = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "num_beams": self.num_beams}
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        return out

    def cut(self, text: str) -> str:
        """`text` up to the first stop string."""
        return min((text[: text.index(s)] for s in self.stop if s in text), key=len, default=text)


class StopOnText(StoppingCriteria):
    """A stopping criterion: a row ends once its generated text holds one of `stops`.

    Hugging Face's `stop_strings` builds a matcher over the whole vocabulary for every new set of strings, a cost
    a server would pay per request (docs/serving.md, "What one request may cost"); decoding each row's last tokens
    is cheap. A character is at most 4 UTF-8 bytes
    and a byte-level token at least one byte, so a stop string of L characters lies within the last 4L + 1 tokens."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_length: int):
        self.tokenizer, self.stops, self.start = tokenizer, stops, prompt_length
        self.window = 4 * max(len(s) for s in stops) + 1

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        tails = input_ids[:, self.start:][:, -self.window:].tolist()
        done = [any(s in self.tokenizer.decode(tail, skip_special_tokens=True) for s in self.stops) for tail in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


Audio = str | Path | torch.Tensor  # a file, or a mono 16 kHz waveform [S]
FEATURE_MEMO = 512  # files whose encoder outputs an AudioLLM keeps (`file_features`; ~1 MB each for 4 s clips)


class AudioLLM:
    """A model with its processor (tokenizer, chat template, encoders), ready to answer questions about audio.

    What a user calls: `from_pretrained`, `ask`, `ask_many`, `ask_batch` (and `conversation` to build a prompt).
    Below them, the batched parts that `pal eval` and `pal serve` build on: `features` / `file_features` (clips →
    encoder outputs), `generate` / `generate_ids` / `chat` / `read_answer` (batches → answers), and
    `generate_about_one_clip` / `shared_prefix` / `prefix_cache` (a clip's questions with their shared prompt run
    once)."""

    def __init__(self, model: PALForConditionalGeneration, processor: PALProcessor, folder: str | Path | None = None):
        ensemble = processor.ensemble
        if ensemble is not None and ensemble.dims != model.config.encoder_dims:
            raise ValueError(
                f"the model {folder or ''} was built for encoders {model.config.encoder_dims} ({{name: width}}), but "
                f"the encoders given are {ensemble.dims}: use the encoders it was trained with."
            )
        self.model, self.ensemble, self.folder = model.eval(), ensemble, folder
        # The one examples → batch path (pal/processing_pal.py), left-padded to generate.
        self.processor = processor if processor.padding_side == "left" else processor.with_settings(padding_side="left")
        self._memo: OrderedDict[str, dict] = OrderedDict()  # file → its encoder outputs (`file_features`)

    @classmethod
    def from_pretrained(cls, folder: str | Path, encoders: str | Path | EnsembleConfig | None = None,
                        device_map: str | None = None, dtype: torch.dtype = torch.float32) -> AudioLLM:
        """A model folder (a stage's `final/`, or any PAL `save_pretrained` folder with its tokenizer).

        encoders: an ensemble YAML (or its loaded config), for folders without `encoders.json`; device_map: e.g.
        "auto" for accelerate.
        """
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a model folder (no config.json): pass a stage's final/ folder.")
        settings = {"padding_side": "left"}
        if encoders is not None:
            config = encoders if isinstance(encoders, EnsembleConfig) else EnsembleConfig.from_yaml(encoders)
            settings["ensemble"] = AudioEncoderEnsemble(config)
        processor = PALProcessor.from_pretrained(folder, **settings)  # the one loader of a folder's tokenizer, encoders
        if processor.ensemble is None:
            read_ensemble_record(folder)  # raises: the folder names no encoders, and what to pass instead
        from .export import ADAPTER_RECORD, load_adapter_export

        if (folder / ADAPTER_RECORD).is_file():  # an adapter-only export
            model = load_adapter_export(folder, dtype)
        else:
            model = PALForConditionalGeneration.from_pretrained(folder, dtype=dtype, device_map=device_map)
        return cls(model, processor, folder)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # ------------------------------------------------------------------------------------------------------ audio
    def load(self, audio: Audio) -> dict[int, torch.Tensor]:
        """A file or a 16 kHz waveform → the clip at each encoder's rate (AudioError names a bad file)."""
        return self.processor.load_audio(audio)

    def features(self, clips: list[dict[int, torch.Tensor]]) -> dict:
        """Loaded clips → {name: (tokens [B, N_e, D_e], mask [B, N_e])} on the model's device."""
        return self.processor.encode_audio(clips, self.device)

    def file_features(self, paths: list[str]) -> tuple[dict | None, dict[str, str]]:
        """Encoder outputs of audio files, one row per path: {name: (tokens [B, N_e, D_e], mask [B, N_e])}, and
        {path: why} for files that cannot be read (their rows are all-masked). Each file is read and encoded once
        and kept for the next call (the most recent FEATURE_MEMO files), so an evaluation that asks one clip several
        questions, and again with another clip's audio, encodes it once."""
        bad, fresh = {}, []
        for path in dict.fromkeys(paths):
            if path in self._memo:
                self._memo.move_to_end(path)
                continue
            try:
                fresh.append((path, self.load(path)))
            except AudioError as err:
                bad[path] = str(err)
        if fresh:
            features = self.features([clip for _, clip in fresh])
            for i, (path, _) in enumerate(fresh):  # each clip's real tokens (encoder masks are prefixes)
                self._memo[path] = {n: t[i][m[i]] for n, (t, m) in features.items()}
        while len(self._memo) > FEATURE_MEMO:
            self._memo.popitem(last=False)
        good = next((self._memo[p] for p in paths if p not in bad), None)
        if good is None:
            return None, bad
        # A file that cannot be read gets a row of no tokens, masked out by pad_rows like any padding.
        out = {name: pad_rows([self._memo[p][name] if p not in bad else tokens[:0] for p in paths])
               for name, tokens in good.items()}
        return out, bad

    # ----------------------------------------------------------------------------------------------------- asking
    @staticmethod
    def conversation(question: str | list[dict], with_audio: bool = True, clips: int = 1) -> list[dict]:
        """A question (or a conversation ending with the user's turn) with `<audio>` in front unless it has one
        (`clips` of them, one line each, for a question about several clips); `with_audio=False` removes the
        placeholder (the no-audio baseline)."""
        messages = [{"role": "user", "content": question}] if isinstance(question, str) else [dict(m) for m in question]
        if with_audio and not any(AUDIO_PLACEHOLDER in m["content"] for m in messages if m["role"] == "user"):
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[first]["content"] = f"{AUDIO_PLACEHOLDER}\n" * clips + messages[first]["content"]
        if not with_audio:
            for m in messages:
                m["content"] = m["content"].replace(f"{AUDIO_PLACEHOLDER}\n", "").replace(AUDIO_PLACEHOLDER, "").strip()
        return messages

    @torch.no_grad()
    def generate(self, conversations: list[list[dict]], audio: dict | None, decoding: Decoding | None = None,
                 cache=None, streamer=None) -> list[str]:
        """The model's answers to B conversations, with audio features for each row (or None)."""
        return self._generate(self.processor(conversations, audio), decoding or Decoding(), cache, streamer)

    @torch.no_grad()
    def _generate(self, inputs: dict, decoding: Decoding, cache=None, streamer=None) -> list[str]:
        """A batch ({input_ids, attention_mask, ...} [B, T], audio) → the answers after its prompts."""
        new = self.generate_ids(inputs, decoding, cache, streamer)
        return [decoding.cut(text).strip() for text in self.processor.decode(new, 0)]

    def generate_ids(self, inputs: dict, decoding: Decoding, cache=None, streamer=None, **extra) -> torch.Tensor:
        """A batch as the processor gives it ({input_ids, ...} [B, T], audio) → the generated token ids [B, N]."""
        inputs = to_device(inputs, self.device)
        torch.manual_seed(decoding.seed)
        if decoding.stop:
            stop = StopOnText(self.processor.tokenizer, decoding.stop, inputs["input_ids"].shape[1])
            extra["stopping_criteria"] = StoppingCriteriaList([*extra.get("stopping_criteria", []), stop])
        out = self.model.generate(**inputs, past_key_values=cache, pad_token_id=self.processor.pad_id,
                                  streamer=streamer, **decoding.kwargs(), **extra)
        return out[:, inputs["input_ids"].shape[1]:]

    @torch.no_grad()
    def chat(self, conversation: list[dict], features: dict | None, decoding: Decoding, cache=None, streamer=None,
             cancel=None) -> tuple[str, int, int]:
        """One conversation (with `<audio>` where each clip belongs, or none) and its clips' features [k, ...] →
        (the answer, prompt positions including audio placeholders, generated tokens). `cache`: a PALCache prepared
        for these features (`prepare_audio`), reused instead of computing the audio keys/values again; `cancel`: a
        threading.Event that stops the generation at its next token once set."""
        inputs = self.processor([conversation], features, clip_rows=clip_rows_for([features]))
        extra = {}
        if cancel is not None:
            class Cancelled(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

            extra["stopping_criteria"] = StoppingCriteriaList([Cancelled()])
        new = self.generate_ids(inputs, decoding, cache, streamer, **extra)[0]
        text, generated = self.read_answer(new.tolist(), decoding)
        return text, int(inputs["input_ids"].shape[1]), generated

    def read_answer(self, ids: list[int], decoding: Decoding) -> tuple[str, int]:
        """One row's generated ids → (its answer, the tokens generation runs for it alone: up to its end of text, or
        to the token that completes one of `decoding.stop`). Ids past that point (a longer row of the same batch)
        do not count."""
        decode = lambda part: self.processor.tokenizer.decode(part, skip_special_tokens=True)  # noqa: E731
        eos = {self.processor.tokenizer.eos_token_id, self.processor.pad_id}
        generated = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        if decoding.stop and any(s in decode(ids[:generated]) for s in decoding.stop):
            generated = next(j for j in range(1, generated + 1) if any(s in decode(ids[:j]) for s in decoding.stop))
        return decoding.cut(decode(ids[:generated])).strip(), generated

    def ask_batch(self, audios: list[Audio | list[Audio]], questions: list[str | list[dict]],
                  decoding: Decoding | None = None) -> list[str]:
        """One question per clip (or per list of clips: a question about several, one `<audio>` each in order),
        answered in one batch."""
        if len(audios) != len(questions):
            raise ValueError(f"{len(audios)} clips for {len(questions)} questions: give one question per clip.")
        clips = [list(a) if isinstance(a, (list, tuple)) else [a] for a in audios]
        if any(not c for c in clips):
            raise ValueError("a question with an empty list of clips: give at least one audio file per question.")
        audio = self.features([self.load(a) for c in clips for a in c])
        conversations = [self.conversation(q, clips=len(c)) for q, c in zip(questions, clips)]
        if all(len(c) == 1 for c in clips):
            return self.generate(conversations, audio, decoding)
        clip_rows = [row for row, c in enumerate(clips) for _ in c]
        inputs = self.processor(conversations, audio, clip_rows=clip_rows)
        return self._generate(inputs, decoding or Decoding())

    def ask(self, audio: Audio | list[Audio], question: str | list[dict], decoding: Decoding | None = None,
            streamer=None) -> str:
        """One question about a clip, or about several (a list: one `<audio>` per clip in the question, in order;
        put in front, one per line, where it has none)."""
        if isinstance(audio, (list, tuple)):
            if len(audio) != 1:
                clips = self.features([self.load(a) for a in audio])
                inputs = self.processor([self.conversation(question, clips=len(audio))], clips,
                                        clip_rows=[0] * len(audio))
                return self._generate(inputs, decoding or Decoding(), streamer=streamer)[0]
            audio = audio[0]
        audio = self.features([self.load(audio)])
        return self.generate([self.conversation(question)], audio, decoding, streamer=streamer)[0]

    def ask_many(self, audio: Audio, questions: list[str | list[dict]], decoding: Decoding | None = None) -> list[str]:
        """Several questions about one clip, the clip encoded once (see `generate_about_one_clip`)."""
        features = self.features([self.load(audio)])
        return self.generate_about_one_clip([self.conversation(q) for q in questions], features, decoding)

    def generate_about_clips(self, conversations: list[list[dict]], features: dict,
                             decoding: Decoding | None = None) -> list[str]:
        """The answers to B conversations about the same k clips (`features`: {name: (tokens [k, N_e, D_e], mask
        [k, N_e])}, one `<audio>` per clip in each conversation), in one batch."""
        clips, rows = next(iter(features.values()))[0].shape[0], len(conversations)
        audio = {n: (t.repeat(rows, 1, 1), m.repeat(rows, 1)) for n, (t, m) in features.items()}
        inputs = self.processor(conversations, audio, clip_rows=[r for r in range(rows) for _ in range(clips)])
        return self._generate(inputs, decoding or Decoding())

    def generate_about_one_clip(self, conversations: list[list[dict]], features: dict,
                                decoding: Decoding | None = None) -> list[str]:
        """The answers to B conversations about one clip (`features`: {name: (tokens [1, N_e, D_e], mask [1, N_e])}).
        The part of the prompt that every conversation shares (the chat template's opening, the audio placeholders
        with PLITS) runs through the LLM once; LAL's audio keys/values are computed once and read once per decoding
        step for all the questions (`prepare_audio`). The answers are those of `generate` with the clip per row."""
        decoding = decoding or Decoding()
        repeats = len(conversations)
        prefix, suffixes = self.shared_prefix(conversations, features)
        if decoding.num_beams > 1 or prefix is None:
            # Beam search grows the batch inside generate(); prepared rows would not follow, so it computes its own.
            cache = self.model.prepare_audio(features, repeats) if decoding.num_beams == 1 else None
            return self.generate(conversations, per_row(features, repeats), decoding, cache=cache)
        cache = self.prefix_cache(prefix, features, repeats)
        rest = self.processor.pad(suffixes)
        shared = prefix["input_ids"].shape[1]
        inputs = {"input_ids": torch.cat([prefix["input_ids"].expand(repeats, -1), rest["input_ids"]], dim=1),
                  "attention_mask": torch.cat([torch.ones(repeats, shared, dtype=rest["attention_mask"].dtype),
                                               rest["attention_mask"]], dim=1)}  # padding between the two parts
        return self._generate(inputs, decoding, cache)

    @torch.no_grad()
    def prefix_cache(self, prefix: dict, features: dict, repeats: int):
        """The shared prefix ([1, P], `_shared_prefix`) run once with its clip → its cache, the text positions copied
        for `repeats` rows; LAL's audio keys/values stay shared."""
        out = self.model(**to_device(prefix, self.device), audio=features, use_cache=True, logits_to_keep=1)
        out.past_key_values.batch_repeat_interleave(repeats)
        return out.past_key_values

    def shared_prefix(self, conversations: list[list[dict]], features: dict):
        """The token prefix that every conversation's prompt shares, as a batch of one ({input_ids, attention_mask,
        audio_token_mask} [1, P]), and each prompt's rest (ids, labels, flags); (None, None) when no prefix can be
        shared (a single question, or audio placeholders past the shared part)."""
        count = self.processor.audio_token_counts(features, 1)[0]
        rows = [self.processor.encode_example(c, count, i) for i, c in enumerate(conversations)]
        if len(rows) < 2:
            return None, None
        shared = min(len(ids) for ids, _, _ in rows) - 1  # every prompt keeps a token of its own to continue from
        first = rows[0][0]
        for ids, _, _ in rows[1:]:
            shared = next((i for i in range(shared) if ids[i] != first[i]), shared)
        # A row whose answer (a supervised label) starts right after the prefix would need the prefix's last logit:
        # the prefix ends one token earlier (rows that differ only in their answers still share their whole prompt).
        while shared > 0 and any(labels[shared] != IGNORE_INDEX for _, labels, _ in rows):
            shared -= 1
        if shared == 0 or any(any(flags[shared:]) for _, _, flags in rows):
            return None, None
        ids, _, flags = rows[0]
        prefix = {"input_ids": torch.tensor([ids[:shared]]), "attention_mask": torch.ones(1, shared, dtype=torch.long),
                  "audio_token_mask": torch.tensor([flags[:shared]])}
        return prefix, [(ids[shared:], labels[shared:], flags[shared:]) for ids, labels, flags in rows]


def per_row(features: dict, repeats: int) -> dict:
    """One clip's features {name: (tokens [1, N_e, D_e], mask [1, N_e])} → the same clip for `repeats` rows (views)."""
    return {n: (t.expand(repeats, -1, -1), m.expand(repeats, -1)) for n, (t, m) in features.items()}


__all__ = ["AudioLLM", "Decoding", "per_row"]
