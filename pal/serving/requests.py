"""OpenAI chat-completions requests, read and checked: what `pal serve` accepts, and the error it answers otherwise.

Accepted (OpenAI's chat format, the audio parts as their `input_audio`):
    {"model": "...", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What do you hear?"},
        {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}]}, ...],
     "max_tokens": 64, "temperature": 0, "top_p": 1, "seed": 0, "stop": ["\n"], "stream": false}
Each `input_audio` part is one clip; a conversation may hold several (a question about two clips: "which of them
has a dog?"), in any user turns, and the prompt is built as in training: one `<audio>` per clip in front of its turn's
text, in the order of the parts (pal/clips.py). `audio_url` parts, and URLs of any kind, are refused: the server
never reads its own files or the network on a client's behalf.

Every problem is a `RequestError` carrying OpenAI's error object and a 4xx status that names the field and what is
expected (`"messages[0].content[1].input_audio.data"`). What one request may cost is bounded before any work starts
(`RequestLimits`; docs/serving.md lists the limits and why each is where it is).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field

AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
ROLES = ("system", "user", "assistant")
MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask, checked before any work starts; `pal serve` options set them."""

    max_stop_chars: int = 64  # each stop string: generation's stop-string matcher is built per request, its cost
    #                           growing with the strings' length (docs/serving.md)
    max_stops: int = 4  # stop strings per request (OpenAI's limit)
    max_prompt_chars: int = 32_000  # all messages' text together, counted before anything tokenizes it
    max_messages: int = 256
    max_clips: int = 8  # input_audio parts per conversation (each one is encoded; LAL's lal_config.max_clips caps it)


class RequestError(ValueError):
    """A bad request: `status` (4xx) and OpenAI's error object (`body()`)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A checked request: the conversation (text only, with `<audio>` where each clip belongs) and the clips' bytes."""

    model: str
    messages: list[dict]  # [{"role", "content": str}], each audio's turn starting with "<audio>\n" per clip
    audios: list[tuple[bytes, str]] = field(default_factory=list)  # (bytes, format) of each clip, in order
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage


def _number(body: dict, key: str, kind: type, default, low=None, high=None):
    value = body.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and (isinstance(value, int) or (math.isfinite(value) and float(value).is_integer()))
    elif ok and not math.isfinite(value):
        raise RequestError(f"{key} = {value!r}: expected a finite number.", key)
    if not ok:
        raise RequestError(f"{key} = {value!r}: expected {'an integer' if kind is int else 'a number'}.", key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise RequestError(f"{key} = {value!r}: expected a value {bounds}.", key)
    return kind(value)


def _audio_part(part: dict, where: str) -> tuple[bytes, str]:
    audio = part.get("input_audio")
    if not isinstance(audio, dict):
        raise RequestError(f"{where}.input_audio: expected an object {{\"data\": base64, \"format\": "
                           f"one of {list(AUDIO_FORMATS)}}}.", f"{where}.input_audio")
    fmt = audio.get("format")
    if fmt not in AUDIO_FORMATS:
        raise RequestError(f"{where}.input_audio.format = {fmt!r}: expected one of {list(AUDIO_FORMATS)}.",
                           f"{where}.input_audio.format")
    data = audio.get("data")
    if not isinstance(data, str) or not data:
        raise RequestError(f"{where}.input_audio.data: expected the audio file's bytes in base64.",
                           f"{where}.input_audio.data")
    if data.startswith(("http://", "https://", "file:", "data:")):
        raise RequestError(f"{where}.input_audio.data is a URL: send the audio file's bytes in base64; this server "
                           "reads no URL.", f"{where}.input_audio.data")
    try:
        return base64.b64decode(data, validate=True), fmt
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}.input_audio.data is not valid base64.", f"{where}.input_audio.data") from None


