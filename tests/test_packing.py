"""Question packing (pal/packing.py): one clip's questions in one sequence give the loss and gradients of the separate
examples, and the curriculum's data path groups, packs and counts them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import random_audio, tiny_pal

from pal.curriculum.stage_data import StageData
from pal.data.manifest import examples_dataset, validate_manifest
from pal.packing import pack_rows, pad_packed, shared_prefix_length
from pal.processing_pal import IGNORE_INDEX


def _clip_rows(model, clip_tokens: int, questions: int, seed: int):
    """Rows about one clip as PALProcessor lays them out: [3 prompt tokens][PLITS placeholders][2 shared tokens]
    [question tokens][answer tokens, supervised]."""
    from pal.plits import plits_token_counts

    gen = torch.Generator().manual_seed(seed)
    audio = random_audio(model.config, [clip_tokens], seed=seed)
    n = int(plits_token_counts(model.config, {k: m for k, (_, m) in audio.items()})[0]) \
        if model.config.has_plits_tokens() else 0
    head = torch.randint(3, 60, (5,), generator=gen).tolist()
    rows = []
    for q in range(questions):
        question = torch.randint(3, 60, (2 + q,), generator=gen).tolist()
        answer = torch.randint(3, 60, (3 + (q % 2),), generator=gen).tolist()
        ids = head[:3] + [0] * n + head[3:] + question + answer
        labels = [IGNORE_INDEX] * (len(ids) - len(answer)) + answer
        flags = [False] * 3 + [True] * n + [False] * (len(ids) - 3 - n)
        rows.append((ids, labels, flags))
    return rows, audio


def _separate_batch(rows_by_clip, audio_by_clip):
    rows = [row for rows in rows_by_clip for row in rows]
    width = max(len(ids) for ids, _, _ in rows)
    pad = lambda v, f: v + [f] * (width - len(v))  # noqa: E731
    batch = {"input_ids": torch.tensor([pad(r[0], 0) for r in rows]),
             "labels": torch.tensor([pad(r[1], IGNORE_INDEX) for r in rows]),
             "audio_token_mask": torch.tensor([pad(r[2], False) for r in rows]),
             "attention_mask": torch.tensor([pad([1] * len(r[0]), 0) for r in rows])}
    owner = [c for c, rows in enumerate(rows_by_clip) for _ in rows]
    return batch, _stack_audio(audio_by_clip, owner)


def _stack_audio(audio_by_clip, owner: list[int]):
    out = {}
    for name in audio_by_clip[0]:
        width = max(a[name][0].shape[1] for a in audio_by_clip)
        tokens = [torch.nn.functional.pad(a[name][0], (0, 0, 0, width - a[name][0].shape[1])) for a in audio_by_clip]
        masks = [torch.nn.functional.pad(a[name][1], (0, width - a[name][1].shape[1])) for a in audio_by_clip]
        out[name] = (torch.cat([tokens[c] for c in owner]), torch.cat([masks[c] for c in owner]))
    return out


@pytest.mark.parametrize("connector", ["plits", "lal", "pal", "xattn"])
def test_packed_questions_give_the_separate_examples_loss_and_gradients(connector):
    model, _ = tiny_pal(connector)
    clips = [_clip_rows(model, 6, 3, seed=1), _clip_rows(model, 4, 2, seed=2)]
    rows_by_clip, audio_by_clip = [c[0] for c in clips], [c[1] for c in clips]

    separate, audio = _separate_batch(rows_by_clip, audio_by_clip)
    reference = model(**separate, audio=audio).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    packed = [row for rows in rows_by_clip for row in pack_rows(rows)]
    assert len(packed) == 2  # one sequence per clip
    batch = pad_packed(packed, pad_id=0)
    written = sum(len(row[0]) for row, _, _ in packed)
    # The prefix (5 tokens and the clip's placeholders) is written once per clip, not once per question.
    prefixes = [5 + sum(rows[0][2]) for rows in rows_by_clip]
    assert written == sum(len(ids) for rows in rows_by_clip for ids, _, _ in rows) - 2 * prefixes[0] - prefixes[1]
    loss = model(**batch, audio=_stack_audio(audio_by_clip, [0, 1])).loss
    # reorder: the same ~20 O(1) cross-entropies, the same logits from differently shaped matmuls (class in conftest)
    assert abs(loss.item() - reference.item()) < 1e-5
    loss.backward()
    for name, param in model.named_parameters():
        if name in expected:
            # reorder: gradients summed over positions in another order (class in conftest)
            torch.testing.assert_close(param.grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_without_the_branch_mask_the_packed_loss_differs():
    """The check above can fail: packing the same rows with plain causal attention (branches see each other) gives
    another loss."""
    model, _ = tiny_pal("lal")
    rows, audio = _clip_rows(model, 6, 3, seed=1)
    separate, separate_audio = _separate_batch([rows], [audio])
    reference = model(**separate, audio=separate_audio).loss.item()
    batch = pad_packed(pack_rows(rows), pad_id=0)
    width = batch["input_ids"].shape[1]
    batch["attention_mask"] = torch.ones(1, 1, width, width, dtype=torch.bool).tril()
    leaky = model(**batch, audio=audio).loss.item()
    assert abs(leaky - reference) > 1e-3


def test_shared_prefix_stops_before_answers_and_keeps_audio_inside():
    a = ([1, 2, 3, 4, 5], [IGNORE_INDEX] * 3 + [4, 5], [False, True, False, False, False])
    b = ([1, 2, 3, 4, 9, 9], [IGNORE_INDEX] * 4 + [9, 9], [False, True, False, False, False, False])
    assert shared_prefix_length([a, b]) == 3  # a's answer starts at 3, even though 4 is shared too
    (ids, labels, flags), positions, branches = pack_rows([a, b])[0]
    assert ids == [1, 2, 3, 4, 5, 4, 9, 9] and positions == [0, 1, 2, 3, 4, 3, 4, 5]
    assert branches == [0, 0, 0, 1, 1, 2, 2, 2] and flags[:3] == [False, True, False]
    late_audio = ([1, 2, 7, 7], [IGNORE_INDEX] * 3 + [7], [False, False, True, False])
    assert len(pack_rows([a, late_audio])) == 2  # audio after the shared part: left unpacked
    assert len(pack_rows([a, b], max_length=6)) == 2  # two branches would pass max_length


def test_branch_mask_blocks_other_branches_and_padding():
    batch = pad_packed([(([5, 6, 7, 8, 9], [IGNORE_INDEX] * 5, [False] * 5), [0, 1, 2, 2, 3], [0, 0, 1, 2, 2])],
                       pad_id=0)
    batch2 = pad_packed([(([5, 6], [IGNORE_INDEX] * 2, [False] * 2), [0, 1], [0, 0])] * 1 +
                        [(([5, 6, 7, 8, 9], [IGNORE_INDEX] * 5, [False] * 5), [0, 1, 2, 2, 3], [0, 0, 1, 2, 2])],
                        pad_id=0)
    mask = batch["attention_mask"][0, 0]
    assert mask[3].tolist() == [True, True, False, True, False]  # branch 2 sees the prefix and itself, not branch 1
    assert mask[2].tolist() == [True, True, True, False, False]
    padded = batch2["attention_mask"][0, 0]
    assert padded[2].tolist() == [False, False, True, False, False]  # a padding query attends itself alone
    assert not padded[:2, 2:].any()


class _Cache:
    """A stand-in feature cache: fixed random features per clip path."""

    root = "memory"

    def __init__(self, paths):
        gen = torch.Generator().manual_seed(0)
        self.features = {p: torch.randn(1, 5, 24, generator=gen) for p in paths}

    def __contains__(self, path):
        return path in self.features

    def get(self, paths):
        self.reads = getattr(self, "reads", 0) + len(paths)
        return {"sslam": (torch.cat([self.features[p] for p in paths]), torch.ones(len(paths), 5, dtype=torch.bool))}


def test_stage_data_groups_a_clips_questions_and_the_collator_packs_them(tmp_path):
    from conftest import tiny_llm_config

    from pal.configuration_pal import PALConfig
    from pal.llm import load_tokenizer
    from pal.processing_pal import PALProcessor

    rows = [{"id": f"{c}-{q}", "audio": f"clip{c}.wav", "messages": [
        {"role": "user", "content": f"<audio>\nQuestion {q} about the clip?"},
        {"role": "assistant", "content": f"answer {c} {q}"}]} for c in range(3) for q in range(3)]
    rows.append({"id": "text", "messages": [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "hello"}]})
    rows += [{"id": f"g{k}", "group": "clip9", "messages": [{"role": "user", "content": f"Question {k}?"},
                                                            {"role": "assistant", "content": "yes"}]} for k in range(2)]
    tokenizer = load_tokenizer(None)
    config = PALConfig(text_config=tiny_llm_config().to_dict(), encoder_dims={"sslam": 24}, connector="lal",
                       lal_config={"start_layer": 1})
    processor = PALProcessor(tokenizer, config, padding_side="right")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = examples_dataset(validate_manifest(manifest, check_audio=False))
    data = StageData([(table, 1.0, "m.jsonl")], seed=0, stage=0, global_batch=2, pack=2)
    assert len(data) == 8  # each clip's 3 questions as groups of 2 and 1, the lone text row, the `group` of two
    sizes = sorted(len(data[i]) for i in range(len(data)))
    assert sizes == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [e.id for e in data[len(data) - 1]] == ["g0", "g1"]  # rows without audio pack by their `group`

    cache = _Cache([str(tmp_path / f"clip{c}.wav") for c in range(3)])
    processor = processor.with_settings(cache=cache)
    group = data[0]
    batch, bad = processor.collate(processor.prepare([group]))
    assert not bad and batch["examples"] == 2 and batch["input_ids"].shape[0] == 1
    assert cache.reads == 1  # the clip is read once for its two questions
    separate, _ = processor.collate(processor.prepare(group))
    # Branch k of the packed row, read through its mask and positions, is exactly separate row k.
    ids, positions = batch["input_ids"][0], batch["position_ids"][0]
    mask = batch["attention_mask"][0, 0]
    for k in range(2):
        own = separate["input_ids"][k][separate["attention_mask"][k].bool()]
        last = int(np.flatnonzero(positions.numpy() == len(own) - 1)[k])  # the branch's last token
        seen = mask[last].nonzero().flatten()
        assert ids[seen].tolist() == own.tolist() and positions[seen].tolist() == list(range(len(own)))
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == int((separate["labels"] != IGNORE_INDEX).sum())


def test_a_curriculum_stage_trains_on_packed_questions(curriculum_env, tmp_path):
    """Two questions per tone clip, packed: each step's 2 sequences hold 4 questions, which the log counts."""
    from conftest import curriculum_dict, train_in_process, write_jsonl, write_yaml

    rows = []
    for i, line in enumerate((curriculum_env / "train.jsonl").read_text().splitlines()):
        row = json.loads(line)
        if "audio" not in row:
            continue
        row["audio"] = str(curriculum_env / row["audio"])
        high = "yes" if "high" in row["messages"][1]["content"] else "no"
        rows += [row, {"id": f"high{i}", "audio": row["audio"], "task": "qa", "messages": [
            {"role": "user", "content": "<audio>\nIs the tone high? Answer yes or no."},
            {"role": "assistant", "content": high}]}]
    manifest = write_jsonl(tmp_path / "two.jsonl", rows)
    config = curriculum_dict(curriculum_env, stages=1, steps=2, batch_size=2, pack_questions=2, val_manifest=None,
                             num_samples=0, checkpoint_every=2, data=[{"manifest": str(manifest)}])
    [result] = train_in_process(write_yaml(tmp_path / "c.yaml", config), tmp_path / "run")
    assert result["bad_samples"] == 0 and math.isfinite(result["loss"])
    [end] = [json.loads(line) for line in (tmp_path / "run" / "stage1-connector" / "log.jsonl").read_text()
             .splitlines() if '"end"' in line]
    assert end["examples"] == 2 * 2 * 2  # steps × sequences × questions per sequence
