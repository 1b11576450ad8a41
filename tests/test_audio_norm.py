"""The feature standardisation in front of the connectors (pal/audio_norm.py): the formula against numpy, padding,
positions past the fitted ones, identity before fitting, and save/load through the model."""

from __future__ import annotations

import numpy as np
import torch
from conftest import build_inputs, random_audio, random_texts, tiny_pal

from pal.audio_norm import MIN_CLIPS_PER_POSITION, AudioFeatureNorm


def _clips(seed: int = 0):
    """Two batches of 'encoder outputs': a large per-position constant plus a small clip-dependent part."""
    gen = torch.Generator().manual_seed(seed)
    offset = torch.randn(7, 5, generator=gen) * 10  # what every clip shares at each position
    batches = []
    for lengths in ([7, 6, 6], [5, 6, 7]):
        tokens = offset + 0.1 * torch.randn(len(lengths), 7, 5, generator=gen)
        mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
        batches.append({"x": (tokens.masked_fill(~mask[..., None], 99.0), mask)})  # padding is garbage
    return batches


def test_fit_and_transform_follow_the_formula():
    batches = _clips()
    norm = AudioFeatureNorm({"x": 5})
    first, mask = batches[0]["x"]
    assert torch.equal(norm(batches[0])["x"][0], first * mask[..., None])  # unfitted: the identity (padding zeroed)
    assert norm.fit(batches) == {"x": 6}  # position 5 is real in 5 clips (kept), position 6 in 2 (the fallback)
    tokens = np.concatenate([b["x"][0].numpy() for b in batches]).astype(np.float64)
    real = np.concatenate([b["x"][1].numpy() for b in batches])
    mu = np.stack([tokens[real[:, n], n].mean(0) for n in range(7)])  # per position, over the clips that reach it
    fallback = tokens[real].mean(0)
    kept = [n for n in range(7) if real[:, n].sum() >= MIN_CLIPS_PER_POSITION]
    means = np.stack([mu[n] if n in kept else fallback for n in range(7)])
    fitted = real & (np.arange(7)[None] < 6)
    sigma = np.sqrt(((tokens - means)[fitted] ** 2).mean(0))
    for batch in batches:
        got, got_mask = norm(batch)["x"]
        t, m = batch["x"][0].numpy().astype(np.float64), batch["x"][1].numpy()
        expected = (t - means) / np.sqrt(sigma**2 + 1e-6 * (sigma**2).mean()) * m[..., None]
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=1e-5)  # reorder (float32 vs float64)
        assert torch.equal(got_mask, batch["x"][1])
    # At the fitted positions the shared offset is gone: what is left is the clip-dependent part, at unit scale.
    normed = torch.cat([norm(b)["x"][0][:, :6][b["x"][1][:, :6]] for b in batches])
    assert normed.mean(0).abs().max() < 0.05 and (normed.std(0) - 1).abs().max() < 0.1


def test_few_clips_fit_the_channel_statistics_only_and_no_audio_stays_the_identity():
    gen = torch.Generator().manual_seed(0)
    tokens, mask = torch.randn(2, 3, 4, generator=gen) * 3 + 1, torch.ones(2, 3, dtype=torch.bool)
    norm = AudioFeatureNorm({"x": 4})
    assert norm.fit([{"x": (tokens, mask)}]) == {"x": 0}  # 2 clips: no position has its own mean
    flat = tokens.reshape(-1, 4).double()
    expected = (flat - flat.mean(0)) / flat.std(0, unbiased=False)
    torch.testing.assert_close(norm({"x": (tokens, mask)})["x"][0].reshape(-1, 4).double(), expected,
                               atol=1e-5, rtol=1e-5)  # reorder (float32 vs float64); variance floor 1e-6 relative
    silent = AudioFeatureNorm({"x": 4})
    assert silent.fit([{"x": (tokens, torch.zeros(2, 3, dtype=torch.bool))}]) == {"x": 1}
    assert torch.equal(silent({"x": (tokens, mask)})["x"][0], tokens)


def test_a_fitted_model_saves_and_loads_the_same(tmp_path):
    from pal import PALForConditionalGeneration

    model, _ = tiny_pal("pal", audio_norm="standardize")
    audio = random_audio(model.config, [6, 4, 5, 6])
    model.fit_audio_norm([audio])
    assert model.config.audio_norm_positions == {"sslam": 4, "whisper": 6}
    two = {n: (t[:2], m[:2]) for n, (t, m) in audio.items()}
    batch = build_inputs(model, random_texts([9, 9]), two)
    model.save_pretrained(tmp_path / "m")
    loaded = PALForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    for name, stats in model.audio_norm.stats.items():
        for key, value in stats.state_dict().items():
            assert torch.equal(value, loaded.audio_norm.stats[name].state_dict()[key]), (name, key)
    with torch.no_grad():
        assert torch.equal(model(**batch, audio=two).logits, loaded(**batch, audio=two).logits)


def test_each_window_of_a_long_recording_is_standardised_as_a_one_window_clip():
    """Fitted on one-window clips (W = 7 tokens per window), a recording of three windows joined in time order: each
    window's standardised tokens equal that window's alone (without the period, windows 2 and 3 took the mean over
    positions and kept the encoder's per-position constant); fitted on long recordings, the statistics fold by
    position within the window, as numpy computes them."""
    batches = _clips()
    norm = AudioFeatureNorm({"x": 5})
    norm.fit(batches, periods={"x": 7})
    windows = batches[0]["x"][0][:3]  # three full windows of 7 (clips 0..2 of the first batch: 7, 6, 6 real)
    full = torch.ones(1, 21, dtype=torch.bool)
    joined, _ = norm({"x": (windows.reshape(1, 21, 5), full)})["x"]
    alone, _ = norm({"x": (windows, torch.ones(3, 7, dtype=torch.bool))})["x"]
    torch.testing.assert_close(joined[0], alone.reshape(21, 5), rtol=0, atol=0)  # exact: the same arithmetic
    no_period = AudioFeatureNorm({"x": 5})
    no_period.fit(batches)
    unrepeated, _ = no_period({"x": (windows.reshape(1, 21, 5), full)})["x"]
    assert (unrepeated[0, 7:] - alone[1:].reshape(14, 5)).abs().max() > 1  # the constant left in windows 2 and 3

    long = {"x": (torch.cat([b["x"][0][:2].reshape(1, 14, 5) for b in batches]), torch.ones(2, 14, dtype=torch.bool))}
    folded = AudioFeatureNorm({"x": 5})
    assert folded.fit([long], periods={"x": 7}) == {"x": 7}  # two recordings of two windows: 4 windows a position
    tokens = long["x"][0].reshape(4, 7, 5).numpy().astype(np.float64)
    np.testing.assert_allclose(folded.stats["x"].mean.numpy(), tokens.mean(0), rtol=1e-5, atol=1e-5)  # reorder
