"""Writing results: merge a batch's durable parts into its output and error files."""

from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from barge.domain.models import Slice
from barge.domain.results import ResultCodes, error_line
from barge.domain.validation import is_blank
from barge.engine.parts import done_map, read_records
from barge.store.protocol import ExpiredLines


@dataclass(frozen=True, slots=True)
class Written:
    path: Path
    bytes: int
    sha256: str
    lines: int


@dataclass(frozen=True, slots=True)
class Merged:
    output: Written
    errors: Written
    # The batch_expired lines added after each slice's results, for the results log
    # (``Store.finish``): (slice_no, lines, bytes).
    expired: tuple[ExpiredLines, ...] = ()

    @property
    def completed(self) -> int:
        return self.output.lines

    @property
    def failed(self) -> int:
        return self.errors.lines


def result_file_id(batch_id: str, kind: str, fin_token: int | None = None) -> str:
    """Result file ids are derived from the batch id, so writing results twice (after a
    crash) publishes the same files instead of new ones. Where many nodes may write them
    (``fin_token``, the writer's claim), from the claim too: a writer whose claim ran out
    and was taken over publishes under ids of its own, never over the winner's files."""
    seed = f"{batch_id}:{kind}" if fin_token is None else f"{batch_id}:{kind}:{fin_token}"
    return "file-" + hashlib.sha256(seed.encode()).hexdigest()[:24]


class Sink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._hash = hashlib.sha256()
        self._bytes = 0
        self._lines = 0

    def add(self, line: bytes) -> None:
        data = line + b"\n"
        self._fh.write(data)
        self._hash.update(data)
        self._bytes += len(data)
        self._lines += 1

    @property
    def written(self) -> tuple[int, int]:
        """Lines and bytes written so far."""
        return self._lines, self._bytes

    def close(self) -> Written:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return Written(self.path, self._bytes, self._hash.hexdigest(), self._lines)


def part_path(work_dir: Path, batch_id: str, no: int) -> Path:
    return work_dir / batch_id / f"{no:06d}.part"


def merge_results(
    *, batch_id: str, slices: list[Slice], input_path: Path, work_dir: Path, expire_rest: bool
) -> Merged:
    """Write the output and error files into ``work_dir/<batch>/``. With ``expire_rest``,
    every request without a result goes to the error file as ``batch_expired``, after
    the results of its slice. Each slice's records go in part order, which is the order
    of its commits (see ``ResultGroup``)."""
    out, err = open_sinks(work_dir / batch_id)
    expired: list[ExpiredLines] = []
    with open(input_path, "rb") if expire_rest else nullcontext() as fh:
        for s in slices:
            part = part_path(work_dir, batch_id, s.no)
            for _, ok, line in read_records(part, s.committed_bytes):
                (out if ok else err).add(line)
            if fh is None or s.done:
                continue
            done = done_map(part, s.committed_bytes, s.n_lines)
            expired.append((s.no, *expire_missing(fh, s, done, err)))
    return Merged(out.close(), err.close(), tuple(expired))


def open_sinks(folder: Path) -> tuple[Sink, Sink]:
    """The output and error files of a batch being written, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return Sink(folder / "output.jsonl"), Sink(folder / "errors.jsonl")


def expire_missing(fh: BinaryIO, s: Slice, done: bytearray, err: Sink) -> tuple[int, int]:
    """Add a ``batch_expired`` error line for each request of ``s`` (read from the input
    ``fh``) that ``done`` does not mark as having a result; returns how many lines, of
    how many bytes."""
    lines, size = err.written
    fh.seek(s.start_offset)
    for i in range(s.n_lines):
        raw = fh.readline()
        if done[i] or is_blank(raw):
            continue
        custom_id = orjson.loads(raw)["custom_id"]
        err.add(
            error_line(
                custom_id,
                ResultCodes.BATCH_EXPIRED,
                "The batch expired before this request was completed.",
            )
        )
    now_lines, now_size = err.written
    return now_lines - lines, now_size - size
