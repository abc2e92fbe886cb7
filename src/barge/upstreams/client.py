"""Sends one request to the upstream, once. Retry decisions live in ``engine.retry``."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import aiohttp
from aiohttp import hdrs
from multidict import CIMultiDictProxy
from yarl import URL

from barge.exceptions import UpstreamError

if TYPE_CHECKING:
    from barge.upstreams.senders import SenderPool

LARGE_BODY = 1 << 20  # bytes
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # one answer, after decompression


class UpstreamTimeout(UpstreamError):
    """No full answer arrived within the per-request timeout."""


class UpstreamConnectionError(UpstreamError):
    """The connection was refused, reset, or closed before the answer was whole."""


class SenderLost(UpstreamConnectionError):
    """The sender process making the request died or stopped answering before the answer
    came back (--dispatch-processes). Retried like a cut connection, but it says nothing
    about the upstream: no health or limit verdict comes of it."""


class UpstreamUnreachable(UpstreamConnectionError):
    """No connection could be made at all: the upstream is down or not there yet."""


class UpstreamResponseTooLarge(UpstreamError):
    """The answer's body, decompressed, grew past ``max_response_bytes``: reading stopped
    there and the connection was dropped. Final for the request, never retried."""

    def __init__(self, message: str, *, status: int, request_id: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def join_url(base: str, endpoint: str) -> str:
    """``http://h/v1`` + ``/v1/chat/completions`` → ``http://h/v1/chat/completions``."""
    suffix = endpoint[3:] if endpoint.startswith("/v1/") else endpoint
    return base.rstrip("/") + suffix


class UpstreamClient:
    """One pooled aiohttp session for one upstream base URL; or, given ``senders``, the
    same requests made by the sender processes (each with such a client of its own)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        max_connections: int,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        senders: SenderPool | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self._senders = senders
        self._sender_id = -1 if senders is None else senders.register({
            "base_url": base_url, "api_key": api_key, "timeout": timeout,
            "max_connections": max_connections, "max_response_bytes": max_response_bytes})

    async def open(self) -> None:
        if self._senders is None:
            self.open_session()

    def open_session(self) -> None:
        """The aiohttp session (in the running event loop) this client sends on."""
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=self._max_connections, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers=self._headers,
            auto_decompress=True,
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, endpoint: str, body: bytes) -> Reply:
        """POST ``body`` to the upstream's ``endpoint``; raises UpstreamTimeout or
        UpstreamConnectionError when no whole answer came back, UpstreamResponseTooLarge
        when the answer is over ``max_response_bytes``. Redirects are never followed: a
        3xx is an answer like any other (the upstream is one fixed host)."""
        if self._senders is not None:
            return await self._senders.send(self._sender_id, endpoint, body)
        session = self._session
        if session is None:
            raise UpstreamConnectionError("The upstream client is closed.")
        url = self._urls.get(endpoint)
        if url is None:  # parsed once per endpoint, not once per request
            url = self._urls[endpoint] = URL(join_url(self.base_url, endpoint))
        try:
            # Large bodies go as a stream so aiohttp never writes them in one blocking call.
            payload = io.BytesIO(body) if len(body) > LARGE_BODY else body
            async with session.post(url, data=payload, allow_redirects=False) as resp:
                data = await self._read(resp)
                return Reply(resp.status, resp.headers, data)
        except TimeoutError as e:
            raise UpstreamTimeout(f"The upstream did not answer within {self._timeout.total}s.")\
                from e
        except aiohttp.ClientConnectorError as e:
            raise UpstreamUnreachable(f"The upstream is unreachable: {e}") from e
        except aiohttp.ClientError as e:
            raise UpstreamConnectionError(f"Upstream connection failed: {type(e).__name__}: {e}")\
                from e

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body, decompressed, but never more than ``max_response_bytes`` of it
        in memory: past the cap reading stops and the connection is closed."""
        cap = self.max_response_bytes
        length = resp.content_length
        # Fast path: an unencoded body of known length is read exactly that far.
        if length is not None and hdrs.CONTENT_ENCODING not in resp.headers:
            if length > cap:
                self._too_large(resp)
            return await resp.read()
        # Unknown length (chunked, or until close) or compressed (the length is the wire
        # size, not what it inflates to): aiohttp inflates a bounded piece at a time as
        # the body is read, so counting the pieces bounds memory by the cap.
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                chunks.clear()
                self._too_large(resp)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, resp: aiohttp.ClientResponse) -> NoReturn:
        resp.close()  # drop the connection: the rest of the body is never read
        cap = self.max_response_bytes
        raise UpstreamResponseTooLarge(
            f"The upstream's answer (HTTP {resp.status}) is larger than the {cap} bytes "
            "allowed (--max-response-bytes).",
            status=resp.status,
            request_id=resp.headers.get("x-request-id"),
        )
