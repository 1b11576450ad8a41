"""Long recordings: ten minutes through `pal infer` and `pal serve`, the limit and the setting that raises it, a
truncation that says what it drops, and PLITS audio past the LLM's context refused before any encoder runs."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import soundfile
import torch
from conftest import tiny_llm

from pal import PALConfig, PALProcessor
from pal.cli.main import main
from pal.encoders.audio import AudioError
from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig

TONE_SECONDS = 600  # ten minutes


def recording(path, seconds: float, rate: int = 16000):
    """A recording whose pitch rises every 30 s (so its windows differ)."""
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, (0.2 * np.sin(2 * np.pi * (200 + 20 * (t // 30)) * t)).astype(np.float32), rate,
                    subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    return recording(tmp_path_factory.mktemp("long") / "ten-minutes.wav", TONE_SECONDS)


def test_pal_infer_answers_about_a_ten_minute_recording_hearing_all_of_it(trained_tiny, ten_minutes, capsys):
    """The tiny model's SSLAM (10.24 s windows) encodes all 59 windows; the LAL keys cover every one of them."""
    from pal.inference.audio_llm import AudioLLM, Decoding

    llm = AudioLLM.from_pretrained(trained_tiny)
    clip = llm.load(ten_minutes)
    windows = -(-(1 + (16000 * TONE_SECONDS - 400) // 160) // 1024)
    assert windows == 59 and llm.ensemble.token_counts(clip) == {"sslam": windows * (1 + 64 * 8)}
    keys = []
    original = llm.model.lal.forward
    llm.model.lal.forward = lambda audio, *a, **k: keys.append(int(audio["sslam"][1].sum())) or original(audio, *a, **k)
    try:
        answer = llm.ask(ten_minutes, "Describe the sound.", Decoding(max_new_tokens=6))
    finally:
        llm.model.lal.forward = original
    assert keys == [windows * 513] and isinstance(answer, str)
    assert main(["infer", "--model", str(trained_tiny), "--audio", str(ten_minutes), "--prompt",
                 "Describe the sound.", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == answer


def test_pal_serve_takes_a_ten_minute_wav_within_its_default_limits(trained_tiny, ten_minutes):
    from pal.inference.audio_llm import AudioLLM, Decoding
    from pal.serving.app import ServeSettings, create_app
    from pal.serving.requests import parse_chat_request

    llm = AudioLLM.from_pretrained(trained_tiny)
    settings = ServeSettings(model_id="tiny")
    body = json.dumps({"model": "tiny", "max_tokens": 6, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe the sound."},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(ten_minutes.read_bytes()).decode(),
                                                "format": "wav"}}]}]}).encode()
    assert len(body) < settings.max_request_mb * 2**20  # the default body limit holds ten minutes of 16-bit WAV
    service = create_app(llm, settings).state.service
    request = parse_chat_request(body)
    result = service.complete(request)
    assert result["text"] == llm.ask(ten_minutes, "Describe the sound.", Decoding(max_new_tokens=6))


def test_a_recording_over_the_limit_names_the_limit_and_the_setting(tmp_path, monkeypatch):
    from pal.encoders.audio import load_audio

    clip = recording(tmp_path / "twelve.wav", 12)
    monkeypatch.setenv("PAL_MAX_AUDIO_SECONDS", "10")
    with pytest.raises(AudioError, match=r"twelve.wav: 12 s long, over the 10 s limit \(PAL_MAX_AUDIO_SECONDS=SECONDS "
                                         r"raises it\)"):
        load_audio(clip)
    with pytest.raises(AudioError, match=r"over the 5 s limit \(pal serve --max-audio-seconds raises it\)"):
        load_audio(clip, max_seconds=5, setting="pal serve --max-audio-seconds")
    monkeypatch.setenv("PAL_MAX_AUDIO_SECONDS", "soon")
    with pytest.raises(ValueError, match="PAL_MAX_AUDIO_SECONDS='soon': expected a number of seconds"):
        load_audio(clip)


