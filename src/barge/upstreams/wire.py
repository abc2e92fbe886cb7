"""Frames between the engine and its sender processes, over a Unix socket pair.

A frame is a 4-byte big-endian length (of what follows it), a one-byte kind and the
kind's fields. Engine → sender: CONFIGURE (an upstream's settings, JSON), REQUEST
(id, upstream, endpoint, body), CANCEL (id). Sender → engine: ANSWER (id, status,
headers, body) and FAILURE (id, what went wrong, its message).
"""

from __future__ import annotations

import asyncio
import struct
from typing import cast

HEAD = struct.Struct("!IB")  # length of the rest (kind included), kind
CONFIGURE, REQUEST, CANCEL, ANSWER, FAILURE = b"CRXAF"
REQUEST_FIELDS = struct.Struct("!IHH")  # request id, upstream id, endpoint length
CANCEL_FIELDS = struct.Struct("!I")  # request id
ANSWER_FIELDS = struct.Struct("!IHI")  # request id, status, headers length
FAILURE_FIELDS = struct.Struct("!IBHI")  # request id, failure, status, message length

# Frames wait up to FLUSH_DELAY seconds to leave together, or until FLUSH_PARTS pieces
# are queued: one write (and one wake-up of the other side) per many requests, not per
# request, for at most a millisecond more per hop.
FLUSH_DELAY = 0.001
FLUSH_PARTS = 96

# What FAILURE says went wrong; each is raised again as its UpstreamError in the engine.
TIMEOUT, UNREACHABLE, CONNECTION, TOO_LARGE = range(4)


def encode_headers(pairs: list[tuple[str, str]]) -> bytes:
    """``name: value`` lines; lossless for whatever aiohttp decoded (surrogates too)."""
    return "\r\n".join(f"{k}: {v}" for k, v in pairs).encode("utf-8", "surrogateescape")


def decode_headers(raw: bytes) -> list[tuple[str, str]]:
    if not raw:
        return []
    pairs = []
    for line in raw.decode("utf-8", "surrogateescape").split("\r\n"):
        name, _, value = line.partition(": ")
        pairs.append((name, value))
    return pairs


class FramedProtocol(asyncio.Protocol):
    """Cuts what arrives into frames for ``on_frame``, and sends frames in batches (see
    FLUSH_DELAY). A subclass keeps nothing of the view it is given past the call."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flush_due = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        at = 0
        view = memoryview(buffer)
        try:
            while size - at >= HEAD.size:
                length, kind = HEAD.unpack_from(buffer, at)
                end = at + 4 + length
                if end > size:
                    break
                self.on_frame(kind, view[at + HEAD.size:end])
                at = end
        finally:
            view.release()
            if at:
                del buffer[:at]

    def on_frame(self, kind: int, fields: memoryview) -> None:
        raise NotImplementedError

    def send(self, kind: int, *parts: bytes) -> None:
        out = self._out
        out.append(HEAD.pack(1 + sum(map(len, parts)), kind))
        out.extend(parts)
        if len(out) >= FLUSH_PARTS:
            self._flush()
        elif not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush_later)

    def _flush_later(self) -> None:
        if self._flush_due:
            self._flush()

    def _flush(self) -> None:
        self._flush_due = False
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))
