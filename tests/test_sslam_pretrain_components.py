"""Each pre-training component against its definition in docs/design.md#sslam, on small hand-checkable cases."""

from __future__ import annotations

import math
import random

import pytest
import torch

from pal.encoders.sslam.decoder import Decoder2d
from pal.encoders.sslam.masking import inverse_block_mask
from pal.encoders.sslam.model import PRESETS, SSLAMConfig
from pal.encoders.sslam.pretraining import EMATeacher, ObjectiveConfig, SSLAMPretrainer, d2v_loss, ema_decay_at, make_targets
from pal.encoders.sslam.source_retention import (
    draw_window_starts,
    mixed_patch_rows,
    mixed_positions,
    partial_mixture,
    srl_targets,
)


def test_mask_counts_and_blocks():
    gen = torch.Generator().manual_seed(0)
    masks = inverse_block_mask(64, (64, 8), generator=gen)
    assert masks.shape == (64, 512) and masks.dtype == torch.bool
    assert (masks.sum(-1) == 410).all()  # 102 visible, 410 masked (80.1 %), every row
    # Kept cells come in blocks: most visible cells have a visible 4-neighbour (random fill-in cells may not).
    keep = (~masks).view(64, 64, 8).float()
    padded = torch.nn.functional.pad(keep, (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    assert ((neighbours > 0) & (keep > 0)).sum() / keep.sum() > 0.8
    assert not torch.equal(masks[0], masks[1])  # independent clones


def test_ema_schedule():
    assert ema_decay_at(0, 0.9998, 0.99999, 100000) == pytest.approx(0.9998)
    assert ema_decay_at(50000, 0.9998, 0.99999, 100000) == pytest.approx((0.9998 + 0.99999) / 2)
    assert ema_decay_at(100000, 0.9998, 0.99999, 100000) == 0.99999
    assert ema_decay_at(400000, 0.9998, 0.99999, 100000) == 0.99999


def test_ema_update_averages_and_copies_frozen_tensors():
    objective = ObjectiveConfig(ema_decay=0.5, ema_end_decay=0.5)
    model = SSLAMPretrainer(PRESETS["tiny"], objective)
    teacher = EMATeacher(model.student, objective)
    name = "blocks.0.mlp.fc1.weight"
    before = dict(teacher.encoder.named_parameters())[name].clone()
    with torch.no_grad():
        dict(model.student.named_parameters())[name].add_(1.0)
    teacher.update(model.student, step=0)
    after = dict(teacher.encoder.named_parameters())[name]
    torch.testing.assert_close(after, before + 0.5)  # 0.5·θ_T + 0.5·(θ_T + 1)


def test_targets_on_a_hand_computed_case():
    # Two layers, one sequence of 2 tokens, 2 channels: IN over tokens, mean of layers, LN over channels.
    t1 = torch.tensor([[[1.0, 4.0], [3.0, 0.0]]])
    t2 = torch.tensor([[[2.0, 2.0], [2.0, 6.0]]])
    # IN(t1): channel 0 → [-1, 1], channel 1 → [1, -1]; IN(t2): channel 0 → [0, 0], channel 1 → [-1, 1] (eps aside)
    # mean → [[-0.5, 0], [0.5, 0]]; LN over channels → [[-1, 1], [1, -1]]
    expected = torch.tensor([[[-1.0, 1.0], [1.0, -1.0]]])
    torch.testing.assert_close(make_targets([t1, t2], 2), expected, atol=1e-3, rtol=0)
    # K = 1 takes only the last layer: IN(t2) = [[0, -1], [0, 1]] → LN → [[1, -1], [-1, 1]]
    torch.testing.assert_close(make_targets([t1, t2], 1), torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]]), atol=1e-3, rtol=0)


