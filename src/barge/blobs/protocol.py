"""The ``Blobs`` protocol: where file bytes live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BlobInfo:
    bytes: int
    sha256: str
    lines: int  # newline-terminated lines, plus one for a final unterminated line


class BlobWriter(Protocol):
    """An upload in progress: bytes go in, and nothing is visible until ``commit``."""

    def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> BlobInfo: ...

    def abort(self) -> None: ...


class Blobs(Protocol):
    def writer(self, key: str, *, max_bytes: int) -> BlobWriter:
        """A writer that raises PayloadTooLarge once more than ``max_bytes`` arrive."""

    async def publish(self, key: str, source: Path) -> None:
        """Make a finished local file the blob ``key``, atomically."""

    def local_path(self, key: str) -> Path:
        """A local path with the blob's bytes (raises NotFound when it is missing)."""

    def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> None: ...
