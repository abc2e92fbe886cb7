"""Blobs on the local disk: one file per key, written to a temporary name of its own,
fsynced, renamed."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from barge.blobs.protocol import BlobInfo
from barge.exceptions import NotFound, PayloadTooLarge, StorageError

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _storage_error(e: OSError) -> StorageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError("The server's disk is full; nothing was stored.", code="disk_full")
    return StorageError(f"The server could not write to its data directory: {e.strerror}.")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalWriter:
    def __init__(self, final: Path, tmp: Path, max_bytes: int) -> None:
        self._final = final
        self._tmp = tmp
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._size = 0
        self._lines = 0
        self._last = b"\n"
        try:
            self._fh = open(tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        except OSError as e:
            raise _storage_error(e) from e

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
            raise _storage_error(e) from e

    async def commit(self) -> BlobInfo:
        def _finish() -> None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._tmp, self._final)
            fsync_dir(self._final.parent)

        try:
            await asyncio.to_thread(_finish)
        except OSError as e:
            self.abort()
            raise _storage_error(e) from e
        lines = self._lines + (0 if self._last == b"\n" else 1)
        return BlobInfo(self._size, self._hash.hexdigest(), lines)

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


class LocalBlobs:
    def __init__(self, root: Path, tmp: Path) -> None:
        self._root = root
        self._tmp = tmp
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):  # keys are our own ids; never a client's filename
            raise NotFound(f"No such file: {key}")
        return self._root / key

    def writer(self, key: str, *, max_bytes: int) -> LocalWriter:
        """Each writer has a temporary file of its own, even for the same key: concurrent
        uploads never write into one another's bytes (the last to commit replaces)."""
        final = self._path(key)
        return LocalWriter(final, self._tmp / f"{key}.{secrets.token_hex(8)}.upload", max_bytes)

    async def publish(self, key: str, source: Path) -> None:
        final = self._path(key)

        def _move() -> None:
            os.replace(source, final)
            fsync_dir(final.parent)

        try:
            await asyncio.to_thread(_move)
        except OSError as e:
            raise _storage_error(e) from e

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.exists():
            raise NotFound(f"The bytes of file {key} are missing.")
        return path

    async def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self.local_path(key)
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    def clear_tmp(self) -> None:
        """Remove uploads a crash left half-written."""
        for leftover in self._tmp.glob("*.upload"):
            leftover.unlink(missing_ok=True)
