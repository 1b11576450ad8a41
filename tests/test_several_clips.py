"""Several clips in one question (pal/clips.py): LAL against its formula with clip tags, PLITS in place, a batch of
mixed clip counts as each question alone, generation, and the errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import (
    VOCAB,
    curriculum_dict,
    random_audio,
    random_texts,
    slice_audio,
    tiny_pal,
    train_in_process,
    write_jsonl,
    write_yaml,
)
from test_lal_invariants import _reference_layer_attention

from pal.cli.main import main
from pal.clips import clip_index, join_clips, repeat_clips
from pal.plits import plits_token_counts


def clip_layout(model, pieces: list[list[list[int]]], audio, clip_rows: list[int]) -> dict:
    """Token rows as PALProcessor lays them out: question b's text pieces with its clips' placeholders between them
    (piece 0, clip 1, piece 1, clip 2, ...), left-padded. pieces[b] has one more piece than b has clips."""
    counts = (plits_token_counts(model.config, {n: m for n, (_, m) in audio.items()}).tolist()
              if model.config.has_plits_tokens() else [0] * len(clip_rows))
    rows, flags = [], []
    for b, parts in enumerate(pieces):
        mine = [counts[c] for c, r in enumerate(clip_rows) if r == b]
        assert len(parts) == len(mine) + 1
        ids, flag = list(parts[0]), [False] * len(parts[0])
        for n, part in zip(mine, parts[1:]):
            ids += [0] * n + part
            flag += [True] * n + [False] * len(part)
        rows.append(ids)
        flags.append(flag)
    width = max(len(r) for r in rows)
    return dict(input_ids=torch.tensor([[0] * (width - len(r)) + r for r in rows]),
                attention_mask=torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
                audio_token_mask=torch.tensor([[False] * (width - len(f)) + f for f in flags]))


def take(audio, rows: list[int]):
    """Audio rows `rows` (clips), padding cut to the longest of them."""
    out = {}
    for name, (tokens, mask) in audio.items():
        width = int(mask[rows].sum(-1).max())
        out[name] = (tokens[rows, :width], mask[rows, :width])
    return out


def test_clip_bookkeeping():
    rows = torch.tensor([0, 0, 1, 2, 2, 2])
    assert clip_index(rows).tolist() == [0, 1, 0, 0, 1, 2]
    take_rows, new_rows = repeat_clips(rows, 3, 2)
    assert take_rows.tolist() == [0, 1, 0, 1, 2, 2, 3, 4, 5, 3, 4, 5]
    assert new_rows.tolist() == [0, 0, 1, 1, 2, 3, 4, 4, 4, 5, 5, 5]
    tokens = torch.arange(3 * 4, dtype=torch.float).view(3, 4, 1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    (joined, joined_mask), = join_clips({"a": (tokens, mask)}, torch.tensor([0, 0, 1]), 2)[0].values()
    assert joined[0, :, 0].tolist() == [0, 1, 4, 5, 6] and joined_mask.sum(-1).tolist() == [5, 1]
    assert join_clips({"a": (tokens, mask)}, torch.tensor([0, 0, 1]), 2)[1]["a"][0].tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("connector", ["lal", "plits", "pal"])
def test_one_clip_per_question_named_in_clip_rows_is_the_model_without_them(connector):
    model, _ = tiny_pal(connector)
    audio = random_audio(model.config, [5, 3])
    inputs = clip_layout(model, [[[5, 6, 7], [8, 9]], [[5, 6], [9, 10, 11]]], audio, [0, 1])
    with torch.no_grad():
        assert torch.equal(model(**inputs, audio=audio).logits,
                           model(**inputs, audio=audio, clip_rows=torch.tensor([0, 1])).logits)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_lal_with_two_clips_matches_the_formula_with_the_second_clips_tag(family):
    """Question 0 holds two clips, question 1 one: each question's audio layer is docs/design.md#formula over its
    clips' A_l joined in order, the second clip's with its tag t_2 added, the first's with none."""
    model, _ = tiny_pal("lal", family)
    torch.nn.init.normal_(model.lal.clip_tags.weight, std=0.5)  # drawn small; make the tag count
    layer_idx = 2
    layer = model.llm.model.layers[layer_idx]
    audio = random_audio(model.config, [4, 6, 5])
    clip_rows = torch.tensor([0, 0, 1])
    ids = torch.tensor(random_texts([9, 9]))
    captured = {}

    def hook(module, args, kwargs, out):
        captured["x"], captured["out"] = kwargs["hidden_states"], out[0]

    handle = layer.self_attn.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=ids, audio=audio, clip_rows=clip_rows)
    handle.remove()
    tokens, mask = audio["sslam"]
    head = model.lal.projections["sslam"].heads[str(layer_idx)]
    with torch.no_grad():
        clips = [head(tokens[c, : int(mask[c].sum())]).double() for c in range(3)]
        tag = model.lal.clip_tags.weight[0].double()  # t_2
    expected = {0: torch.cat([clips[0], clips[1] + tag]), 1: clips[2]}
    for row, projected in expected.items():
        reference = _reference_layer_attention(layer, captured["x"][row].double(), projected, model.config.text_config,
                                               True, True)
        # reorder: our float32 layer against a float64 formula, as in test_lal_layer_attention_matches_formula
        torch.testing.assert_close(captured["out"][row].double(), reference, atol=2e-5, rtol=1e-4)


