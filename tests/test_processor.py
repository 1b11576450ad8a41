"""PALProcessor: `<audio>` expansion, padding, labels and its errors, with a tiny word-level tokenizer."""

from __future__ import annotations

import pytest
import torch
from conftest import random_audio, tiny_pal
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pal import PALProcessor

WORDS = ["<pad>", "<eos>", "<bos>", "user:", "assistant:", "what", "is", "this", "sound", "a", "dog", "bark", "<unk>"]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture
def tokenizer():
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    fast.chat_template = TEMPLATE
    return fast


def test_audio_placeholder_expands_to_plits_token_count(tokenizer):
    model, _ = tiny_pal("pal")  # whisper → PLITS MLP with downsample 2; sslam → LAL
    audio = random_audio(model.config, [5, 2])  # whisper gets 7 and 4 real tokens → 4 and 2 PLITS tokens
    batch = PALProcessor(tokenizer, model.config)(["<audio> what is this sound", "what is <audio> this"], audio)
    assert batch["audio_token_mask"].sum(-1).tolist() == [4, 2]
    assert batch["attention_mask"][1].tolist()[:2] == [0, 0]  # left padding for generation
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_answers_become_labels_and_prompt_is_masked(tokenizer):
    model, _ = tiny_pal("plits")
    audio = random_audio(model.config, [3])
    proc = PALProcessor(tokenizer, model.config, padding_side="right")
    batch = proc(["<audio> what is this sound"], audio, answers=["a dog bark"])
    labels = batch["labels"][0]
    kept = labels[labels != -100].tolist()
    assert tokenizer.decode(kept) == "a dog bark <eos>"
    assert (labels[batch["audio_token_mask"][0]] == -100).all()
    loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_lal_only_model_drops_the_placeholder(tokenizer):
    model, _ = tiny_pal("lal")
    audio = random_audio(model.config, [4])
    with_tag = PALProcessor(tokenizer, model.config)(["<audio> what is this"], audio)
    without = PALProcessor(tokenizer, model.config)(["what is this"], audio)
    assert with_tag["input_ids"].tolist() == without["input_ids"].tolist()
    assert not with_tag["audio_token_mask"].any()


def test_missing_placeholder_is_an_error(tokenizer):
    model, _ = tiny_pal("plits")
    with pytest.raises(ValueError, match=r"prompt 1 has no `<audio>` placeholder.*\['sslam'\]"):
        PALProcessor(tokenizer, model.config)(["<audio> what", "what is this"], random_audio(model.config, [3, 3]))


def test_two_placeholders_is_an_error(tokenizer):
    model, _ = tiny_pal("plits")
    with pytest.raises(ValueError, match="2 `<audio>` placeholders"):
        PALProcessor(tokenizer, model.config)(["<audio> what <audio>"], random_audio(model.config, [3]))
