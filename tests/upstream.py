"""Loopback OpenAI-compatible upstream used by Barge's tests and benchmarks.

Per-request behaviour is driven by a top-level ``"x_mock"`` dict in the request
body (see ``UpstreamServer._handle`` and ``_behave``); server-wide behaviour by
``UpstreamConfig``. Hostile answers, for tests of what Barge does with them:

- ``raw_body``: str — answer exactly these bytes (UTF-8), with ``status`` (default 200);
- ``usage``: any — replaces the ``usage`` of the normal answer, verbatim;
- ``headers``: dict — extra headers on a ``status`` answer (e.g. ``x-ratelimit-*``);
- ``echo``: true — a 200 whose ``echo`` member is the request body, byte for byte;
- ``redirect``: URL — a ``redirect_status`` (default 302) pointing there;
- ``endless``: true — a 200 JSON-looking body that never ends (streamed, chunked; or
  with ``declared_length`` as its Content-Length); ends when the client goes away;
- ``gzip_bomb``: MiB — ``Content-Encoding: gzip`` of that many MiB of zeros, a few KB per
  GiB on the wire, with its (small) compressed Content-Length; streamed, never inflated;
- ``gzip``: true — the normal answer, gzip-encoded; ``chunked``: true — the normal
  answer sent chunked, without a Content-Length;
- ``gather``: n — hold the answer until n requests carrying ``gather: n`` are being
  served at once (at most 10 s), so that many are in flight together.

Embeddings (``UpstreamConfig.embedding_dims`` > 0) are deterministic: each input's
vector comes from a hash of its JSON text, as numbers with 29 decimals (more than a
double holds, so any re-encoding on the way shows), or base64 float32s with
``encoding_format: "base64"``; usage is additive (a string ``len // 4 + 1`` tokens, a
token list its length), so one call of many inputs costs what their calls would. An
input containing ``UpstreamConfig.reject_input`` makes the whole call a 400, as a
provider refuses an array with one bad input; ``short_when_many``: true answers a call of
several inputs with one embedding fewer. Stats count inputs per embeddings call.
Run standalone: ``python tests/upstream.py --port 0`` prints ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import gzip
import hashlib
import itertools
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

PATHS = ("chat/completions", "completions", "embeddings", "responses", "moderations")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error"}


def chat_body(content: str = "hi", **mock: Any) -> bytes:
    """A chat request's body for this upstream, asking for ``mock`` behaviour (x_mock)."""
    b: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": content}]}
    if mock:
        b["x_mock"] = mock
    return orjson.dumps(b)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class UpstreamConfig:
    max_concurrency: int | None = None  # open requests beyond this -> immediate 429
    retry_after: str | None = None  # Retry-After header on server-wide 429s/failures
    latency: float = 0.0  # seconds added to every served request
    capacity: int | None = None  # K serving slots; extra requests queue for a slot
    fail_all_status: int | None = None  # answer every request with this status
    record_bodies: bool = True  # hash raw bodies into stats.bodies (needed for keyless fail_times)
    embedding_dims: int = 0  # > 0: hash-derived embeddings of that size (module docstring)
    reject_input: str | None = None  # an embeddings input containing it: the call gets a 400


@dataclass
class UpstreamStats:
    total: int = 0  # requests received (all, including rejected)
    by_path: Counter[str] = field(default_factory=Counter)  # e.g. "/v1/embeddings"
    by_status: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0  # requests currently being served (holding a slot)
    max_in_flight: int = 0
    queued: int = 0  # requests waiting for a capacity slot
    max_queued: int = 0
    attempts: Counter[str] = field(default_factory=Counter)  # x_mock.key -> times received
    keys: list[str] = field(default_factory=list)  # x_mock.key values in arrival order
    bodies: Counter[str] = field(default_factory=Counter)  # sha256(raw body) hex -> times
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each request
    embedding_inputs: list[int] = field(default_factory=list)  # inputs of each embeddings call

    def reset(self) -> None:
        """Zero everything except the live in_flight/queued gauges."""
        fresh = UpstreamStats(in_flight=self.in_flight, queued=self.queued)
        self.__dict__.update(fresh.__dict__)


