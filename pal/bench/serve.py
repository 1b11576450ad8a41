"""Serving throughput (`pal bench serve`): batched against one request at a time, side by side in one run.

The same model served twice on 127.0.0.1 (uvicorn in this process): once answering requests one at a time
(`max_batch` 1), once batching the requests that arrive together (serving/batching.py). `clients` threads each send
their share of `requests` greedy chat requests over HTTP, every one about a different clip (so no request borrows
another's audio), each generating exactly `max_tokens` tokens. Reported for each: requests/s, p50 and p99 latency,
the batch sizes the batcher ran; the ratio batched / one at a time; and whether every batched answer equals the
answer the same request got alone.

`--load SECONDS`: the load test instead (`run_load`): `--clients` clients (32 for the figures in docs/serving.md) for that long,
a bad request (malformed JSON, bad base64, not audio, unknown model, a bad parameter) every fourth, each good answer
checked against the one it gets alone; requests/s, latency, outcomes by kind, memory before and after.

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
import urllib.error
import urllib.request

import numpy as np
import torch

from pal.presets import connector_preset

PRESETS = {"full": {"sslam": "vitb", "llm": None, "seconds": 4.0},
           "tiny": {"sslam": "tiny", "llm": "tiny", "seconds": 1.0}}


def _model(preset: str, folder: str | None):
    from pal import PALConfig, PALForConditionalGeneration, PALProcessor
    from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from pal.inference.audio_llm import AudioLLM
    from pal.llm import load_llm, load_tokenizer, tiny_llama

    if folder:
        return AudioLLM.from_pretrained(folder)
    setting = PRESETS[preset]
    torch.manual_seed(0)
    ensemble = AudioEncoderEnsemble(EnsembleConfig.from_dict(
        {"encoders": {"sslam": {"type": "sslam", "preset": setting["sslam"]}}}))
    tokenizer = load_tokenizer(None)
    if setting["llm"] == "tiny":
        llm, start = tiny_llama(len(tokenizer)), 1
    else:
        llm, start = load_llm(setting["llm"]), 4
    config = PALConfig(text_config=llm.config.to_dict(), encoder_dims=ensemble.dims,
                       **connector_preset("lal", lal_config={"start_layer": start}))
    return AudioLLM(PALForConditionalGeneration(config, llm=llm), PALProcessor(tokenizer, config, ensemble=ensemble))


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


def _bodies(payloads: list[str], max_tokens: int) -> list[dict]:
    """One chat request per base64 clip: "What do you hear?" with the clip."""
    return [{"model": "bench", "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What do you hear?"},
        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}}]}]} for clip in payloads]


def _post(url: str, body: dict) -> tuple[float, dict]:
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        reply = json.loads(response.read())
    return time.perf_counter() - start, reply


def _in_threads(client, clients: int) -> float:
    """Run `client(k)` in `clients` threads at once → the wall time until the last one ends."""
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def _serve_and_load(llm, max_batch: int, wait_ms: float, bodies: list[dict], clients: int) -> dict:
    """Start a server, send `bodies` from `clients` threads, stop it → figures and the answers in body order."""
    from pal.serving.app import ServeSettings, create_app, start_in_thread

    app = create_app(llm, ServeSettings(model_id="bench", max_batch=max_batch, batch_wait_ms=wait_ms,
                                        cache_clips=len(bodies)))
    server, thread, url = start_in_thread(app)
    latencies, answers = [0.0] * len(bodies), [None] * len(bodies)

    def client(k: int) -> None:
        for i in range(k, len(bodies), clients):
            latencies[i], reply = _post(url, bodies[i])
            answers[i] = reply["choices"][0]["message"]["content"]

    wall = _in_threads(client, clients)
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
    bodies = _bodies(_clip_payloads(requests, PRESETS[preset]["seconds"]), max_tokens)
    _serve_and_load(llm, 1, 0.0, bodies[:2], 1)  # warm-up
    progress(f"  one at a time: {requests} requests from {clients} clients ...")
    alone = _serve_and_load(llm, 1, 0.0, bodies, clients)
    progress(f"  batched (up to {max_batch}, {wait_ms:g} ms wait) ...")
    batched = _serve_and_load(llm, max_batch, wait_ms, bodies, clients)
    same = batched.pop("answers") == alone.pop("answers")
    return {"preset": preset, "model": model, "requests": requests, "clients": clients, "max_tokens": max_tokens,
            "one_at_a_time": alone, "batched": batched, "same_answers": same,
            "ratio": batched["requests_per_s"] / alone["requests_per_s"]}


BAD_REQUESTS = {  # what a load test mixes in: (name, body maker from a good body) → the status it must get
    "malformed JSON": (lambda body: b"{\"model\": ", 400),
    "bad base64": (lambda body: _with_audio(body, "%%%"), 400),
    "not audio": (lambda body: _with_audio(body, base64.b64encode(b"this is not audio" * 50).decode()), 400),
    "unknown model": (lambda body: {**body, "model": "no-such-model"}, 404),
    "bad max_tokens": (lambda body: {**body, "max_tokens": "many"}, 400),
}


def _with_audio(body: dict, data: str) -> dict:
    message = body["messages"][0]
    content = [message["content"][0], {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]
    return {**body, "messages": [{**message, "content": content}]}


def load_test(url: str, good: list[dict], expected: list[str], clients: int, seconds: float,
              bad_every: int = 4) -> dict:
    """`clients` threads send requests for `seconds`: good ones (checked against `expected`, the answer each gets
    alone) with a bad one every `bad_every`-th (BAD_REQUESTS in turn, each checked for its status). → requests/s,
    latency percentiles of the good ones, outcomes by kind, wrong answers, and this process's resident memory before
    and after (the server runs in this process)."""
    from .memory import rss_mb

    outcomes: dict[str, int] = {}
    latencies: list[float] = []
    wrong: list[str] = []
    lock = threading.Lock()
    kinds = list(BAD_REQUESTS)
    memory_before = rss_mb()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            i = (k * 7919 + n) % len(good)
            if n % bad_every == bad_every - 1:
                kind = kinds[(k + n) % len(kinds)]
                make, status = BAD_REQUESTS[kind]
                payload = make(good[i])
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                request = urllib.request.Request(f"{url}/v1/chat/completions", data=data,
                                                 headers={"Content-Type": "application/json"})
                try:
                    urllib.request.urlopen(request, timeout=600).read()
                    outcome = f"{kind}: answered 200, expected {status}"
                except urllib.error.HTTPError as err:
                    body = json.loads(err.read())
                    outcome = f"{kind}: {err.code}" + ("" if err.code == status and "error" in body
                                                       else f", expected {status}")
            else:
                try:
                    took, reply = _post(url, good[i])
                    answer = reply["choices"][0]["message"]["content"]
                    outcome = "good: 200"
                    with lock:
                        latencies.append(took)
                        if answer != expected[i]:
                            wrong.append(f"request {i}: {answer!r} instead of {expected[i]!r}")
                except Exception as err:  # a refused connection, a 5xx: all counted against the server
                    outcome = f"good: failed ({type(err).__name__}: {err})"
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            n += 1

    wall = _in_threads(client, clients)
    ordered = sorted(latencies) or [float("nan")]
    return {"clients": clients, "seconds": wall, "requests": sum(outcomes.values()),
            "requests_per_s": sum(outcomes.values()) / wall, "good_requests_per_s": len(latencies) / wall,
            "p50_s": statistics.median(ordered), "p99_s": ordered[int(round(0.99 * (len(ordered) - 1)))],
            "outcomes": dict(sorted(outcomes.items())), "wrong_answers": wrong,
            "rss_mb_before": memory_before, "rss_mb_after": rss_mb()}


def run_load(preset: str = "full", model: str | None = None, clients: int = 32, seconds: float = 60.0,
             clips: int = 24, cache_clips: int = 16, max_tokens: int = 16, progress=print) -> dict:
    """The load test: the model served (batching on, a clip cache smaller than the clips asked about), each good
    request's answer first asked alone, then `clients` clients for `seconds` with bad requests mixed in."""
    from pal.serving.app import ServeSettings, create_app, start_in_thread

    llm = _model(preset, model)
    good = _bodies(_clip_payloads(clips, PRESETS[preset]["seconds"]), max_tokens)
    app = create_app(llm, ServeSettings(model_id="bench", cache_clips=cache_clips))
    server, thread, url = start_in_thread(app)
    try:
        progress(f"  {clips} answers asked alone ...")
        expected = [_post(url, body)[1]["choices"][0]["message"]["content"] for body in good]
        progress(f"  {clients} clients for {seconds:g} s ...")
        report = load_test(url, good, expected, clients, seconds)
        report["clip_cache"] = app.state.service.clips.stats()
        report["batches"] = {"run": len(app.state.batcher.batches), "largest": max(app.state.batcher.batches)}
        with urllib.request.urlopen(f"{url}/health", timeout=60) as response:
            report["healthy_after"] = json.loads(response.read())["status"] == "ok"
    finally:
        server.should_exit = True
        thread.join(30)
    return {"preset": preset, "model": model, "max_tokens": max_tokens, **report}


def main(args) -> int:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if args.load:
        report = run_load(args.preset, args.model, args.clients, args.load, max_tokens=args.max_tokens, progress=log)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"{report['requests']} requests in {report['seconds']:.1f} s from {report['clients']} clients: "
                  f"{report['requests_per_s']:.2f}/s ({report['good_requests_per_s']:.2f}/s good), good p50 "
                  f"{report['p50_s']:.2f} s, p99 {report['p99_s']:.2f} s")
            for outcome, count in report["outcomes"].items():
                print(f"  {count:6d}  {outcome}")
            print(f"wrong answers: {len(report['wrong_answers'])}; memory {report['rss_mb_before']:.0f} → "
                  f"{report['rss_mb_after']:.0f} MB; clip cache {report['clip_cache']}; healthy after: "
                  f"{report['healthy_after']}")
        failed = report["wrong_answers"] or not report["healthy_after"] or any(
            "expected" in o or "failed" in o for o in report["outcomes"])
        return 1 if failed else 0
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
    parser.add_argument("--load", type=float, metavar="SECONDS",
                        help="instead: the load test, --clients clients for SECONDS with bad requests mixed in")


__all__ = ["run"]
