"""The ``Blobs`` protocol: where file bytes live.

Keys are Barge's own ids (``[A-Za-z0-9_-]{1,128}``); every method treats any other key as
not found and touches nothing. Implementations translate their driver's errors into
Barge's exceptions: ``NotFound`` for a missing blob, ``StorageError`` when the local disk
refuses, ``BlobsUnavailable`` when a remote store cannot be used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PING_TIMEOUT = 2.0  # seconds ``ping`` waits for the store by default


@dataclass(frozen=True, slots=True)
class BlobInfo:
    bytes: int
    sha256: str
    lines: int  # newline-terminated lines, plus one for a final unterminated line


class BlobWriter(Protocol):
    """An upload in progress: bytes go in, and nothing is visible until ``commit``.

    ``write`` is synchronous (it is called from multipart parser callbacks) and writes to
    a node-local temporary file of this writer's own; ``commit`` makes the bytes the blob
    (replacing an older one: of two writers of one key, the last to commit wins);
    ``abort`` leaves nothing behind and is harmless twice."""

    def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> BlobInfo: ...

    def abort(self) -> None: ...


class Blobs(Protocol):
    async def open(self) -> None:
        """Get ready and check the store can be used: raise one clear ``BargeError`` (a
        missing bucket, refused credentials) rather than fail on the first upload."""

    async def ping(self, timeout: float = PING_TIMEOUT) -> None:
        """Whether the store can be used now, cheaply, for ``/healthz``: returns, or
        raises a ``BargeError`` (``BlobsUnavailable``, ``StorageError``) whose message
        says in one line why not. Takes at most about ``timeout`` seconds."""

    def writer(self, key: str, *, max_bytes: int) -> BlobWriter:
        """A writer that raises PayloadTooLarge once more than ``max_bytes`` arrive."""

    async def publish(self, key: str, source: Path) -> None:
        """Make a finished local file the blob ``key``, atomically. The source is consumed
        (moved into the store); on failure it is left where it was."""

    async def exists(self, key: str) -> bool:
        """Whether the blob is there (False for a key that is not a valid id)."""

    async def local_path(self, key: str) -> Path:
        """A local path with the blob's bytes (raises NotFound when it is missing). For a
        remote store this is a node-local cached copy: read it, never write it."""

    def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks of ``chunk_size`` (the last may be shorter), never
        whole in memory. NotFound is raised at the first iteration."""

    def open_range(
        self, key: str, start: int, end: int, *, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """The bytes ``[start, end)`` of the blob, streamed like ``stream``. Like a slice:
        an ``end`` past the blob's end stops there, and a ``start`` at or past it yields
        nothing. ValueError for ``start < 0`` or ``end < start``."""

    async def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing one is fine."""