def test_mixture_rows_and_clean_windows():
    spec = torch.stack([torch.full((64, 4), float(i)) for i in range(3)])  # clip i is constant i
    spec[0, 10] = 5.0
    mixed = partial_mixture(spec, (16, 40), window=16)
    assert torch.equal(mixed[1, 16:32], spec[1, 16:32]) and torch.equal(mixed[1, 40:56], spec[1, 40:56])
    assert (mixed[1, :10] == 1).all() and mixed[1, 10].eq(5.0).all()  # max with clip 0 (5 > 1 at frame 10)
    assert (mixed[0, 32:40] == 2).all()  # clip 0 mixed with clip 2 (cyclic roll by +1)
    rows = mixed_patch_rows((16, 40), 16, patch=16 // 2, time_patches=8)
    assert rows.tolist() == [True, True, False, False, True, False, False, True]
    assert mixed_positions(rows, 2).tolist() == [0, 1, 2, 3, 8, 9, 14, 15]


def test_window_draws_follow_the_official_ranges():
    rng = random.Random(0)
    for _ in range(200):
        a, b = draw_window_starts(1024, 240, 16, rng)
        assert a % 16 == 0 and b % 16 == 0 and 0 <= a <= 496 and a + 240 <= b <= 768


def test_srl_target_halves():
    clean = torch.arange(3 * 4 * 1, dtype=torch.float32).view(3, 4, 1)
    foreign = torch.full((3, 2, 1), 100.0) * torch.arange(1, 4).view(3, 1, 1)  # clip j's foreign target = 100(j+1)
    target = srl_targets(clean, foreign, torch.tensor([1, 3]))
    # Mixture 0 holds clip 2 (roll +1): mixed positions are ½(Y + 300); clean positions stay Y.
    assert target[0, :, 0].tolist() == [0.0, (1 + 300) / 2, 2.0, (3 + 300) / 2]
    assert target[1, 1, 0] == (5 + 100) / 2


def test_decoder_shapes_and_residual():
    config = SSLAMConfig(embed_dim=32, depth=1, num_heads=1, mlp_dim=64, decoder_layers=3, decoder_groups=4)
    decoder = Decoder2d(config)
    x = torch.randn(2, 64 * 8, 32)
    assert decoder(x).shape == (2, 512, 32)
    assert decoder.blocks[0][0].weight.shape == (32, 8, 3, 3)  # grouped conv: D / groups input channels


def test_loss_scaling():
    """frame: Σ masked ℓ / S; utterance: Σ over sequences; SRL: ×2 / S (docs/design.md#losses); a tiny random
    model."""
    objective = ObjectiveConfig(stage=2, clones=2, top_k_layers=2, mix_window=32)
    model = SSLAMPretrainer(PRESETS["tiny"], objective)
    teacher = EMATeacher(model.student, objective)
    torch.manual_seed(0)
    spec = torch.randn(3, 128, 128)
    draws = model.draw(3, 128, random.Random(0), torch.Generator().manual_seed(0))
    out = model(spec, draws, teacher)
    s = out["sample_size"]
    assert int(s) == 2 * 3 * 2 * int(draws.masks[0].sum())
    masks = torch.cat([draws.masks, draws.masks])
    pred = out["student_pred_masked"]
    frame_ref = d2v_loss(pred.reshape(-1, 128), out["target_frame"].repeat_interleave(2, 0)[masks]).sum() / s
    torch.testing.assert_close(out["loss_frame"], frame_ref)
    utt_ref = d2v_loss(out["student_cls"], out["target_utterance"].repeat_interleave(2, 0)).sum()
    torch.testing.assert_close(out["loss_utterance"], utt_ref)
    srl_ref = 2 * d2v_loss(pred[6:].reshape(-1, 128), out["target_srl"].repeat_interleave(2, 0)[draws.masks]).sum() / s
    torch.testing.assert_close(out["loss_srl"], srl_ref)
    assert math.isclose(float(out["loss"].detach()), float((frame_ref + utt_ref + srl_ref).detach()), rel_tol=1e-6)