def _processor(long_audio: str, route: str = "lal", downsample: int = 1) -> PALProcessor:
    """A tiny SSLAM (4 s windows of 201 tokens) before the tiny LLM (a context of 256 positions)."""
    from pal.llm import load_tokenizer

    ensemble = AudioEncoderEnsemble(EnsembleConfig.from_dict({"encoders": {"sslam": {
        "type": "sslam", "preset": "tiny", "window_frames": 400, "long_audio": long_audio}}}))
    config = PALConfig(text_config=tiny_llm().config.to_dict(), encoder_dims=ensemble.dims, connector=route,
                       plits_config={"mlp_downsample": downsample})
    return PALProcessor(load_tokenizer(None), config, ensemble=ensemble)


def test_plits_audio_past_the_llms_context_is_refused_before_any_encoder_runs(tmp_path, monkeypatch):
    clip = recording(tmp_path / "eight.wav", 8)  # 2 windows: 402 PLITS tokens, over the context of 256
    processor = _processor("split", route="plits")
    monkeypatch.setattr(type(processor.ensemble.members["sslam"]), "__call__",
                        lambda *a, **k: pytest.fail("an encoder ran"))
    with pytest.raises(AudioError, match=r"eight.wav: 8 s of audio would take 402 positions of the LLM's sequence "
                                         r"through PLITS \(sslam: 402 tokens\), over its context of 256.*through LAL"):
        processor.load_audio(clip)
    processor = _processor("split", route="plits", downsample=2)  # 201 positions fit
    assert processor.load_audio(clip)[16000].shape[-1] == 8 * 16000
    assert _processor("split", route="lal").load_audio(clip)  # LAL's audio never enters the sequence


def test_a_truncating_encoder_says_how_much_it_drops(tmp_path):
    clip = recording(tmp_path / "twelve.wav", 12)
    with pytest.warns(UserWarning, match=r"twelve.wav: sslam keeps its first window only \(long_audio: truncate\) and "
                                         r"drops 8\.0 s"):
        _processor("truncate").load_audio(clip)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default, split, hears all of it without a word
        loaded = _processor("split").load_audio(clip)
    assert torch.is_tensor(loaded[16000])


def test_bench_length_measures_each_connector_against_plits_and_finds_where_plits_cannot_run(tmp_path, capsys):
    """`pal bench length` on toy dims: every (length, connector) measured in its own process, ratios to PLITS at the
    same length, and a length whose PLITS sequence passes the context (60 s: 540 audio tokens + 64 text over 512)
    reported as such while LAL and PAL still run."""
    from pal.bench.length import PRESETS, LengthSettings, audio_tokens

    s = LengthSettings(**PRESETS["tiny"])
    assert [audio_tokens(x, s) for x in (1, 3, 60)] == [9, 27, 540]  # 98, 298, 5998 frames in windows of 100
    assert main(["bench", "length", "--preset", "tiny", "--seconds", "3", "60", "--json",
                 "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    results = {(r["connector"], r["seconds"]): r for r in report["results"]}
    assert results[("plits", 60)]["over_context"] and results[("plits", 60)]["sequence_tokens"] == 604
    assert not results[("lal", 60)]["over_context"] and results[("lal", 60)]["sequence_tokens"] == 64
    assert results[("plits", 3)]["sequence_tokens"] == 27 + 64 and results[("pal", 3)]["sequence_tokens"] == 4 + 64
    for name in ("lal/plits@3s", "pal/plits@3s"):
        connector = name.split("/")[0]
        assert report["ratios"][name]["prefill_s"] == pytest.approx(
            results[(connector, 3)]["prefill_s"] / results[("plits", 3)]["prefill_s"])
    assert all(r["prefill_s"] > 0 and r["decode_token_s"] > 0 for r in report["results"] if not r["over_context"])
    lal, plits = results[("lal", 3)]["prefill_s"], results[("plits", 3)]["prefill_s"]
    # cheaper at 3 s already, or from 60 s, where PLITS cannot run at all
    assert report["crossover"]["lal"] == ({"seconds": 3, "prefill_ratio": lal / plits} if lal < plits else
                                          {"seconds": 60, "prefill_ratio": None, "plits": "over the context"})
    assert json.loads((tmp_path / "length.json").read_text())["ratios"] == report["ratios"]
