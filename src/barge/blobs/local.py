"""Blobs on the local disk: one file per key, written to a temporary name of its own,
fsynced, renamed."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from barge.blobs.common import Spool, check_key, check_range, fsync_dir, storage_error
from barge.blobs.protocol import PING_TIMEOUT, BlobInfo
from barge.exceptions import NotFound, StorageError

__all__ = ["LocalBlobs", "LocalWriter", "fsync_dir"]


class LocalWriter:
    def __init__(self, final: Path, tmp: Path, max_bytes: int) -> None:
        self._final = final
        self._spool = Spool(tmp, max_bytes)

    def write(self, chunk: bytes) -> None:
        self._spool.write(chunk)

    async def commit(self) -> BlobInfo:
        def _finish() -> BlobInfo:
            info = self._spool.close(fsync=True)
            os.replace(self._spool.path, self._final)
            fsync_dir(self._final.parent)
            return info

        try:
            return await asyncio.to_thread(_finish)
        except OSError as e:
            self.abort()
            raise storage_error(e) from e

    def abort(self) -> None:
        self._spool.discard()


class LocalBlobs:
    def __init__(self, root: Path, tmp: Path) -> None:
        self._root = root
        self._tmp = tmp
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)

    async def open(self) -> None:
        """Make the folders (again, should they be gone) and clear a crash's leftovers."""
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(e) from e
        self.clear_tmp()

    async def ping(self, timeout: float = PING_TIMEOUT) -> None:
        """The folders are there, may be written, and their disk is not full."""

        def look() -> None:
            for folder in (self._root, self._tmp):
                if not folder.is_dir():
                    raise StorageError(f"The folder {folder} is missing.")
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise StorageError(f"The folder {folder} cannot be written.")
            if os.statvfs(self._root).f_bavail == 0:
                raise StorageError(f"The disk holding {self._root} is full.", code="disk_full")

        try:
            await asyncio.wait_for(asyncio.to_thread(look), timeout)
        except TimeoutError:
            raise StorageError(f"The disk holding {self._root} did not answer within "
                               f"{timeout:g}s.") from None
        except OSError as e:
            raise StorageError(f"The folder {self._root} cannot be used: "
                               f"{e.strerror or e}.") from None

    def _path(self, key: str) -> Path:
        return self._root / check_key(key)

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
            raise storage_error(e) from e

    async def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except NotFound:
            return False

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.exists():
            raise NotFound(f"The bytes of file {key} are missing.")
        return path

    async def local_path(self, key: str) -> Path:
        return self._existing(key)

    async def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self._existing(key)
        try:
            fh = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise NotFound(f"The bytes of file {key} are missing.") from None
        try:
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()

    async def open_range(
        self, key: str, start: int, end: int, *, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        check_range(start, end)
        path = self._existing(key)
        try:
            fh = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise NotFound(f"The bytes of file {key} are missing.") from None
        try:
            fh.seek(start)
            left = end - start
            while left > 0:
                chunk = await asyncio.to_thread(fh.read, min(chunk_size, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        finally:
            fh.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    def clear_tmp(self) -> None:
        """Remove uploads a crash left half-written."""
        for leftover in self._tmp.glob("*.upload"):
            leftover.unlink(missing_ok=True)