def test_plits_writes_each_clip_at_its_own_placeholder():
    """The bare LLM fed the same sequence with each clip's projected tokens written by hand at its placeholder."""
    model, bare = tiny_pal("plits")
    audio = random_audio(model.config, [4, 6])
    pieces = [[[5, 6, 7], [8, 9], [10, 11, 12]]]
    inputs = clip_layout(model, pieces, audio, [0, 0])
    with torch.no_grad():
        got = model(**inputs, audio=audio, clip_rows=torch.tensor([0, 0])).logits
        first, _ = model.plits(slice_audio(audio, 0))
        second, _ = model.plits(slice_audio(audio, 1))
        embeds = bare.get_input_embeddings()
        parts = [embeds(torch.tensor([p])) for p in pieces[0]]
        sequence = torch.cat([parts[0], first, parts[1], second, parts[2]], dim=1)
        expected = bare(inputs_embeds=sequence).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # reorder: the same float32 ops, batched apart


def test_clips_given_in_the_other_order_change_the_answer():
    """Order matters: a model that could not tell its clips apart would give the same logits with them swapped."""
    model, _ = tiny_pal("lal")
    audio = random_audio(model.config, [5, 5])
    swapped = {n: (t.flip(0), m.flip(0)) for n, (t, m) in audio.items()}
    ids = torch.tensor(random_texts([8]))
    with torch.no_grad():
        one = model(input_ids=ids, audio=audio, clip_rows=torch.tensor([0, 0])).logits
        other = model(input_ids=ids, audio=swapped, clip_rows=torch.tensor([0, 0])).logits
    assert (one - other).abs().max() > 1e-4


