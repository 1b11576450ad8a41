"""PALForConditionalGeneration: a Hugging Face causal LM that listens to frozen audio encoders.

Audio arrives as encoder outputs, `{encoder name: (tokens [B, N_e, D_e], mask [B, N_e])}` (the ensemble's output
type), and enters the LLM by the route the config gives each encoder:
  - PLITS (`plits.py`): projected tokens replace the prompt's `<audio>` placeholder positions;
  - LAL (`lal_injection.py`): per-layer projections become extra keys/values of the LLM's own self-attention;
  - PAL: some encoders one way, some the other, plus optional summary tokens via PLITS.
The wrapped LLM (`self.llm`) is unmodified: its checkpoint keys, weights and code path are the bare model's.

Notation: B batch, T text length (with PLITS placeholders), N_e encoder tokens, D_e encoder width, V vocabulary.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from pal.encoders.outputs import EncoderOutputs

from .audio_cache import PALCache
from .audio_norm import AudioFeatureNorm
from .clips import check_clip_rows, join_clips, repeat_clips
from .configuration_pal import PALConfig
from .cross_attention import CrossAttentionConnector
from .lal_injection import LALConnector, enable_lal_attention
from .llm import check_supported_llm, load_llm
from .masks import additive_mask
from .plits import PLITSConnector, splice_audio_tokens
from .trainable import attach_lora

AudioFeatures = EncoderOutputs  # {name: (tokens [B, N_e, D_e], mask [B, N_e])}


def is_partitioned(model: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 holds the parameters (each rank a slice), as after building under `zero.Init`."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def cast_unpartitioned(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters ZeRO-3 does not hold (built whole: fresh connectors, adapters) to `dtype`. DeepSpeed casts
    nothing of a model that holds ZeRO-3 parameters, and its slices are already in their own dtype."""
    for param in model.parameters():
        if not hasattr(param, "ds_id"):
            param.data = param.data.to(dtype)


def _gathered_for_init(model: nn.Module):
    """Under DeepSpeed ZeRO-3 (`zero.Init`) modules are partitioned as soon as they are built, so the parameters
    initialised here (those not loaded from a checkpoint) and the input embeddings (the PLITS gain is read from them)
    are gathered whole for a moment; rank 0's values are kept. Elsewhere a no-op."""
    if not is_partitioned(model):
        return contextlib.nullcontext()
    import deepspeed

    fresh = [p for p in model.parameters() if not getattr(p, "_is_hf_initialized", False)]
    return deepspeed.zero.GatheredParameters(fresh + [model.llm.get_input_embeddings().weight], modifier_rank=0)


