"""A loopback proxy in front of the S3 server that misbehaves on purpose: for a while it
answers every request 503 SlowDown (as S3 does under load), or it slows every request
down. Runs in a thread of the test process; ``url`` goes in ``AWS_ENDPOINT_URL``."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections import Counter

import aiohttp
from aiohttp import web

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
_HOP = {"host", "content-length", "transfer-encoding", "connection"}


class S3FaultProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = 0
        self.fail_until = 0.0  # monotonic: answer 503 until then
        self.delay = 0.0  # seconds added to every request
        self.stats: Counter[str] = Counter()
        self.parts_in_flight = 0  # multipart uploads' parts being sent now
        self.most_parts_in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="s3-proxy")
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_for(self, seconds: float) -> None:
        self.fail_until = time.monotonic() + seconds

    def start(self) -> S3FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        if request.method != "PUT" or "partNumber" not in request.query:
            return await self._answer(request)
        self.parts_in_flight += 1
        self.most_parts_in_flight = max(self.most_parts_in_flight, self.parts_in_flight)
        try:
            return await self._answer(request)
        finally:
            self.parts_in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        if time.monotonic() < self.fail_until:
            self.stats["503"] += 1
            await request.read()
            return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
        return await self._forward(request)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method, self.target + request.rel_url.raw_path_qs, headers=headers,
            data=io.BytesIO(body) if len(body) > 1 << 20 else body, allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD":  # no body, but the object's length
                out["Content-Length"] = upstream.headers.get("Content-Length", "0")
                head = web.StreamResponse(status=upstream.status, headers=out)
                await head.prepare(request)
                return head
            return web.Response(status=upstream.status, body=data, headers=out)
