"""Durable result parts: one append-only file per work slice.

Each record is ``<line index in slice> <o|e> <result JSON>\\n``. The Store holds the
part's committed length; a record counts only once the Store has acknowledged the
length covering it, so after a crash the tail beyond it is cut off and those requests
run again — and each result is written once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from barge.domain.usage import NO_USAGE, Usage
from barge.store.protocol import SliceProgress

OK, ERR = b"o", b"e"


def parse_records(data: bytes) -> Iterator[tuple[int, bool, bytes]]:
    """(index, ok, result line) of each whole record in ``data`` (a run of a part)."""
    end = data.rfind(b"\n") + 1
    for raw in data[:end].split(b"\n")[:-1]:
        index, kind, line = raw.split(b" ", 2)
        yield int(index), kind == OK, line


def read_records(path: Path, committed: int) -> Iterator[tuple[int, bool, bytes]]:
    """(index, ok, result line) of every committed record in a part."""
    if committed == 0 or not path.exists():
        return
    with open(path, "rb") as fh:
        remaining = committed
        for raw in fh:
            if remaining <= 0:
                break
            remaining -= len(raw)
            if remaining < 0 or not raw.endswith(b"\n"):
                break  # a partial record past the committed length
            index, kind, line = raw[:-1].split(b" ", 2)
            yield int(index), kind == OK, line


def done_map(path: Path, committed: int, n_lines: int) -> bytearray:
    """Which lines of a slice already have a committed result (1) and which not (0)."""
    done = bytearray(n_lines)
    for index, _, _ in read_records(path, committed):
        done[index] = 1
    return done


class PartWriter:
    """Buffers results of one slice and makes them durable on ``sync``."""

    def __init__(self, path: Path, no: int, committed: int) -> None:
        self.no = no
        self._path = path
        self._committed = committed
        self._buffer: list[bytes] = []
        self._completed = 0
        self._failed = 0
        self._ok_bytes = 0  # what the buffered lines add to the output file
        self._err_bytes = 0  # and to the error file
        self._usage = NO_USAGE
        self._done = False
        self._done_reported = False
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as fh:  # cut any tail a crash left past the committed length
            fh.truncate(committed)

    def append(self, index: int, ok: bool, line: bytes, usage: Usage = NO_USAGE) -> None:
        self._buffer.append(b"%d %s %s\n" % (index, OK if ok else ERR, line))
        if ok:
            self._completed += 1
            self._ok_bytes += len(line) + 1
        else:
            self._failed += 1
            self._err_bytes += len(line) + 1
        if usage:
            self._usage += usage

    def mark_done(self) -> None:
        self._done = True

    @property
    def pending(self) -> bool:
        return bool(self._buffer) or (self._done and not self._done_reported)

    def take(self) -> tuple[bytes, int, int, bool, Usage, int, int]:
        """Hand over what is buffered (called on the event loop; no await inside)."""
        data = b"".join(self._buffer)
        taken = (data, self._completed, self._failed, self._done, self._usage,
                 self._ok_bytes, self._err_bytes)
        self._buffer, self._completed, self._failed, self._usage = [], 0, 0, NO_USAGE
        self._ok_bytes = self._err_bytes = 0
        if self._done:
            self._done_reported = True
        return taken

    def sync(
        self, data: bytes, completed: int, failed: int, done: bool, usage: Usage = NO_USAGE,
        ok_bytes: int = 0, err_bytes: int = 0,
    ) -> SliceProgress:
        """Append and fsync (called in a worker thread); the progress to acknowledge,
        with the part range of the records appended (one group of the results log)."""
        start = self._committed
        if data:
            with open(self._path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            self._committed += len(data)
        return SliceProgress(self.no, self._committed, completed, failed, done, usage,
                             ok_bytes=ok_bytes, err_bytes=err_bytes, part_start=start)
