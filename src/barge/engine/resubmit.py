"""Retrying what failed: the lines of a batch's input whose ``custom_id`` has no line in
its output file (failed, expired or never run), byte for byte and in input order.

Memory stays flat whatever the line count: the custom_ids that succeeded go into a
scratch SQLite file (a B-tree on disk behind a page cache of ``CACHE_KIB``), not into a
set of Python strings, and both files are streamed a line at a time. A million-request
batch costs some tens of MiB of scratch disk for as long as the filtering takes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import orjson

from barge.domain.validation import UTF8_BOM, is_blank

CACHE_KIB = 8192  # the scratch database's page cache
LOOKUP_CHUNK = 500  # input lines looked up at once

_ID_FIELD = b'","custom_id":"'  # after the "id" of a line Barge wrote


@dataclass(frozen=True, slots=True)
class Retried:
    """The input file of the retry, written at ``path``: ``lines`` requests."""

    path: Path
    bytes: int
    sha256: str
    lines: int


def output_custom_id(line: bytes) -> bytes:
    """The ``custom_id`` of an output-file line, JSON-encoded as orjson encodes it (the
    key of the scratch table). Barge writes ``{"id":"batch_req_…","custom_id":…`` first,
    so the string is found without parsing the whole line (answers may be large)."""
    if line.startswith(b'{"id":"'):
        at = line.find(_ID_FIELD, 7)
        if at != -1:
            start = at + len(_ID_FIELD) - 1  # its opening quote
            end = start
            while (end := line.find(b'"', end + 1)) != -1:
                backslashes = len(line[start + 1:end]) - len(line[start + 1:end].rstrip(b"\\"))
                if backslashes % 2 == 0:
                    return orjson.dumps(orjson.loads(line[start:end + 1]))
    return orjson.dumps(orjson.loads(line)["custom_id"])


def failed_requests(input_path: Path, output_path: Path | None, dest: Path,
                    scratch_dir: Path) -> Retried:
    """Write to ``dest`` every request line of ``input_path`` whose ``custom_id`` has no
    line in ``output_path`` (None: the batch has no output file), as it is in the input
    (blank lines and a leading byte-order mark left out)."""
    with _Succeeded(scratch_dir) as succeeded:
        if output_path is not None:
            with open(output_path, "rb") as fh:
                succeeded.add(output_custom_id(line) for line in fh if line.strip())
        digest = hashlib.sha256()
        size = count = 0
        with open(input_path, "rb") as src, open(dest, "wb") as out:
            for chunk in _chunks(_requests(src), LOOKUP_CHUNK):
                keys = [orjson.dumps(orjson.loads(raw)["custom_id"]) for raw in chunk]
                done = succeeded.among(keys)
                for raw, key in zip(chunk, keys, strict=True):
                    if key in done:
                        continue
                    out.write(raw)
                    digest.update(raw)
                    size += len(raw)
                    count += 1
            out.flush()
            os.fsync(out.fileno())
    return Retried(dest, size, digest.hexdigest(), count)


def _requests(fh: Iterable[bytes]) -> Iterator[bytes]:
    """The non-blank lines of an input file, a leading byte-order mark left out."""
    for n, raw in enumerate(fh):
        if n == 0 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        if not is_blank(raw):
            yield raw


def _chunks(lines: Iterator[bytes], n: int) -> Iterator[list[bytes]]:
    while chunk := list(islice(lines, n)):
        yield chunk


class _Succeeded:
    """The set of custom_ids that have an output line, in a scratch SQLite file
    (private, deleted on exit)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix="retry-", suffix=".db")
        os.close(fd)
        self._path = Path(name)
        self._db = sqlite3.connect(name, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KIB}",
                       "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE ok (id BLOB PRIMARY KEY) WITHOUT ROWID")

    def __enter__(self) -> _Succeeded:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()
        with contextlib.suppress(OSError):
            self._path.unlink()

    def add(self, keys: Iterable[bytes]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR IGNORE INTO ok VALUES (?)", ((k,) for k in keys))
        self._db.execute("COMMIT")

    def among(self, keys: list[bytes]) -> set[bytes]:
        """Those of ``keys`` in the set."""
        found: set[bytes] = set()
        for start in range(0, len(keys), LOOKUP_CHUNK):
            part = keys[start:start + LOOKUP_CHUNK]
            rows = self._db.execute(
                f"SELECT id FROM ok WHERE id IN ({','.join('?' * len(part))})", part)
            found.update(bytes(r[0]) for r in rows)
        return found
