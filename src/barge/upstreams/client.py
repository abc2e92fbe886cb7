"""Sends one request to the upstream, once. Retry decisions live in ``engine.retry``."""

from __future__ import annotations

import io
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from barge.exceptions import UpstreamError

LARGE_BODY = 1 << 20  # bytes


class UpstreamTimeout(UpstreamError):
    """No full answer arrived within the per-request timeout."""


class UpstreamConnectionError(UpstreamError):
    """The connection was refused, reset, or closed before the answer was whole."""


class UpstreamUnreachable(UpstreamConnectionError):
    """No connection could be made at all: the upstream is down or not there yet."""


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
    """One pooled aiohttp session for one upstream base URL."""

    def __init__(
        self, base_url: str, *, api_key: str | None, timeout: float, max_connections: int
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    async def open(self) -> None:
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
        UpstreamConnectionError when no whole answer came back."""
        session = self._session
        if session is None:
            raise UpstreamConnectionError("The upstream client is closed.")
        url = self._urls.get(endpoint)
        if url is None:  # parsed once per endpoint, not once per request
            url = self._urls[endpoint] = URL(join_url(self.base_url, endpoint))
        try:
            # Large bodies go as a stream so aiohttp never writes them in one blocking call.
            payload = io.BytesIO(body) if len(body) > LARGE_BODY else body
            async with session.post(url, data=payload) as resp:
                data = await resp.read()
                return Reply(resp.status, resp.headers, data)
        except TimeoutError as e:
            raise UpstreamTimeout(f"The upstream did not answer within {self._timeout.total}s.")\
                from e
        except aiohttp.ClientConnectorError as e:
            raise UpstreamUnreachable(f"The upstream is unreachable: {e}") from e
        except aiohttp.ClientError as e:
            raise UpstreamConnectionError(f"Upstream connection failed: {type(e).__name__}: {e}")\
                from e
