"""Serving throughput (`pal bench serve`): batched against one request at a time, side by side in one run.

The same model served twice on 127.0.0.1 (uvicorn in this process): once answering requests one at a time
(`max_batch` 1), once batching the requests that arrive together (serving/batching.py). `clients` threads each send
their share of `requests` greedy chat requests over HTTP, every one about a different clip (so no request borrows
another's audio), each generating exactly `max_tokens` tokens. Reported for each: requests/s, p50 and p99 latency,
the batch sizes the batcher ran; the ratio batched / one at a time; and whether every batched answer equals the
answer the same request got alone.

Model: `--model FOLDER` (a trained folder), or the preset's random weights (full: SmolLM2-135M with a ViT-B-sized
SSLAM through LAL from layer 4; tiny: a 2-layer LLM and the tiny SSLAM) — what serving costs, not what it knows.
"""

from __future__ import annotations

import base64
import json
import statistics
import sys
import threading
import time
import urllib.request

import numpy as np
import torch

from pal.presets import connector_preset

PRESETS = {"full": {"sslam": "vitb", "llm": None, "seconds": 4.0},
           "tiny": {"sslam": "tiny", "llm": "tiny", "seconds": 1.0}}


def _model(preset: str, folder: str | None):
    from encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from inference.audio_llm import AudioLLM
    from pal import PALConfig, PALForConditionalGeneration
    from pal.llm import load_llm, load_tokenizer

    if folder:
        return AudioLLM.from_pretrained(folder)
    setting = PRESETS[preset]
    torch.manual_seed(0)
    ensemble = AudioEncoderEnsemble(EnsembleConfig.from_dict(
        {"encoders": {"sslam": {"type": "sslam", "preset": setting["sslam"]}}}))
    tokenizer = load_tokenizer(None)
    if setting["llm"] == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           tie_word_embeddings=True, max_position_embeddings=1024))
        start = 1
    else:
        llm, start = load_llm(setting["llm"]), 4
    config = PALConfig(text_config=llm.config.to_dict(), encoder_dims=ensemble.dims,
                       **connector_preset("lal", lal_start_layer=start))
    return AudioLLM(PALForConditionalGeneration(config, llm=llm), tokenizer, ensemble)


def _clip_payloads(count: int, seconds: float) -> list[str]:
    """`count` different tones as base64 WAV files."""
    import io

    import soundfile

    t = np.arange(int(seconds * 16000)) / 16000
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        soundfile.write(buffer, (0.2 * np.sin(2 * np.pi * (200 + 37 * i) * t)).astype(np.float32), 16000, format="WAV")
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


def _post(url: str, body: dict) -> tuple[float, dict]:
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        reply = json.loads(response.read())
    return time.perf_counter() - start, reply


def _serve_and_load(llm, max_batch: int, wait_ms: float, bodies: list[dict], clients: int) -> dict:
    """Start a server, send `bodies` from `clients` threads, stop it → figures and the answers in body order."""
    from serving.app import ServeSettings, create_app, start_in_thread

    app = create_app(llm, ServeSettings(model_id="bench", max_batch=max_batch, batch_wait_ms=wait_ms,
                                        cache_clips=len(bodies)))
    server, thread, url = start_in_thread(app)
    latencies, answers = [0.0] * len(bodies), [None] * len(bodies)

    def client(k: int) -> None:
        for i in range(k, len(bodies), clients):
            latencies[i], reply = _post(url, bodies[i])
            answers[i] = reply["choices"][0]["message"]["content"]

    start = time.perf_counter()
    workers = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    batches = list(app.state.batcher.batches)
    server.should_exit = True
    thread.join(30)
    ordered = sorted(latencies)
    return {"requests_per_s": len(bodies) / wall, "p50_s": statistics.median(ordered),
            "p99_s": ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))],
            "mean_batch": statistics.mean(batches), "largest_batch": max(batches), "answers": answers}


def run(preset: str = "full", model: str | None = None, requests: int = 32, clients: int = 8, max_batch: int = 8,
        wait_ms: float = 20.0, max_tokens: int = 16, progress=print) -> dict:
    llm = _model(preset, model)
    llm.model.generation_config.min_new_tokens = max_tokens  # every request generates as many tokens
    clips = _clip_payloads(requests, PRESETS[preset]["seconds"])
    bodies = [{"model": "bench", "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What do you hear?"},
        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}}]}]} for clip in clips]
    _serve_and_load(llm, 1, 0.0, bodies[:2], 1)  # warm-up
    progress(f"  one at a time: {requests} requests from {clients} clients ...")
    alone = _serve_and_load(llm, 1, 0.0, bodies, clients)
    progress(f"  batched (up to {max_batch}, {wait_ms:g} ms wait) ...")
    batched = _serve_and_load(llm, max_batch, wait_ms, bodies, clients)
    same = batched.pop("answers") == alone.pop("answers")
    return {"preset": preset, "model": model, "requests": requests, "clients": clients, "max_tokens": max_tokens,
            "one_at_a_time": alone, "batched": batched, "same_answers": same,
            "ratio": batched["requests_per_s"] / alone["requests_per_s"]}


def main(args) -> int:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    report = run(args.preset, args.model, args.requests, args.clients, args.max_batch, args.wait_ms, args.max_tokens,
                 progress=log)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'':14s} {'requests/s':>10s} {'p50 s':>7s} {'p99 s':>7s} {'mean batch':>10s}")
    for name in ("one_at_a_time", "batched"):
        r = report[name]
        print(f"{name:14s} {r['requests_per_s']:10.2f} {r['p50_s']:7.2f} {r['p99_s']:7.2f} {r['mean_batch']:10.2f}")
    print(f"batched / one at a time: {report['ratio']:.2f}x; batched answers equal the answers alone: "
          f"{report['same_answers']}")
    return 0 if report["same_answers"] else 1


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--model", help="a trained model folder (default: the preset's random weights)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=20.0, help="how long the batcher waits for company")
    parser.add_argument("--max-tokens", type=int, default=16)


__all__ = ["run"]
