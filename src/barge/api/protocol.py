"""uvicorn's HTTP protocol with the connection limits it lacks.

- **Slow headers.** A connection gets ``--header-timeout`` seconds to send a request's
  line and headers, counted from its start, and on a kept-alive connection from the
  first byte of the next request (until then ``--keep-alive-timeout`` governs); then it
  is closed. This covers one that never sends a byte, and one that sends its headers a
  byte at a time.
- **Header size.** A request line and headers over ``--max-header-bytes`` get 431.
- **Open connections.** Past ``--max-connections``, a new connection closes the oldest
  connection that is waiting for a request (idle, or still sending headers); when every
  connection is busy with a request, the new one gets 503 and is closed at once. So
  idle connections can never lock fresh clients out, and file descriptors stay bounded.

A connection is *waiting* from its start, and from the end of each response, until the
next request's headers are complete; a request whose body is still arriving (even after
its answer, while uvicorn drains it) keeps it busy.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ClassVar

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from barge.api.middleware import new_http_request_id
from barge.settings import Settings

log = logging.getLogger("barge.api")

REPORT_EVERY = 10.0  # seconds between warnings about the connection limit
_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a request's headers (as h11 finds it)


class Limits:
    """Shared by one server's connections: the settings, the connections waiting for a
    request (oldest first), and what the limit has done."""

    def __init__(self, settings: Settings) -> None:
        self.max_connections = settings.max_connections
        self.max_header_bytes = settings.max_header_bytes
        self.header_timeout = settings.header_timeout
        self.waiting: OrderedDict[_Guard, None] = OrderedDict()
        self.closed_idle = 0
        self.refused = 0
        self._next_report = 0.0

    def close_oldest_waiting(self) -> bool:
        while self.waiting:
            conn, _ = self.waiting.popitem(last=False)
            conn._stop_waiting()
            if not conn.transport.is_closing():
                conn._close_idle()
                self.closed_idle += 1
                return True
        return False

    def report(self) -> None:
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + REPORT_EVERY
            log.warning(
                "over --max-connections (%d): %d idle connections closed and %d new ones "
                "refused so far", self.max_connections, self.closed_idle, self.refused,
            )


def _raw_response(status: int, phrase: str, message: str, code: str,
                  extra: tuple[str, ...] = ()) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = orjson.dumps({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}})
    head = [f"HTTP/1.1 {status} {phrase}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close",
            f"x-request-id: {new_http_request_id()}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


if TYPE_CHECKING:
    class _HTTPProtocol(asyncio.Protocol):
        """What ``_Guard`` extends of uvicorn's protocol classes (for the type checker)."""

        def on_response_complete(self) -> None: ...
else:
    _HTTPProtocol = object


class _Guard(_HTTPProtocol):
    """What the protocol classes below add to uvicorn's. Listed before uvicorn's class
    among the bases: its hooks wrap uvicorn's methods of the same names (``super()``)."""

    limits: ClassVar[Limits]
    # uvicorn's
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    server_state: ServerState
    # ours
    _waiting = False
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0  # received while waiting, up to the end of the headers
    _header_tail = b""  # the last bytes of those, for an end split between two reads

    def _awaiting_request(self) -> bool:
        """No request in progress: the next one's headers are still to come."""
        raise NotImplementedError

    def _close_idle(self) -> None:
        raise NotImplementedError

    def _guard_made(self) -> None:
        limits = self.limits
        if len(self.server_state.connections) > limits.max_connections:
            if not limits.close_oldest_waiting():
                limits.refused += 1
                self._reply_and_close(
                    503, "Service Unavailable",
                    "The server has too many open connections; try again shortly.",
                    "too_many_connections", ("retry-after: 1",),
                )
            limits.report()
            if self.transport.is_closing():
                return
        self._guard_sync()
        if self._waiting:
            self._start_header_clock()

    def _headers_over_limit(self, data: bytes) -> bool:
        """While waiting: whether ``data`` takes the request line and headers past the
        limit. Counted before the parser sees it, whatever the parser buffers."""
        tail = self._header_tail
        end = _BLANK_LINE.search(tail + data if tail else data)
        size = self._header_bytes + (len(data) if end is None else end.end() - len(tail))
        if size > self.limits.max_header_bytes:
            return True
        self._header_bytes += len(data)
        self._header_tail = data[-2:]
        return False

    def _guard_sync(self) -> None:
        """After anything that may start or end a request: note whether the connection
        waits for one (and so may be closed to make room); stop the header clock if not."""
        waiting = not self.transport.is_closing() and self._awaiting_request()
        if waiting == self._waiting:
            return
        if waiting:
            self._waiting = True
            self._header_bytes, self._header_tail = 0, b""
            self.limits.waiting[self] = None
        else:
            self.limits.waiting.pop(self, None)
            self._stop_waiting()

    def _guard_data(self) -> None:
        """After data: a request begun but with its headers incomplete is on the clock."""
        self._guard_sync()
        if self._waiting and self._header_timer is None:
            self._start_header_clock()

    def _start_header_clock(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout,
                                                  self._header_timed_out)

    def _stop_waiting(self) -> None:
        self._waiting = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _forget(self) -> None:
        if self._waiting:
            self.limits.waiting.pop(self, None)
            self._stop_waiting()

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._waiting:
            self.limits.waiting.pop(self, None)
            self._waiting = False
            self._close_idle()

    def _reply_and_close(self, status: int, phrase: str, message: str, code: str,
                         extra: tuple[str, ...] = ()) -> None:
        self._forget()
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, phrase, message, code, extra))
            self.transport.close()

    def _headers_too_large(self) -> None:
        self._reply_and_close(
            431, "Request Header Fields Too Large",
            f"The request line and headers are larger than {self.limits.max_header_bytes} "
            "bytes.", "headers_too_large", ("x-should-retry: false",),
        )

    # uvicorn's protocol methods, wrapped
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._guard_made()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._waiting and self._headers_over_limit(data):
            self._headers_too_large()
            return
        super().data_received(data)
        self._guard_data()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._guard_sync()


class GuardedH11Protocol(_Guard, H11Protocol):
    def _awaiting_request(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _close_idle(self) -> None:
        self.timeout_keep_alive_handler()

    def send_400_response(self, msg: str) -> None:
        # h11's own cap (max_incomplete_event_size) on what it buffers, hit first only
        # when leftover pipelined bytes add to the headers.
        if len(self.conn.trailing_data[0]) > self.limits.max_header_bytes:
            self._headers_too_large()
        else:
            super().send_400_response(msg)


def _httptools_protocol() -> type[asyncio.Protocol]:
    """The same on uvicorn's httptools protocol (httptools is optional)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):
        _in_request = False  # headers complete, body still arriving

        def on_headers_complete(self) -> None:
            self._in_request = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_request = False
            super().on_message_complete()

        def _awaiting_request(self) -> bool:
            return not self._in_request and not self.pipeline and (
                self.cycle is None or self.cycle.response_complete
            )

        def _close_idle(self) -> None:
            self.timeout_keep_alive_handler()

    return GuardedHttpToolsProtocol


def protocol_class(settings: Settings, *, http: str = "auto") -> type[asyncio.Protocol]:
    """The protocol class for one server: httptools' when installed (as uvicorn's "auto"
    picks), else h11's, bound to that server's limits."""
    use_httptools = http == "httptools" or (
        http == "auto" and importlib.util.find_spec("httptools") is not None
    )
    base: type[Any] = _httptools_protocol() if use_httptools else GuardedH11Protocol
    cls: type[asyncio.Protocol] = type(base.__name__, (base,), {"limits": Limits(settings)})
    return cls