def _content(message: dict, where: str) -> tuple[str, list[tuple[bytes, str]]]:
    """A message's text and its audio parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RequestError(f"{where}.content: expected a string or a list of content parts.", f"{where}.content")
    texts, audios = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise RequestError(f"{at}.text: expected a string.", f"{at}.text")
            texts.append(part["text"])
        elif kind == "input_audio":
            audios.append(_audio_part(part, at))
        elif kind in ("audio_url", "image_url", "file"):
            raise RequestError(f"{at}: {kind} parts are not accepted; send audio inline as an input_audio part "
                               "(base64). This server reads no URL or file path.", f"{at}.type")
        else:
            raise RequestError(f"{at}.type = {kind!r}: expected 'text' or 'input_audio'.", f"{at}.type")
    return "\n".join(texts), audios


def _not_json_number(name: str):
    raise RequestError(f"the request body holds {name}, which is not JSON: send a finite number.")


def parse_chat_request(raw: bytes, audio_placeholder: str = "<audio>",
                       limits: RequestLimits = RequestLimits()) -> ChatRequest:
    """The request body (JSON bytes) → a ChatRequest; RequestError for anything malformed or over `limits`."""
    try:
        body = json.loads(raw, parse_constant=_not_json_number)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON ({err}).") from None
    except RecursionError:
        raise RequestError("the request body is nested too deeply to be a chat request.") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model: expected the model's id (GET /v1/models lists it).", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list of {role, content} objects.", "messages")
    if len(messages) > limits.max_messages:
        raise RequestError(f"messages: {len(messages)} messages, over this server's {limits.max_messages}.",
                           "messages", code="context_length_exceeded")
    turns, audio = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(f"{where}.role: expected one of {list(ROLES)}.", f"{where}.role")
        text, audios = _content(message, where)
        if audio_placeholder in text:
            raise RequestError(f"{where}: the text holds {audio_placeholder!r}; send the audio as an input_audio part "
                               "instead.", f"{where}.content")
        if audios:
            if message["role"] != "user":
                raise RequestError(f"{where}: audio is only accepted in user messages.", f"{where}.content")
            if len(audio) + len(audios) > limits.max_clips:
                raise RequestError(f"{where}: clip {len(audio) + len(audios)} of the conversation, over this "
                                   f"server's {limits.max_clips} (`pal serve --max-clips`).", f"{where}.content")
            audio += audios
            text = f"{audio_placeholder}\n" * len(audios) + text
        turns.append({"role": message["role"], "content": text})
    if turns[-1]["role"] != "user":
        raise RequestError("messages: the last message must be the user's (the model answers it).", "messages")
    chars = sum(len(t["content"]) for t in turns)
    if chars > limits.max_prompt_chars:
        raise RequestError(f"messages: {chars} characters of text, over this server's {limits.max_prompt_chars}: "
                           "shorten the conversation.", "messages", code="context_length_exceeded")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > limits.max_stops
                             or not all(isinstance(s, str) and s for s in stop)):
        raise RequestError(f"stop: expected a string or a list of up to {limits.max_stops} non-empty strings.",
                           "stop")
    for i, text in enumerate(stop or []):
        if len(text) > limits.max_stop_chars:
            raise RequestError(f"stop[{i}] is {len(text)} characters long, over this server's "
                               f"{limits.max_stop_chars}.", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"stream = {stream!r}: expected true or false.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options: expected an object such as {\"include_usage\": true}.", "stream_options")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if body.get("top_p") == 0:
        raise RequestError("top_p = 0: expected a value in (0, 1] (1 keeps every token).", "top_p")
    if body.get("n") not in (None, 1):
        raise RequestError(f"n = {body.get('n')!r}: this server gives one choice per request (n = 1).", "n")
    return ChatRequest(
        model=model, messages=turns, audios=audio,
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", int, 64, low=1),
        temperature=_number(body, "temperature", float, 0.0, low=0, high=2),
        top_p=_number(body, "top_p", float, 1.0, low=0, high=1),
        seed=_number(body, "seed", int, 0, low=0, high=MAX_SEED),
        stop=stop or [], stream=stream, include_usage=bool(options.get("include_usage", False)))


__all__ = ["AUDIO_FORMATS", "ChatRequest", "RequestError", "RequestLimits", "parse_chat_request"]
