"""`pal serve`: a trained model behind OpenAI's chat-completions API (FastAPI on uvicorn).

    POST /v1/chat/completions   OpenAI's chat format with `input_audio` parts (serving/requests.py); `stream: true`
                                answers as server-sent events in OpenAI's chunk format
    GET  /v1/models             the one model this server holds
    GET  /health                liveness and readiness, with the clip cache's figures
    GET  /                      a web page: pick or record a clip, see its waveform, ask, read the streamed answer,
                                ask follow-ups (static/index.html: plain HTML and JavaScript, nothing fetched elsewhere)

One generation runs at a time, in a worker thread, so the event loop keeps taking requests; non-streaming requests
that arrive together are answered in one batch, each with the answer it gets alone (serving/batching.py). A clip the
server has seen (same bytes) skips the encoders and its audio keys/values (serving/clip_cache.py). Greedy decoding
when `temperature` is 0 (the default), sampling otherwise, seeded by `seed`.

Safe by default: it binds 127.0.0.1; another address needs an API key (Bearer, compared in constant time), checked on
every /v1 route. A request's cost is bounded before work starts: the body is read only up to `max_request_mb` (a
chunked upload is cut off there), clips over `max_audio_seconds`, stop strings and prompts over `RequestLimits` are
refused, URLs are never fetched. Every error a client can cause is a 4xx in OpenAI's error shape; a client never sees
a traceback (anything unexpected answers 500 with a short message and goes to the log).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from pal.clips import clip_rows_for
from pal.encoders.audio import AudioError
from pal.inference.audio_llm import AudioLLM, Decoding

from .batching import Batcher, stack_features
from .clip_cache import ClipCache, cached_clip, prepared_cache
from .requests import ChatRequest, RequestError, RequestLimits, parse_chat_request

LOG = logging.getLogger("pal.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PAGE = Path(__file__).with_name("static") / "index.html"  # the web page at /


@dataclass
class ServeSettings:
    model_id: str = "pal"
    api_key: str | None = None
    max_request_mb: float = 25.0  # a 10-minute 16 kHz 16-bit WAV is about 19 MB, 25 MB of base64 JSON
    max_audio_seconds: float = 600.0  # the longest clip accepted (the encoders encode every window of it)
    cache_clips: int = 64  # clips kept with their encoder outputs and audio keys/values
    max_batch: int = 8  # requests answered together at most (serving/batching.py); 1: one at a time
    batch_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    limits: RequestLimits = RequestLimits()  # stop strings, prompt text, messages (serving/requests.py)


def check_binding(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if host not in LOOPBACK and not api_key:
        raise ValueError(f"--host {host} would accept requests from other machines: give --api-key KEY (clients "
                         "send it as `Authorization: Bearer KEY`), or keep the default 127.0.0.1.")


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def read_body(request: Request, limit_mb: float) -> bytes:
    """The request body, read as it arrives and cut off past `limit_mb` (413): a chunked upload without a
    Content-Length is never buffered whole before it is refused."""
    limit, size, chunks = limit_mb * 2**20, 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request is over the {limit_mb:g} MB limit: send a shorter clip.", status=413,
                               code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


class ChatService:
    """The model, its clip cache and the one generation lock: what the routes call."""

    def __init__(self, llm: AudioLLM, settings: ServeSettings):
        self.llm, self.settings = llm, settings
        self.clips = ClipCache(settings.cache_clips)
        self.generation = threading.Lock()
        self.started = time.time()
        self.max_positions = getattr(llm.model.config.text_config, "max_position_embeddings", None)

    def decoding(self, request: ChatRequest) -> Decoding:
        return Decoding(max_new_tokens=request.max_tokens, do_sample=request.temperature > 0,
                        temperature=request.temperature or 1.0, top_p=request.top_p, seed=request.seed,
                        stop=tuple(request.stop))

    def prepare(self, request: ChatRequest):
        """The request checked against this server (its model, its length with the audio) and its clips, each from
        the cache or encoded now → (features or None, with one row per clip; a prepared PALCache or None)."""
        if request.model != self.settings.model_id:
            raise RequestError(f"model = {request.model!r}: this server holds {self.settings.model_id!r} "
                               "(GET /v1/models).", "model", status=404, code="model_not_found")
        if not request.audios:
            self.check_length(request, None)
            return None, None

        def encoder(data: bytes, kind: str, number: int):
            def encode():
                name = f"the {kind} audio" + (f" of clip {number}" if len(request.audios) > 1 else "")
                try:
                    loaded = self.llm.processor.load_audio(data, max_seconds=self.settings.max_audio_seconds,
                                                           name=name, setting="pal serve --max-audio-seconds")
                except AudioError as err:
                    raise RequestError(f"{err} Send a {kind} file's bytes in base64.", "messages",
                                       code="invalid_audio") from None
                return cached_clip(self.llm.features([loaded]))
            return encode

        with self.generation:
            clips = [self.clips.get_or_make(data, encoder(data, kind, k + 1))[0]
                     for k, (data, kind) in enumerate(request.audios)]
            # one clip: its audio keys/values are the clip's own, kept for the next question about it
            cache = prepared_cache(self.llm.model, clips[0]) if len(clips) == 1 else None
        if cache is not None:
            self.check_length(request, clips[0].features)
            return clips[0].features, cache
        features = stack_features([c.features for c in clips], self.llm.model.config.encoder_dims)
        self.check_length(request, features)
        return features, None  # several clips: their keys/values are the question's own (tags, positions)

    def check_length(self, request: ChatRequest, features) -> None:
        if self.max_positions is None:
            return
        prompt = self.llm.processor([request.messages], features, clip_rows=clip_rows_for([features]))[
            "input_ids"].shape[1]
        if prompt + request.max_tokens > self.max_positions:
            raise RequestError(f"the prompt is {prompt} tokens (audio included) and max_tokens asks "
                               f"{request.max_tokens} more, over the model's {self.max_positions}: shorten the "
                               "conversation or lower max_tokens.", "messages", code="context_length_exceeded")

    def complete(self, request: ChatRequest, streamer=None, cancel: threading.Event | None = None,
                 prepared: tuple | None = None) -> dict:
        """Generate (blocking; one at a time) → {"text", "prompt_tokens", "completion_tokens", "finish_reason"}.
        `prepared`: what `prepare` returned for this request, when the caller already asked it."""
        features, cache = prepared or self.prepare(request)
        decoding = self.decoding(request)
        with self.generation:
            text, prompt, generated = self.llm.chat(request.messages, features, decoding, cache=cache,
                                                    streamer=streamer, cancel=cancel)
        return {"text": text, "prompt_tokens": prompt, "completion_tokens": generated,
                "finish_reason": "stop" if generated < request.max_tokens else "length"}


def _chunk(request_id: str, created: int, model: str, delta: dict, finish: str | None = None, usage=None) -> str:
    body = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def _usage(result: dict) -> dict:
    return {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
            "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}


def create_app(llm: AudioLLM, settings: ServeSettings | None = None):
    """The FastAPI application serving `llm`."""
    settings = settings or ServeSettings()
    service = ChatService(llm, settings)
    app = FastAPI(title="PAL audio LLM", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.batcher = batcher = Batcher(service, settings.max_batch, settings.batch_wait_ms)

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, err: RequestError):
        return error_response(err)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException):  # 404, 405: OpenAI's error shape too
        body = {"error": {"message": str(err.detail), "type": "invalid_request_error", "param": None, "code": None}}
        return JSONResponse(body, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, _err: Exception):  # never a traceback to the client
        LOG.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": {"message": "internal server error; the server log has the details.",
                                       "type": "server_error", "param": None, "code": None}}, status_code=500)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            if request.url.path.startswith("/v1/") and settings.api_key:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
                    raise RequestError("missing or wrong API key: send `Authorization: Bearer KEY`.", status=401,
                                       code="invalid_api_key")
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > settings.max_request_mb * 2**20:
                raise RequestError(f"the request is {int(size) / 2**20:.1f} MB, over the "
                                   f"{settings.max_request_mb:g} MB limit: send a shorter clip.", status=413,
                                   code="request_too_large")
        except RequestError as err:
            return error_response(err)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        sizes = list(batcher.batches)
        return {"status": "ok", "model": settings.model_id, "uptime_s": round(time.time() - service.started, 1),
                "clip_cache": service.clips.stats(),
                "batches": {"run": len(sizes), "requests": sum(sizes), "largest": max(sizes, default=0)}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_id, "object": "model",
                                            "created": int(service.started), "owned_by": "pal"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        chat = parse_chat_request(await read_body(request, settings.max_request_mb), limits=settings.limits)
        request_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not chat.stream:
            prepared = await asyncio.to_thread(service.prepare, chat)
            result = await asyncio.wrap_future(batcher.submit(chat, prepared))
            return {"id": request_id, "object": "chat.completion", "created": created, "model": settings.model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                                 "finish_reason": result["finish_reason"]}],
                    "usage": _usage(result)}
        # Streaming: errors in the request surface before the first byte, as a plain error response.
        prepared = await asyncio.to_thread(service.prepare, chat)
        return StreamingResponse(_stream(service, chat, request_id, created, prepared),
                                 media_type="text/event-stream")

    return app


async def _stream(service: ChatService, chat: ChatRequest, request_id: str, created: int, prepared: tuple):
    """Server-sent events: a role chunk, the text as it is generated (never past a stop string), the finish reason,
    the usage when asked (`stream_options.include_usage`), then `[DONE]`. A client that goes away cancels the
    generation at its next token."""
    from transformers import TextIteratorStreamer

    model = service.settings.model_id
    streamer = TextIteratorStreamer(service.llm.processor.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                    timeout=600)
    cancel, outcome = threading.Event(), {}

    def work():
        try:
            outcome["result"] = service.complete(chat, streamer=streamer, cancel=cancel, prepared=prepared)
        except Exception as err:  # reported to the client as a stream error below
            LOG.exception("generation failed")
            outcome["error"] = err
            streamer.end()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    hold = max((len(s) for s in chat.stop), default=1) - 1  # characters that may be the start of a stop string
    sent, buffer = "", ""
    try:
        yield _chunk(request_id, created, model, {"role": "assistant", "content": ""})
        pieces = iter(streamer)
        while True:
            piece = await asyncio.to_thread(next, pieces, None)
            if piece is None:
                break
            buffer += piece
            cut = min((buffer.index(s) for s in chat.stop if s in buffer), default=None)
            ready = buffer[:cut] if cut is not None else buffer[: len(buffer) - hold]
            ready = ready.lstrip() if not sent else ready
            if ready:
                sent += ready
                yield _chunk(request_id, created, model, {"content": ready})
            buffer = "" if cut is not None else buffer[len(buffer) - hold:] if hold else ""
            if cut is not None:
                cancel.set()
                break
        await asyncio.to_thread(worker.join)
        if "error" in outcome:
            failure = {"error": {"message": "generation failed; the server log has the details.",
                                 "type": "server_error"}}
            yield f"data: {json.dumps(failure)}\n\n"
            yield "data: [DONE]\n\n"  # the stream still ends as a stream does, for the client's reader
            return
        result = outcome["result"]
        tail = result["text"][len(sent):] if result["text"].startswith(sent) else ""
        if tail:
            yield _chunk(request_id, created, model, {"content": tail})
        yield _chunk(request_id, created, model, {}, finish=result["finish_reason"])
        if chat.include_usage:
            yield _chunk(request_id, created, model, {}, usage=_usage(result))
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()  # the client left (or we are done): the worker stops at its next token


def start_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
    """Run `app` on uvicorn in a daemon thread (tests, benchmarks) → (server, thread, base URL); port 0 picks a free
    one. Stop it with `server.should_exit = True; thread.join()`."""
    import socket

    import uvicorn

    if not port:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="pal-serve")
    thread.start()
    deadline = time.time() + timeout
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    return server, thread, f"http://{host}:{port}"


def check_port_free(host: str, port: int) -> None:
    """Raise an error naming the port if another program listens on it."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no owner
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ValueError(f"--port {port} on {host} is taken ({err.strerror}): stop what listens there or choose "
                             "another --port.") from None


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          model_id: str | None = None, max_audio_seconds: float = 600.0, cache_clips: int = 64,
          max_request_mb: float = 25.0, max_batch: int = 8, batch_wait_ms: float = 10.0,
          limits: RequestLimits | None = None) -> None:
    """Load the model folder and serve it until interrupted."""
    import uvicorn

    check_binding(host, api_key)
    check_port_free(host, port)  # before the model loads, not after
    folder = Path(folder)
    llm = AudioLLM.from_pretrained(folder)
    name = model_id or (folder.resolve().parent.name if folder.name == "final" else folder.name)
    settings = ServeSettings(model_id=name, api_key=api_key, max_audio_seconds=max_audio_seconds,
                             cache_clips=cache_clips, max_request_mb=max_request_mb, max_batch=max_batch,
                             batch_wait_ms=batch_wait_ms, limits=limits or RequestLimits())
    uvicorn.run(create_app(llm, settings), host=host, port=port, log_level="info")


__all__ = ["ChatService", "ServeSettings", "check_binding", "check_port_free", "create_app", "serve",
           "start_in_thread"]