@functools.lru_cache(maxsize=4)
def gzip_bomb(mib: int) -> bytes:
    """A valid gzip stream of ``mib`` MiB of zeros, built without compressing them all:
    after a full flush the compressor's output for the same input repeats, so one
    block is repeated, then the final empty block and the trailer (CRC-32, size) close it.
    About 1 KiB per MiB. Cached: call it once beforehand to keep it off a serving loop."""
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    head = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    trailer = b"\x03\x00" + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)
    return b"".join([head, block * (mib - 1), trailer])


ENDLESS_CHUNK = b"a" * 65536


async def _cancel_the_rest() -> None:
    """Cancel every other task of the running loop and wait for them to end."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _error_body(status: int, message: str) -> bytes:
    err_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = "rate_limit_exceeded" if status == 429 else None
    err = {"message": message, "type": err_type, "param": None, "code": code}
    return orjson.dumps({"error": err})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def _embedding_inputs(inp: Any) -> list[Any]:
    """An embeddings ``input`` as its inputs: a string, a token list, or a list of them."""
    if isinstance(inp, list) and inp and all(type(x) is int for x in inp):
        return [inp]
    return list(inp) if isinstance(inp, list) else [inp]


def _embedding_text(inp: Any, dims: int) -> list[str]:
    """``dims`` numbers for one input, as JSON texts of 29 decimals, from its hash."""
    digest = hashlib.shake_256(orjson.dumps(inp)).digest(13 * dims)
    out = []
    for k in range(dims):
        chunk = digest[13 * k: 13 * k + 13]
        digits = int.from_bytes(chunk[:12], "big") % 10**29
        sign = "-" if chunk[12] & 1 else ""
        out.append(f"{sign}0.{digits:029d}")
    return out


def hash_embeddings(body: dict[str, Any], dims: int) -> dict[str, Any]:
    """The deterministic answer (module docstring) for an embeddings ``body``."""
    inputs = _embedding_inputs(body.get("input"))
    data = []
    for i, inp in enumerate(inputs):
        texts = _embedding_text(inp, dims)
        value: Any
        if body.get("encoding_format") == "base64":
            value = base64.b64encode(struct.pack(f"<{dims}f", *map(float, texts))).decode()
        else:
            value = orjson.Fragment(("[" + ",".join(texts) + "]").encode())
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(len(x) if isinstance(x, list) else _tokens(str(x)) for x in inputs)
    return {"object": "list", "data": data, "model": body.get("model", "mock-model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _success_body(
    path: str, body: dict[str, Any], mock: dict[str, Any], rid: int
) -> dict[str, Any]:
    model = body.get("model", "mock-model")
    now = int(time.time())
    if path == "chat/completions":
        msgs = body.get("messages") or [{}]
        last = msgs[-1] if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) else {}
        prompt = _text_of(last.get("content"))
        text = mock.get("text", f"echo: {prompt}")
        pt, ct = _tokens(prompt), _tokens(text)
        return {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": now,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}
    if path == "completions":
        prompt = _text_of(body.get("prompt"))
        text = mock.get("text", f"echo: {prompt}")
        pt, ct = _tokens(prompt), _tokens(text)
        return {"id": f"cmpl-{rid}", "object": "text_completion", "created": now, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}
    if path == "embeddings":
        inp = body.get("input")
        n = len(inp) if isinstance(inp, list) and inp and isinstance(inp[0], (str, list)) else 1
        pt = _tokens(str(inp))
        return {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                         for i in range(n)],
                "usage": {"prompt_tokens": pt, "total_tokens": pt}}
    if path == "responses":
        prompt = _text_of(body.get("input"))
        text = mock.get("text", f"echo: {prompt}")
        it, ot = _tokens(prompt), _tokens(text)
        return {"id": f"resp_{rid}", "object": "response", "created_at": now, "status": "completed",
                "model": model,
                "output": [{"type": "message", "id": f"msg_{rid}", "status": "completed",
                            "role": "assistant",
                            "content": [{"type": "output_text", "text": text,
                                         "annotations": []}]}],
                "usage": {"input_tokens": it, "output_tokens": ot, "total_tokens": it + ot}}
    # moderations
    return {"id": f"modr-{rid}", "model": body.get("model", "omni-moderation-latest"),
            "results": [{"flagged": False, "categories": {}, "category_scores": {}}]}


class UpstreamServer:
    """Mock upstream: ``async with UpstreamServer(cfg) as up`` or
    ``with UpstreamServer.in_thread(cfg) as up``; then use ``up.base_url``, ``up.stats``."""

    def __init__(self, config: UpstreamConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                 shutdown_timeout: float = 1.0) -> None:
        self.config = config or UpstreamConfig()
        self.stats = UpstreamStats()
        self.host, self.port = host, port
        self.shutdown_timeout = shutdown_timeout
        self._ids = itertools.count(1)
        self._slots: tuple[int, asyncio.Semaphore] | None = None
        self._gathering: Counter[int] = Counter()
        self._gathered: dict[int, asyncio.Event] = {}
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set when running in a thread
        self.app = self._make_app()

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/{endpoint:.+}", self._handle)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/stats/reset", self._reset_stats)
        return app

    async def _stats(self, _: web.Request) -> web.Response:
        """What a benchmark in another process reads: counts and peak concurrency."""
        st = self.stats
        return web.json_response({"total": st.total, "in_flight": st.in_flight,
                                  "max_in_flight": st.max_in_flight,
                                  "by_status": {str(k): v for k, v in st.by_status.items()},
                                  "by_path": dict(st.by_path),
                                  "embedding_calls": len(st.embedding_inputs),
                                  "embedding_inputs": sum(st.embedding_inputs),
                                  "max_embedding_inputs": max(st.embedding_inputs, default=0)})

    async def _reset_stats(self, _: web.Request) -> web.Response:
        self.stats.reset()
        return web.json_response({})

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind (re-binding the same port after a ``stop()``, to model an upstream coming back)."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                               shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port, backlog=4096).start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening (models the upstream being down); ``start()`` brings it back."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            self.app = self._make_app()  # an app cannot be set up twice; fresh one for restart

    async def __aenter__(self) -> UpstreamServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_blocking(self) -> None:
        """``start()`` from another thread (in_thread mode only)."""
        assert self._loop is not None, "only valid for in_thread() servers"
        asyncio.run_coroutine_threadsafe(self.start(), self._loop).result(10)

    def stop_blocking(self) -> None:
        """``stop()`` from another thread (in_thread mode only)."""
        assert self._loop is not None, "only valid for in_thread() servers"
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(10)

    @classmethod
    @contextlib.contextmanager
    def in_thread(
        cls, config: UpstreamConfig | None = None, **kwargs: Any
    ) -> Iterator[UpstreamServer]:
        server = cls(config, **kwargs)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="upstream-mock", daemon=True)
        thread.start()
        server._loop = loop
        try:
            server.start_blocking()
            yield server
        finally:
            try:
                asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
                # Handlers still sleeping for a client that left (a cut-off request).
                asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop).result(10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(5)
                if not thread.is_alive():
                    loop.close()

    # ---- request handling ------------------------------------------------------------------
    def _respond(self, status: int, body: bytes, rid: int, content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> web.Response:
        self.stats.by_status[status] += 1
        hdrs = {"x-request-id": f"req_{rid}"}
        if headers:
            hdrs.update(headers)
        return web.Response(status=status, body=body, content_type=content_type, headers=hdrs)

    def _capacity_sem(self, k: int) -> asyncio.Semaphore:
        if self._slots is None or self._slots[0] != k:
            self._slots = (k, asyncio.Semaphore(k))  # capacity changed at runtime: new slot pool
        return self._slots[1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        raw = await request.read()
        rid = next(self._ids)
        st, cfg = self.stats, self.config
        st.total += 1
        st.arrivals.append(time.monotonic())
        st.by_path[request.path] += 1
        digest = ""
        if cfg.record_bodies:
            digest = hashlib.sha256(raw).hexdigest()
            st.bodies[digest] += 1
        if endpoint not in PATHS:
            return self._respond(404, _error_body(404, f"Unknown endpoint /v1/{endpoint}"), rid)
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as e:
            return self._respond(400, _error_body(400, f"Invalid JSON body: {e}"), rid)
        mock = body.get("x_mock")
        mock = mock if isinstance(mock, dict) else {}
        key = mock.get("key")
        if key is not None:
            key = str(key)
            st.keys.append(key)
            st.attempts[key] += 1
            attempt = st.attempts[key]
        else:
            attempt = st.bodies[digest] if digest else 1

        ra = {"Retry-After": cfg.retry_after} if cfg.retry_after else {}
        if cfg.fail_all_status is not None:
            err = _error_body(cfg.fail_all_status, "Upstream failing")
            return self._respond(cfg.fail_all_status, err, rid, headers=ra)
        if cfg.max_concurrency is not None and st.in_flight + st.queued >= cfg.max_concurrency:
            err = _error_body(429, "Rate limit reached: too many concurrent requests")
            return self._respond(429, err, rid, headers=ra)
        sem: asyncio.Semaphore | None = None
        if cfg.capacity is not None:
            sem = self._capacity_sem(cfg.capacity)
            st.queued += 1
            st.max_queued = max(st.max_queued, st.queued)
            try:
                await sem.acquire()
            finally:
                st.queued -= 1
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            wait = cfg.latency + float(mock.get("delay", 0))
            if wait > 0:
                await asyncio.sleep(wait)
            if mock.get("gather"):
                await self._gather(int(mock["gather"]))
            return await self._behave(request, endpoint, body, mock, attempt, rid, raw)
        finally:
            st.in_flight -= 1
            if sem is not None:
                sem.release()

    async def _behave(self, request: web.Request, endpoint: str, body: dict[str, Any],
                      mock: dict[str, Any], attempt: int, rid: int,
                      raw: bytes = b"") -> web.StreamResponse:
        hostile = await self._hostile(request, mock, rid, raw)
        if hostile is not None:
            return hostile
        status = mock.get("status")
        fail_times = mock.get("fail_times")
        if status is not None and (fail_times is None or attempt <= int(fail_times)):
            headers = {}
            if mock.get("retry_after") is not None:
                headers["Retry-After"] = str(mock["retry_after"])
            if mock.get("retry_after_ms") is not None:
                headers["retry-after-ms"] = str(mock["retry_after_ms"])
            if isinstance(mock.get("headers"), dict):
                headers.update({str(k): str(v) for k, v in mock["headers"].items()})
            msg = mock.get("message", f"Mock failure (attempt {attempt})")
            return self._respond(int(status), _error_body(int(status), msg), rid, headers=headers)
        if mock.get("garbage"):
            return self._respond(200, b"<html>oops", rid, content_type="text/html")
        if mock.get("empty"):
            return self._respond(200, b"", rid)
        if endpoint == "embeddings":
            inputs = _embedding_inputs(body.get("input"))
            self.stats.embedding_inputs.append(len(inputs))
            marker = self.config.reject_input
            if marker is not None and any(isinstance(x, str) and marker in x for x in inputs):
                return self._respond(400, _error_body(400, "An input is invalid"), rid)
        if endpoint == "embeddings" and self.config.embedding_dims > 0:
            payload = hash_embeddings(body, self.config.embedding_dims)
            if mock.get("short_when_many") and len(payload["data"]) > 1:
                payload["data"].pop()  # one embedding fewer than inputs
        else:
            payload = _success_body(endpoint, body, mock, rid)
        if "usage" in mock:
            payload["usage"] = mock["usage"]
        if mock.get("huge_bytes"):
            pad = int(mock["huge_bytes"]) - len(orjson.dumps(payload)) - 16
            payload["x_padding"] = "x" * max(pad, 0)
        data = orjson.dumps(payload)
        if mock.get("gzip"):
            return self._respond(200, gzip.compress(data), rid,
                                 headers={"Content-Encoding": "gzip"})
        if mock.get("chunked"):
            return await self._pour(request, rid, itertools.repeat(data, 1))
        if mock.get("close_mid_body") or mock.get("slow_body"):
            return await self._stream(request, data, rid, bool(mock.get("close_mid_body")),
                                      float(mock.get("slow_body") or 0))
        return self._respond(200, data, rid)

    async def _gather(self, n: int, timeout: float = 10.0) -> None:
        self._gathering[n] += 1
        event = self._gathered.setdefault(n, asyncio.Event())
        if self._gathering[n] >= n:
            event.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _hostile(self, request: web.Request, mock: dict[str, Any], rid: int,
                       raw: bytes) -> web.StreamResponse | None:
        """The misbehaving answers (module docstring), or None for the others."""
        if mock.get("redirect"):
            status = int(mock.get("redirect_status", 302))
            return self._respond(status, b"", rid, headers={"Location": str(mock["redirect"])})
        if mock.get("echo"):
            return self._respond(200, b'{"id": "echo", "object": "chat.completion", "echo": '
                                 + raw + b"}", rid)
        if "raw_body" in mock:
            status = int(mock.get("status", 200))
            return self._respond(status, str(mock["raw_body"]).encode(), rid)
        if mock.get("endless"):
            pieces = itertools.chain([b'{"id": "endless", "x": "'], itertools.repeat(ENDLESS_CHUNK))
            length = mock.get("declared_length")
            return await self._pour(request, rid, pieces, int(length) if length else None)
        if mock.get("gzip_bomb"):
            data = gzip_bomb(int(mock["gzip_bomb"]))
            step = 16384
            pieces = (data[i: i + step] for i in range(0, len(data), step))
            return await self._pour(request, rid, pieces, len(data), {"Content-Encoding": "gzip"})
        return None

    async def _pour(self, request: web.Request, rid: int, pieces: Iterator[bytes],
                    length: int | None = None,
                    headers: dict[str, str] | None = None) -> web.StreamResponse:
        """A 200 streamed piece by piece (chunked when ``length`` is None), never held
        whole; stops quietly when the client hangs up."""
        resp = web.StreamResponse(status=200, headers={"x-request-id": f"req_{rid}",
                                                       "Content-Type": "application/json",
                                                       **(headers or {})})
        if length is not None:
            resp.content_length = length
        else:
            resp.enable_chunked_encoding()
        self.stats.by_status[200] += 1
        await resp.prepare(request)
        try:
            for piece in pieces:
                await resp.write(piece)
            await resp.write_eof()
        except ConnectionError:  # the client stopped reading and closed: what we wanted
            pass
        return resp

    async def _stream(self, request: web.Request, data: bytes, rid: int, truncate: bool,
                      duration: float) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"x-request-id": f"req_{rid}",
                                                       "Content-Type": "application/json"})
        resp.content_length = len(data) + (len(data) + 100 if truncate else 0)
        self.stats.by_status[200] += 1
        await resp.prepare(request)
        if truncate:
            await resp.write(data[: max(1, len(data) // 2)])
            if request.transport is not None:
                request.transport.close()  # flushes what was written, then drops the connection
            return resp  # aiohttp's write_eof then hits the closed transport and gives up quietly
        chunks = 10
        step = max(1, -(-len(data) // chunks))
        for i in range(0, len(data), step):
            await asyncio.sleep(duration / chunks)
            await resp.write(data[i: i + step])
        await resp.write_eof()
        return resp


async def _serve_forever(server: UpstreamServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"LISTENING {server.port}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Mock OpenAI-compatible upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--capacity", type=int, default=None)
    p.add_argument("--retry-after", default=None)
    p.add_argument("--fail-all-status", type=int, default=None)
    p.add_argument("--no-record-bodies", action="store_true", help="skip sha256 body accounting")
    p.add_argument("--embedding-dims", type=int, default=0)
    p.add_argument("--reject-input", default=None)
    a = p.parse_args(argv)
    cfg = UpstreamConfig(max_concurrency=a.max_concurrency, retry_after=a.retry_after,
                         latency=a.latency, capacity=a.capacity, fail_all_status=a.fail_all_status,
                         record_bodies=not a.no_record_bodies,
                         embedding_dims=a.embedding_dims, reject_input=a.reject_input)
    server = UpstreamServer(cfg, host=a.host, port=a.port)
    try:
        import uvloop  # faster loop for benchmarks when available
    except ImportError:
        asyncio.run(_serve_forever(server))
    else:
        uvloop.run(_serve_forever(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