@pytest.mark.parametrize("connector", ["lal", "pal", "plits_qformer"])
def test_a_batch_of_mixed_clip_counts_answers_as_each_question_alone(connector):
    model, _ = tiny_pal(connector)
    counts = [2, 1, 3]
    clip_rows = [b for b, n in enumerate(counts) for _ in range(n)]
    audio = random_audio(model.config, [4, 6, 3, 5, 2, 7])
    gen = torch.Generator().manual_seed(3)
    pieces = [[torch.randint(3, VOCAB, (k + 2,), generator=gen).tolist() for k in range(n + 1)] for n in counts]
    batch = clip_layout(model, pieces, audio, clip_rows)
    with torch.no_grad():
        together = model(**batch, audio=audio, clip_rows=torch.tensor(clip_rows)).logits[:, -1]
        for b, n in enumerate(counts):
            mine = [c for c, r in enumerate(clip_rows) if r == b]
            alone_audio = take(audio, mine)
            alone = clip_layout(model, [pieces[b]], alone_audio, [0] * n)
            logits = model(**alone, audio=alone_audio, clip_rows=torch.zeros(n, dtype=torch.long)).logits[:, -1]
            # reorder: padding and batching change float32 summation order only
            torch.testing.assert_close(together[b : b + 1], logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("beams", [1, 2])
def test_generation_with_several_clips_per_question_equals_each_question_alone(beams):
    model, _ = tiny_pal("pal")
    clip_rows = [0, 0, 1]
    audio = random_audio(model.config, [4, 6, 5])
    pieces = [[[5, 6, 7], [8, 9], [10, 11]], [[5, 6, 7], [12, 13]]]
    batch = clip_layout(model, pieces, audio, clip_rows)
    options = dict(max_new_tokens=4, do_sample=False, num_beams=beams, pad_token_id=0)
    with torch.no_grad():
        together = model.generate(**batch, audio=audio, clip_rows=torch.tensor(clip_rows), **options)
        width = batch["input_ids"].shape[1]
        for b, mine in enumerate([[0, 1], [2]]):
            alone_audio = take(audio, mine)
            alone = clip_layout(model, [pieces[b]], alone_audio, [0] * len(mine))
            out = model.generate(**alone, audio=alone_audio, clip_rows=torch.zeros(len(mine), dtype=torch.long),
                                 **options)
            assert together[b, width:].tolist() == out[0, alone["input_ids"].shape[1]:].tolist()


def test_several_clips_errors_name_what_to_do():
    model, _ = tiny_pal("lal", lal_config=dict(start_layer=1, max_clips=2))
    audio = random_audio(model.config, [3, 3, 3])
    ids = torch.tensor(random_texts([6]))
    with pytest.raises(ValueError, match=r"3 clips.*at most 2 \(lal_config.max_clips\)"):
        model(input_ids=ids, audio=audio, clip_rows=torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="in order"):
        model(input_ids=torch.tensor(random_texts([6, 6])), audio=audio, clip_rows=torch.tensor([1, 0, 1]))
    xattn, _ = tiny_pal("xattn")
    with pytest.raises(ValueError, match="one clip per question"):
        xattn(input_ids=ids, audio=random_audio(xattn.config, [3, 3]), clip_rows=torch.tensor([0, 0]))
    plits, _ = tiny_pal("plits")
    audio = random_audio(plits.config, [3, 4])
    one_placeholder = clip_layout(plits, [[[5, 6], [7]]], take(audio, [0]), [0])
    with pytest.raises(ValueError, match="audio placeholder positions"):
        plits(**one_placeholder, audio=audio, clip_rows=torch.tensor([0, 0]))


def test_ask_about_several_clips_answers_as_the_model_does_with_their_placeholders(trained_tiny, curriculum_env,
                                                                                  capsys, tmp_path):
    """`AudioLLM.ask` with a list of clips: one `<audio>` per clip in front of the question, the clips' features in
    order; a batch of questions with mixed clip counts answers as each question alone; a question whose
    placeholders do not match its clips is an error that says so."""
    from pal.inference.audio_llm import AudioLLM, Decoding

    llm = AudioLLM.from_pretrained(trained_tiny)
    tones = [curriculum_env / f"tone{i}.wav" for i in range(3)]
    decoding = Decoding(max_new_tokens=6)
    asked = llm.ask(tones[:2], "Which clip is higher?", decoding)
    features = llm.features([llm.load(t) for t in tones[:2]])
    conversation = [{"role": "user", "content": "<audio>\n<audio>\nWhich clip is higher?"}]
    inputs = llm.processor([conversation], features, clip_rows=[0, 0])
    assert inputs["audio_token_mask"].sum() == sum(
        llm.processor.audio_token_counts(features, 1, [0, 0])[0])
    assert asked == llm._generate(inputs, decoding)[0]
    together = llm.ask_batch([tones[:2], tones[2], [tones[2], tones[0]]], ["Which?", "What?", "Which?"], decoding)
    assert together == [llm.ask(tones[:2], "Which?", decoding), llm.ask(tones[2], "What?", decoding),
                        llm.ask([tones[2], tones[0]], "Which?", decoding)]
    # `pal infer` with --audio repeated streams the same answer
    assert main(["infer", "--model", str(trained_tiny), "--audio", str(tones[0]), "--audio", str(tones[1]),
                 "--prompt", "Which clip is higher?", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == asked
    with pytest.raises(ValueError, match="1 `<audio>` placeholders for 2 clips"):
        llm.ask(tones[:2], "<audio> Which clip is higher?", decoding)
    # `pal infer --manifest`: lines with `audios` (placeholders put in front where the prompt has none) and one clip
    rows = [{"id": "pair", "audios": [str(t) for t in tones[:2]],
             "messages": [{"role": "user", "content": "Which clip is higher?"}]},
            {"id": "pair-again", "audios": [str(t) for t in tones[:2]],
             "messages": [{"role": "user", "content": "Which?"}]},
            {"id": "one", "audio": str(tones[2]), "messages": [{"role": "user", "content": "What?"}]}]
    manifest, out = write_jsonl(tmp_path / "q.jsonl", rows), tmp_path / "answers.jsonl"
    assert main(["infer", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
                 "--max-new-tokens", "6"]) == 0
    answers = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert answers["pair"]["answer"] == asked and answers["pair"]["audios"] == rows[0]["audios"]
    assert answers["pair-again"]["answer"] == together[0] and answers["one"]["answer"] == together[1]


def _pair_rows(env) -> list[dict]:
    """Questions about two tones (LLaMA-Factory's `audios` key), mixed with one-clip and text-only rows."""
    pairs = [{"id": f"pair{i}", "task": "qa", "audios": [str(env / f"tone{i}.wav"), str(env / f"tone{i + 1}.wav")],
              "messages": [{"role": "user", "content": "The first: <audio>\nThe second: <audio>\nWhich is higher?"},
                           {"role": "assistant", "content": "the second"}]} for i in range(3)]
    single = [json.loads(line) for line in (env / "train.jsonl").read_text().splitlines()]
    single = [dict(r, audio=str(env / r["audio"])) if "audio" in r else r for r in single]
    return [pairs[0], single[0], pairs[1], single[-1], pairs[2], single[1]]


def test_a_manifests_questions_about_two_clips_batch_for_training_as_for_inference(trained_tiny, curriculum_env,
                                                                                   tmp_path):
    """`audios` lines read back with every clip; the batch training collates from them (worker `prepare`, then
    `collate`) is the one inference builds from the same conversations and clips; its loss is each row's alone."""
    from pal.data.manifest import validate_manifest
    from pal.inference.audio_llm import AudioLLM
    from pal.processing_pal import to_device

    manifest = write_jsonl(tmp_path / "pairs.jsonl", _pair_rows(curriculum_env))
    examples = validate_manifest(manifest)
    assert [len(e.audios) for e in examples] == [2, 1, 2, 0, 2, 1]
    assert examples[0].audios == (str(curriculum_env / "tone0.wav"), str(curriculum_env / "tone1.wav"))
    llm = AudioLLM.from_pretrained(trained_tiny)
    training = llm.processor.with_settings(padding_side="right")
    batch, bad = training.collate(training.prepare(examples))
    assert not bad and batch["examples"] == 6
    assert batch["clip_rows"].tolist() == [0, 0, 1, 2, 2, 3, 4, 4, 5]
    features = llm.features([llm.load(a) for e in examples for a in e.audios])
    # the text-only row (the fourth question) has no clip: it gets one all-masked row, after the first five clips
    text_only = {n: (t[:1] * 0, m[:1] & False) for n, (t, m) in features.items()}
    stacked = {n: (torch.cat([t[:5], text_only[n][0], t[5:]]), torch.cat([m[:5], text_only[n][1], m[5:]]))
               for n, (t, m) in features.items()}
    asked = training([e.messages for e in examples], stacked, clip_rows=[0, 0, 1, 2, 2, 3, 4, 4, 5])
    for key in ("input_ids", "attention_mask", "audio_token_mask", "labels", "clip_rows"):
        assert torch.equal(batch[key], asked[key]), key
    for name, (tokens, mask) in stacked.items():
        assert torch.equal(batch["audio"][name][1], mask) and torch.equal(batch["audio"][name][0], tokens)
    with torch.no_grad():
        together = llm.model(**to_device(batch, llm.device)).loss
        alone = []
        for example in examples:
            one, _ = training.collate(training.prepare([example]))
            alone.append((float(llm.model(**to_device(one, llm.device)).loss), int((one["labels"] != -100).sum())))
    # the batch's mean over its answer tokens is the rows' losses weighted by their answer tokens
    weights = [n for _, n in alone]
    assert math.isclose(float(together), sum(l * w for (l, _), w in zip(alone, weights)) / sum(weights), rel_tol=1e-4)


def test_a_manifest_line_whose_placeholders_do_not_match_its_clips_is_named(curriculum_env, tmp_path):
    from pal.data.manifest import ManifestError, validate_manifest

    rows = _pair_rows(curriculum_env)[:1]
    wrong = dict(rows[0], messages=[{"role": "user", "content": "<audio>\nWhich is higher?"},
                                    {"role": "assistant", "content": "the second"}])
    both = dict(rows[0], id="both", audio=rows[0]["audios"][0])
    bad_path = dict(rows[0], id="bad", audios=[rows[0]["audios"][0], 7])
    manifest = write_jsonl(tmp_path / "bad.jsonl", [wrong, both, bad_path])
    with pytest.raises(ManifestError) as err:
        validate_manifest(manifest)
    said = str(err.value)
    assert f"{manifest}:1: the prompt holds 1 `<audio>` placeholder(s) for 2 clip(s)" in said
    assert f"{manifest}:2: the line has both \"audio\" and \"audios\"" in said
    assert f"{manifest}:3: \"audios\" holds 7" in said


def test_the_curriculum_trains_on_questions_about_two_clips(curriculum_env, tmp_path):
    """A stage whose manifest mixes questions about two clips with one-clip and text-only rows trains, validates
    and generates its samples (the tiny PAL: LAL with tags, summary tokens via PLITS, LoRA)."""
    manifest = write_jsonl(tmp_path / "pairs.jsonl", _pair_rows(curriculum_env))
    config = curriculum_dict(curriculum_env, stages=1, steps=4, checkpoint_every=4, eval_every=4, num_samples=2)
    config["stages"][0]["data"] = [{"manifest": str(manifest)}]
    config["stages"][0]["val_manifest"] = str(manifest)
    stages = train_in_process(write_yaml(tmp_path / "c.yaml", config), tmp_path / "run")
    assert stages[0]["steps"] == 4 and stages[0]["bad_samples"] == 0 and math.isfinite(stages[0]["loss"])
    samples = (tmp_path / "run" / "stage1-connector" / "samples.jsonl").read_text().splitlines()
    assert {json.loads(s)["id"] for s in samples} <= {f"pair{i}" for i in range(3)} | {"t0", "t1", "text"}
