"""Requests that arrive together are answered together: a bounded wait, a bounded batch, the same answers.

The batcher takes the non-streaming requests. It waits up to `wait_ms` after the first one for more, up to
`max_batch`, and runs the greedy ones in one `generate` call: left-padded prompts, each row with its own clip's
encoder outputs (from the clip cache, so a clip is still encoded once), as many new tokens as the longest asks. Each
row is then cut to its own `max_tokens`, its end of text and its stop strings, so every answer is the one the request
gets alone: greedy decoding of a left-padded batch gives each row the tokens it gives alone (tests/test_serve.py
checks it over HTTP), and the first k greedy tokens do not depend on how many follow. Sampled requests, and a batch
of one, are answered one by one (`ChatService.complete`, which also reuses a cached clip's audio keys/values).

One batch runs at a time, under the service's generation lock, so streaming requests interleave between batches.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import torch

from pal.clips import clip_rows_for
from pal.encoders.outputs import pad_rows

from .requests import ChatRequest


def stack_features(rows: list[dict | None], dims: dict[str, int]) -> dict | None:
    """Per-request features ({name: (tokens [k, N_e, D_e], mask [k, N_e])}, k clips, or None for a text-only
    request) → one batch {name: (tokens [C, N_max, D_e], mask [C, N_max])}, every request's clips in order (a
    text-only request one row without a real token); `pal.clips.clip_rows_for` says whose each row is."""
    if all(r is None for r in rows):
        return None
    out = {}
    for name, dim in dims.items():
        sample = next(r[name][0] for r in rows if r is not None)
        tokens = []  # each clip's real tokens [n, D_e]
        for r in rows:
            if r is None:
                tokens.append(sample.new_zeros(0, dim))
            else:
                tokens += [t[m] for t, m in zip(*r[name])]
        padded, mask = pad_rows(tokens)
        if padded.shape[1] == 0:  # every row text-only on this encoder: one masked-out token keeps the shapes valid
            padded, mask = sample.new_zeros(len(tokens), 1, dim), torch.zeros(len(tokens), 1, dtype=torch.bool)
        out[name] = (padded, mask.to(padded.device))
    return out


class Batcher:
    def __init__(self, service, max_batch: int = 8, wait_ms: float = 10.0):
        if max_batch < 1 or wait_ms < 0:
            raise ValueError(f"max_batch = {max_batch}, wait_ms = {wait_ms}: expected max_batch >= 1, wait_ms >= 0.")
        self.service, self.max_batch, self.wait = service, max_batch, wait_ms / 1000
        self.queue: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # the size of every batch run (for /health and the benchmark)
        threading.Thread(target=self._run, daemon=True, name="pal-batcher").start()

    def submit(self, request: ChatRequest, prepared: tuple) -> Future:
        """Queue a checked request with what `ChatService.prepare` returned → a Future of `complete`'s result."""
        future: Future = Future()
        self.queue.put((request, prepared, future))
        return future

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self.batches.append(len(batch))
            greedy = [item for item in batch if item[0].temperature == 0]
            alone = [item for item in batch if item[0].temperature != 0]
            if len(greedy) == 1:
                alone, greedy = greedy + alone, []
            for request, prepared, future in alone:
                self._settle(future, lambda r=request, p=prepared: self.service.complete(r, prepared=p))
            if greedy:
                try:
                    results = self._together(greedy)
                except Exception as err:  # every waiting request learns of it
                    for _, _, future in greedy:
                        future.set_exception(err)
                else:
                    for (_, _, future), result in zip(greedy, results):
                        future.set_result(result)

    @staticmethod
    def _settle(future: Future, work) -> None:
        try:
            future.set_result(work())
        except Exception as err:
            future.set_exception(err)

    def _together(self, items: list) -> list[dict]:
        """Greedy requests in one generate call → each one's result, as `ChatService.complete` gives it alone."""
        from pal.inference.audio_llm import Decoding

        llm = self.service.llm
        requests = [request for request, _, _ in items]
        rows = [prepared[0] for _, prepared, _ in items]
        features = stack_features(rows, llm.model.config.encoder_dims)
        inputs = llm.processor([r.messages for r in requests], features, clip_rows=clip_rows_for(rows))
        longest = max(r.max_tokens for r in requests)
        with self.service.generation:
            new = llm.generate_ids(inputs, Decoding(max_new_tokens=longest))
        results = []
        for row, request in enumerate(requests):
            # each row as alone: its own max_tokens, end of text and stop strings
            ids = new[row, : request.max_tokens].tolist()
            text, generated = llm.read_answer(ids, Decoding(stop=tuple(request.stop)))
            results.append({"text": text, "prompt_tokens": int(inputs["attention_mask"][row].sum()),
                            "completion_tokens": generated,
                            "finish_reason": "stop" if generated < request.max_tokens else "length"})
        return results


__all__ = ["Batcher", "stack_features"]