def supervised_lm_loss(lm_head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                       num_items_in_batch: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy with LM-head logits computed only where a label is supervised.

    hidden [B, T, d], labels [B, T] (-100 = no loss) → (loss, logits [N, V]), N = supervised positions after the
    shift, in row-major order. The loss is Hugging Face's causal-LM loss (the label of position t + 1 scored from
    position t, mean over supervised tokens, or sum / `num_items_in_batch`), but a [B, T, V] logit tensor is never
    built: PLITS' audio placeholders and every prompt position pay nothing for the vocabulary. The same code serves
    every connector, so the comparison between them stays fair.
    """
    targets = nn.functional.pad(labels[:, 1:], (0, 1), value=-100).to(hidden.device)  # [B, T], the shifted labels
    supervised = targets != -100
    logits = lm_head(hidden[supervised])  # [N, V]; called even when N = 0, so every ZeRO-3 rank runs the head
    if not bool(supervised.any()):  # a batch without answer tokens: a zero loss, still connected to the graph
        return hidden.sum() * 0.0 + logits.sum() * 0.0, logits
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = nn.functional.cross_entropy(logits.float(), targets[supervised], reduction=reduction)
    if num_items_in_batch is not None:
        loss = loss / num_items_in_batch
    return loss, logits


class PALPreTrainedModel(PreTrainedModel):
    config_class = PALConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _skip_keys_device_placement = ["past_key_values"]


class PALForConditionalGeneration(PALPreTrainedModel, GenerationMixin):
    """The audio LLM: `self.llm` (any supported HF causal LM) plus `self.plits` and/or `self.lal` connectors.

    An `llm` passed in is taken over, not copied (a copy would hold a large LLM twice), as PEFT's `get_peft_model`
    takes over its model: it becomes `self.llm`, its attention implementation becomes LAL's (`enable_lal_attention`,
    which without audio computes what the one it replaces computes), LoRA adapters are attached to it when
    `config.lora` asks, and cross-attention layers are hooked into it when a route needs them. Pass
    `copy.deepcopy(llm)` to keep a bare one."""

    def __init__(self, config: PALConfig, llm: nn.Module | None = None):
        super().__init__(config)
        self.llm = llm if llm is not None else AutoModelForCausalLM.from_config(config.text_config)
        check_supported_llm(self.llm)
        enable_lal_attention(self.llm)
        if config.lora:
            attach_lora(self.llm, config.lora)
        self.audio_norm = (AudioFeatureNorm(config.encoder_dims, config.audio_norm_positions, config.audio_norm_periods)
                           if config.audio_norm == "standardize" else None)
        # The connectors, each built from its sub-config for the encoders on its route, and present only when some
        # encoder takes that route.
        text, on = config.text_config, lambda route: config.dims_of(config.encoders_on(route))
        self.plits = (PLITSConnector(config.plits_config, text.hidden_size, on("plits"),
                                     config.dims_of(config.summary_encoders())) if config.has_plits_tokens() else None)
        self.lal = LALConnector(config.lal_config, text, on("lal")) if config.lal_layer_indices() else None
        self.xattn = (CrossAttentionConnector(config.xattn_config, text, on("xattn"))
                      if config.xattn_layer_indices() else None)
        if self.xattn is not None:
            self.xattn.install(self.llm)
        with _gathered_for_init(self):
            self.post_init()
            if self.plits is not None:  # after post_init, which would re-initialise it; from_pretrained loads the gain
                self.plits.match_embedding_scale(self.llm.get_input_embeddings().weight)

    @classmethod
    def from_llm(cls, llm_path=None, *, dtype: torch.dtype = torch.float32, seed: int | None = None,
                 **connector) -> PALForConditionalGeneration:
        """Wrap the LLM in a local folder (None or "default": the embedded SmolLM2) with fresh connectors.

        `connector` holds PALConfig fields, e.g. `encoder_dims={"sslam": 768}, connector="lal",
        lal_config={"start_layer": 4}`.
        `seed`: seeds the connectors' initialisation after the LLM is loaded, so it does not depend on how many random
        numbers the loading drew (a ZeRO-3 load draws none).
        """
        llm = load_llm(llm_path, dtype=dtype)
        if seed is not None:
            torch.manual_seed(seed)
        config = PALConfig(text_config=llm.config.to_dict(), **connector)
        model = cls(config, llm=llm)
        if not is_partitioned(model):
            return model.to(dtype)
        cast_unpartitioned(model, dtype)
        return model

    # Generation and resizing go through the LLM's own embeddings.
    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    def side_connectors(self) -> list[nn.Module]:
        """The connectors whose audio keys/values the LLM's layers receive beside the text (LAL, cross-attention),
        computed once per forward or at prefill: each has `cache_key`, `shares_rows` and is called
        `connector(audio, llm) → AudioKV`."""
        return [c for c in (self.lal, self.xattn) if c is not None]

    def check_audio(self, audio: AudioFeatures, batch_size: int) -> AudioFeatures:
        """Validate names, widths and the number of audio rows (`batch_size`: one per text row, or one per clip with
        several clips per question, pal/clips.py); zero padded tokens so they cannot leak (e.g. NaN) into outputs.

        A row whose masks are all False is a text-only example: it sees no audio on any route."""
        expected = self.config.encoder_dims
        if set(audio) != set(expected):
            raise ValueError(
                f"audio features name encoders {sorted(audio)}, but this model was built for {sorted(expected)}: "
                "pass exactly one (tokens, mask) pair per configured encoder."
            )
        checked = {}
        for name, pair in audio.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"audio[{name!r}] must be a (tokens [B, N, D], mask [B, N]) pair.")
            tokens, mask = pair
            if tokens.dim() != 3 or tokens.shape[-1] != expected[name]:
                raise ValueError(
                    f"audio[{name!r}] tokens have shape {tuple(tokens.shape)}; expected [B, N, {expected[name]}] "
                    f"(the encoder width in config.encoder_dims)."
                )
            if tokens.shape[0] != batch_size or tuple(mask.shape) != tuple(tokens.shape[:2]):
                raise ValueError(
                    f"audio[{name!r}] has batch {tokens.shape[0]} and mask {tuple(mask.shape)}, but {batch_size} audio "
                    "rows are expected: give one audio row per text row (or per entry of `clip_rows`) and a [B, N] "
                    "mask."
                )
            mask = mask.to(device=tokens.device, dtype=torch.bool)  # an all-False row is a text-only example
            checked[name] = (tokens.masked_fill(~mask.unsqueeze(-1), 0).to(self.dtype), mask)
        return checked

    def audio_inputs(self, audio: AudioFeatures, batch_size: int) -> AudioFeatures:
        """Checked features, standardised when `config.audio_norm` says so: what every connector reads."""
        audio = self.check_audio(audio, batch_size)
        return self.audio_norm(audio) if self.audio_norm is not None else audio

    def fit_audio_norm(self, batches: list[AudioFeatures], periods: dict[str, int] | None = None) -> None:
        """Fit the feature standardisation on training features (a list of {name: (tokens, mask)}) and record the
        fitted shapes in the config, so that `from_pretrained` builds matching buffers. `periods`: each encoder's
        tokens per window (`AudioEncoderEnsemble.window_tokens`)."""
        if self.audio_norm is None:
            raise ValueError("this model has audio_norm = 'none': nothing to fit.")
        self.config.audio_norm_positions = self.audio_norm.fit(batches, periods)
        self.config.audio_norm_periods = dict(self.audio_norm.periods) or None

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio: AudioFeatures | None = None,
        audio_token_mask: torch.Tensor | None = None,
        clip_rows: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """
        Args:
            input_ids: [B, T], with PLITS placeholder positions already expanded by `PALProcessor`.
            attention_mask: [B, T_past + T], 1 for real tokens (left or right padding); or a custom [B, 1, T, T] bool
                mask (True: may attend) with `position_ids`, as packed questions have (pal/packing.py).
            audio: {encoder name: (tokens [B, N_e, D_e], mask [B, N_e])}; only needed on the first (prefill) call.
            audio_token_mask: [B, T], True at PLITS placeholder positions.
            clip_rows: [C], the text row of each audio row when questions hold several clips (pal/clips.py); None:
                audio row b belongs to text row b.
            labels: [B, T], -100 where no loss is taken (prompt, audio placeholders, padding).
        Returns:
            CausalLMOutputWithPast with logits [B, T, V] (or the last `logits_to_keep`) and a `PALCache`; with
            `labels`, the loss and logits [N, V] at the N supervised positions only (`supervised_lm_loss`).
        """
        if inputs_embeds is None:
            inputs_embeds = self.llm.get_input_embeddings()(input_ids)
        batch = inputs_embeds.shape[0]
        if audio is not None:
            clip_rows = check_clip_rows(clip_rows, batch if clip_rows is None else len(clip_rows), batch)
            audio = self.audio_inputs(audio, len(clip_rows))
        inputs_embeds = self._splice_plits(inputs_embeds, audio, audio_token_mask, clip_rows)
        if use_cache is None:
            use_cache = self.config.text_config.use_cache
        if use_cache and past_key_values is None:
            past_key_values = PALCache(config=self.llm.config)
        side = self._side_audio(None if audio is None else join_clips(audio, clip_rows, batch), past_key_values,
                                use_cache)
        attention_mask, position_ids = self._text_mask(attention_mask, position_ids, inputs_embeds, kwargs)

        text_inputs = dict(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                           past_key_values=past_key_values, use_cache=use_cache, **side)
        if labels is None:
            return self.llm(**text_inputs, logits_to_keep=logits_to_keep, **kwargs)
        # Training: the LM head runs at supervised positions only (see `supervised_lm_loss`).
        num_items = kwargs.pop("num_items_in_batch", None)
        outputs = self.llm.model(**text_inputs, **kwargs)
        loss, logits = supervised_lm_loss(self.llm.get_output_embeddings(), outputs.last_hidden_state, labels,
                                          num_items)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def _splice_plits(self, inputs_embeds: torch.Tensor, audio: AudioFeatures | None,
                      audio_token_mask: torch.Tensor | None, clip_rows: torch.Tensor | None) -> torch.Tensor:
        """PLITS: projected tokens go where the prompt holds placeholders, each clip's at its own placeholder (the
        clips of a row in placeholder order). inputs_embeds [B, T, d] → [B, T, d]."""
        has_placeholders = audio_token_mask is not None and bool(audio_token_mask.any())
        if self.plits is None or audio is None:
            if has_placeholders:
                raise ValueError(
                    "the inputs hold audio placeholder positions but no PLITS audio was given"
                    + (": pass `audio`." if self.plits is not None else ": this model routes no encoder through PLITS.")
                )
            return inputs_embeds
        # Runs even when every row is text-only (all masks False): under ZeRO-3 every rank must call the same modules
        # in the same order, whatever its batch holds.
        tokens, mask = self.plits(audio)
        if bool(mask.any()) and not has_placeholders:
            raise ValueError(
                "PLITS audio was given but the prompt has no `<audio>` placeholder: put `<audio>` where the audio "
                "belongs and build the inputs with PALProcessor."
            )
        flags = (audio_token_mask.bool() if audio_token_mask is not None
                 else torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device))
        return splice_audio_tokens(inputs_embeds, flags, tokens, mask, clip_rows)

    def _side_audio(self, joined: tuple[AudioFeatures, dict] | None, past_key_values, use_cache: bool) -> dict:
        """LAL and cross-attention: each side connector's audio keys/values, {cache_key: AudioKV}, computed once and
        kept in the cache while generating (read back from it on a decoding step). `joined`: `join_clips`'s output,
        each text row's clips joined, and each token's clip index."""
        side = {c.cache_key: getattr(past_key_values, c.cache_key, None) for c in self.side_connectors()}
        audio, clips = joined if joined is not None else (None, None)
        if audio is not None and any(kv is not None for kv in side.values()):
            self._check_prepared(past_key_values, audio)
        elif audio is not None:
            if use_cache and self.side_connectors() and not isinstance(past_key_values, PALCache):
                raise ValueError(
                    f"audio keys/values need a PALCache to be reused while decoding, got "
                    f"{type(past_key_values).__name__}: pass `past_key_values=PALCache(config=model.llm.config)` or "
                    "let the model create it."
                )
            for connector in self.side_connectors():
                side[connector.cache_key] = connector(audio, self.llm, clips)
                if use_cache:
                    setattr(past_key_values, connector.cache_key, side[connector.cache_key])
        return {key: kv for key, kv in side.items() if kv is not None}

    def _text_mask(self, attention_mask, position_ids, inputs_embeds: torch.Tensor, kwargs: dict):
        """The text's attention mask and positions as the LLM takes them: a custom [B, 1, T, T] mask (packed
        questions, pal/packing.py) is flagged for LAL (FlashAttention's varlen path cannot express it) and made
        additive for eager attention, which adds its mask; positions are padding-aware (left padding puts each
        example's first real token at 0), as generate() makes them."""
        if attention_mask is not None and attention_mask.dim() == 4:
            kwargs["lal_custom_mask"] = True
            if attention_mask.dtype == torch.bool and "eager" in str(self.llm.config._attn_implementation):
                attention_mask = additive_mask(attention_mask, inputs_embeds.dtype)
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1] :]
        return attention_mask, position_ids

    @torch.no_grad()
    def prepare_audio(self, audio: AudioFeatures, repeats: int = 1, clip_rows: torch.Tensor | None = None) -> PALCache:
        """A fresh PALCache holding the LAL and cross-attention keys/values of `audio` ([B] clips, or the clips of B
        questions as `clip_rows` says), computed once and repeated for `repeats` prompts per question (rows
        b·repeats .. b·repeats + repeats - 1 belong to question b).

        Pass it as `past_key_values` together with the same audio repeated the same way (PLITS still needs it;
        `clips.repeat_clips` repeats several clips per question): several prompts about one clip then cost one P_l
        and one k/v projection per audio layer, not one per prompt.
        """
        rows = next(iter(audio.values()))[0].shape[0]
        batch = rows if clip_rows is None else int(torch.as_tensor(clip_rows).max()) + 1
        clip_rows = check_clip_rows(clip_rows, rows, batch)
        cache = PALCache(config=self.llm.config)
        checked, clips = join_clips(self.audio_inputs(audio, rows), clip_rows, batch)
        for connector in self.side_connectors():
            kv = connector(checked, self.llm, clips)
            # LAL's keys are stored once per clip and read once per decoding step for all its prompts
            setattr(cache, connector.cache_key, kv.shared_repeat(repeats) if connector.shares_rows
                    else kv.repeat_interleave(repeats))
        if self.side_connectors():
            cache.audio_source = (checked, repeats)
        return cache

    def _check_prepared(self, cache, checked: AudioFeatures) -> None:
        """Audio given with a cache that already holds audio keys/values: fine for a fresh cache from `prepare_audio`
        with the same audio; an error otherwise (the new audio would be silently ignored). `checked`: the given audio
        as `audio_inputs` returns it, standardised once like the prepared audio it is compared with."""
        source = getattr(cache, "audio_source", None)
        if cache.get_seq_length() > 0 or source is None:
            raise ValueError(
                "past_key_values already holds LAL audio keys/values from an earlier call, so the new `audio` would be "
                "ignored: pass a fresh PALCache (or none) with new audio, or leave `audio` out to keep the cached one."
            )
        prepared, repeats = source
        for name, (tokens, mask) in prepared.items():
            given_tokens, given_mask = checked[name]
            same = (given_tokens.shape[0] == tokens.shape[0] * repeats and given_tokens.shape[1:] == tokens.shape[1:]
                    and torch.equal(given_tokens, tokens.repeat_interleave(repeats, dim=0))
                    and torch.equal(given_mask, mask.repeat_interleave(repeats, dim=0)))
            if not same:
                raise ValueError(
                    f"this PALCache was prepared for other audio than the `audio` given (encoder {name!r}): prepare it "
                    "from the same features, repeated as the prompts are."
                )

    # ------------------------------------------------------------------------------------------------------------------
    # Generation: audio is consumed at prefill; LAL keys/values then live in the PALCache.
    # ------------------------------------------------------------------------------------------------------------------

    def generate(self, input_ids=None, audio: AudioFeatures | None = None, audio_token_mask=None, clip_rows=None,
                 **kwargs):
        """`GenerationMixin.generate` with audio features (greedy, sampling and beam search all work); `clip_rows`
        as `forward` takes it, for questions with several clips."""
        if kwargs.get("past_key_values") is None and kwargs.get("use_cache", True):
            kwargs["past_key_values"] = PALCache(config=self.llm.config)
        if clip_rows is not None:  # a list: generate() repeats the tensors it is given per text row, not per clip
            kwargs["clip_rows"] = torch.as_tensor(clip_rows).tolist()
        return super().generate(input_ids=input_ids, audio=audio, audio_token_mask=audio_token_mask, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, is_first_iteration=False, **kwargs):
        inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, is_first_iteration=is_first_iteration, **kwargs
        )
        if not is_first_iteration and inputs.get("past_key_values") is not None:
            # After prefill the audio lives in the cache (LAL) or in the cached sequence (PLITS).
            for name in ("audio", "audio_token_mask", "clip_rows"):
                inputs.pop(name, None)
        elif inputs.get("audio_token_mask") is not None and inputs.get("input_ids") is not None:
            # Without a cache every step re-reads the whole sequence; generated tokens are never audio.
            flags = inputs["audio_token_mask"]
            grown = inputs["input_ids"].shape[1] - flags.shape[1]
            inputs["audio_token_mask"] = nn.functional.pad(flags, (0, grown), value=False) if grown > 0 else flags
        return inputs

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        audio, clip_rows = model_kwargs.pop("audio", None), model_kwargs.pop("clip_rows", None)
        batch = input_ids.shape[0] if input_ids is not None else None
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if clip_rows is not None and expand_size > 1:  # each question's clips repeated with it, in order
            take, rows = repeat_clips(torch.as_tensor(clip_rows), batch, expand_size)
            audio = {name: (t[take.to(t.device)], m[take.to(m.device)]) for name, (t, m) in audio.items()}
            clip_rows = rows.tolist()
        elif audio is not None:
            audio = {
                name: (t.repeat_interleave(expand_size, dim=0), m.repeat_interleave(expand_size, dim=0))
                for name, (t, m) in audio.items()
            }
        model_kwargs["audio"] = audio
        if clip_rows is not None:
            model_kwargs["clip_rows"] = clip_rows
        return input_ids, model_kwargs


# A saved folder loads through the Auto classes too (the config's type is registered in configuration_pal.py).
AutoModel.register(PALConfig, PALForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(PALConfig, PALForConditionalGeneration, exist_ok=True)

__all__ = ["PALForConditionalGeneration", "PALPreTrainedModel", "AudioFeatures"]
