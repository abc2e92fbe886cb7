"""What every ``Blobs`` implementation shares: the key check, the counting spool file an
upload is written to, error translation for the local disk, and re-chunking."""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

from barge.blobs.protocol import BlobInfo
from barge.exceptions import NotFound, PayloadTooLarge, StorageError

KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_key(key: str) -> str:
    """Keys are Barge's own ids, never a client's filename: anything else is not found."""
    if not KEY.fullmatch(key):
        raise NotFound(f"No such file: {key}")
    return key


def check_range(start: int, end: int) -> None:
    if start < 0 or end < start:
        raise ValueError(f"Invalid byte range [{start}, {end}).")


def storage_error(e: OSError) -> StorageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError("The server's disk is full; nothing was stored.", code="disk_full")
    return StorageError(f"The server could not write to its data directory: {e.strerror}.")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A temporary file of its own for one upload: counts bytes, lines and the SHA-256 as
    chunks arrive (memory stays flat), and refuses more than ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._size = 0
        self._lines = 0
        self._last = b"\n"
        try:
            self._fh = open(path, "wb")  # noqa: SIM115 - closed in close/discard
        except OSError as e:
            raise storage_error(e) from e

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._size += len(chunk)
        if self._size > self._max:
            raise PayloadTooLarge(
                f"The file is larger than the limit of {self._max} bytes.",
                param="file",
                code="file_too_large",
            )
        self._hash.update(chunk)
        self._lines += chunk.count(b"\n")
        self._last = chunk[-1:]
        try:
            self._fh.write(chunk)
        except OSError as e:
            raise storage_error(e) from e

    def close(self, *, fsync: bool) -> BlobInfo:
        """Flush (and fsync) the file, close it, and say what it holds. Blocking."""
        self._fh.flush()
        if fsync:
            os.fsync(self._fh.fileno())
        self._fh.close()
        lines = self._lines + (0 if self._last == b"\n" else 1)
        return BlobInfo(self._size, self._hash.hexdigest(), lines)

    def discard(self) -> None:
        """Close and remove the file; harmless twice, and after it was moved away."""
        self._fh.close()
        self.path.unlink(missing_ok=True)


async def rechunk(source: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """The bytes of ``source`` in chunks of exactly ``size`` (the last may be shorter)."""
    pending = bytearray()
    async for piece in source:
        view, pos = memoryview(piece), 0
        if pending:
            pos = size - len(pending)
            pending += view[:pos]
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending.clear()
        if pos == 0 and len(piece) == size:
            yield piece
            continue
        while len(piece) - pos >= size:
            yield bytes(view[pos : pos + size])
            pos += size
        pending += view[pos:]
    if pending:
        yield bytes(pending)
