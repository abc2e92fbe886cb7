"""Results while a batch runs: pages of the results committed so far, in commit order,
from a cursor that holds across restarts and across the batch's end (see
ARCHITECTURE.md, "Results while running").

A batch's results log (``Store.result_groups``) has one group per commit and slice, never
changed once written. A cursor ``<commit>.<slice>.<k>`` says: every group before
(commit, slice) has been read, and the first ``k`` records of that one (a group reads as
its output lines, then its error lines). While the batch runs, a group's records are read
from its slice's part (one machine) or from the store (many nodes); once it has ended,
from the published files, where ``Store.finish`` has placed every group. Both hold the
same bytes, so a cursor from either goes on in the other; a reader that finds a part or
the stored rows gone (the batch was finalised meanwhile) reads again, from the files."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from barge.blobs.protocol import Blobs
from barge.domain.models import BatchRecord
from barge.domain.status import TERMINAL
from barge.engine.finalize import part_path
from barge.engine.parts import parse_records
from barge.exceptions import BargeError, Conflict, InvalidRequest, NotFound, StoreUnavailable
from barge.store.protocol import ResultGroup, Store

log = logging.getLogger("barge.api")

DEFAULT_LIMIT = 1000  # results a page holds by default
MAX_LIMIT = 10_000  # and at most
PAGE_BYTES = 8 << 20  # a page stops once past this many bytes (it holds one line at least)
MAX_GROUPS = 500  # groups of the log a page reads at most (each a range of a file or part)
READ_ATTEMPTS = 3  # reads of one page that may find the batch finalised under them
START = "0.0.0"  # the cursor before every result
LATEST = "latest"  # ``after`` for the cursor past every result committed so far
NEXT_AFTER = "barge-next-after"  # the response header with the next page's cursor

_CURSOR = re.compile(r"(\d{1,18})\.(\d{1,18})\.(\d{1,18})")


@dataclass(frozen=True, slots=True)
class Cursor:
    """Every group before (``commit_no``, ``slice_no``) has been read, and the first
    ``taken`` records of that one."""

    commit_no: int
    slice_no: int
    taken: int

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        if not text:
            return cls(0, 0, 0)
        m = _CURSOR.fullmatch(text)
        if m is None:
            raise InvalidRequest(f"'after' must be a cursor a {NEXT_AFTER} header gave, or "
                                 f"'{LATEST}', not {text[:40]!r}.", param="after",
                                 code="invalid_cursor")
        return cls(int(m[1]), int(m[2]), int(m[3]))

    def __str__(self) -> str:
        return f"{self.commit_no}.{self.slice_no}.{self.taken}"


@dataclass(frozen=True, slots=True)
class ResultsPage:
    lines: list[bytes]  # each with its newline, as the output and error files hold it
    next_after: str  # the cursor after them; "" once the batch has ended and none is left


@dataclass(frozen=True, slots=True)
class _Read:
    """``take`` records of ``group`` after its first ``skip``."""

    group: ResultGroup
    skip: int
    take: int


class _Gone(Exception):
    """A running batch's records are no longer where its log says: it ended meanwhile."""


async def read_results(
    store: Store, blobs: Blobs, batch_id: str, *, account: str, after: str | None,
    limit: int, work_dir: Path, shared: bool,
) -> ResultsPage:
    """The page of ``account``'s batch after the cursor ``after`` (None or "": from the
    first result; ``LATEST``: none, only the cursor to follow from now on): at most
    ``limit`` results, fewer past ``PAGE_BYTES``. ``shared``: results are stored rows
    (many nodes), else parts in ``work_dir`` (one machine)."""
    if after == LATEST:
        b = await store.get_batch(account, batch_id)
        # Commits are numbered in order and a commit's groups are logged with it, so
        # every result to come is in a commit after the last one so far.
        last = _commits(b)
        return ResultsPage([], "" if b.status in TERMINAL else str(Cursor(last + 1, 0, 0)))
    cursor = Cursor.parse(after)
    for _ in range(READ_ATTEMPTS):
        b = await store.get_batch(account, batch_id)
        _commits(b)
        ended = b.status in TERMINAL
        fetch = min(limit, MAX_GROUPS) + 1
        groups = await store.result_groups(
            batch_id, after=(cursor.commit_no, cursor.slice_no), limit=fetch)
        reads, more = _plan(cursor, groups, limit)
        more = more or len(groups) == fetch
        try:
            if ended:
                chunks = await _from_files(blobs, b, reads)
            elif shared:
                chunks = await _from_rows(store, batch_id, reads)
            else:
                chunks = await asyncio.to_thread(_from_parts, work_dir, batch_id, reads)
        except _Gone:
            continue  # finalised meanwhile: read again, from its files
        return _page(cursor, after, reads, chunks, done=ended and not more)
    raise StoreUnavailable(f"The results of batch {batch_id} moved while being read; ask "
                           "again.")


def _commits(b: BatchRecord) -> int:
    """The batch's commits so far; Conflict for a batch whose results are not logged."""
    if b.result_commits is None:
        raise Conflict(f"Batch {b.id} was created before results were logged: its "
                       "results can only be downloaded as its output and error files.",
                       param="batch_id", code="results_not_logged")
    return b.result_commits


def _plan(cursor: Cursor, groups: list[ResultGroup], limit: int) -> tuple[list[_Read], bool]:
    """What to read of ``groups`` (those from the cursor's on) for at most ``limit``
    results; and whether any of them is left unread."""
    if cursor.taken:
        first = groups[0] if groups else None
        if first is None or first.key != (cursor.commit_no, cursor.slice_no) \
                or cursor.taken > first.size:
            raise InvalidRequest("'after' names no place in this batch's results.",
                                 param="after", code="invalid_cursor")
    reads: list[_Read] = []
    want, size = limit, 0
    for g in groups:
        skip = cursor.taken if g.key == (cursor.commit_no, cursor.slice_no) else 0
        left = g.size - skip
        if left <= 0:
            continue
        if want == 0 or size >= PAGE_BYTES:
            return reads, True
        take = min(left, want)
        reads.append(_Read(g, skip, take))
        want -= take
        size += g.ok_bytes + g.err_bytes
        if take < left:
            return reads, True
    return reads, False


def _page(cursor: Cursor, after: str | None, reads: list[_Read], chunks: list[list[bytes]],
          *, done: bool) -> ResultsPage:
    """The lines read, cut at ``PAGE_BYTES`` (one at least), and the cursor after them."""
    lines: list[bytes] = []
    size = 0
    last: Cursor | None = None
    cut = False
    for r, chunk in zip(reads, chunks, strict=True):
        for k, line in enumerate(chunk):
            if lines and size + len(line) > PAGE_BYTES:
                cut = True
                break
            lines.append(line)
            size += len(line)
            last = Cursor(r.group.commit_no, r.group.slice_no, r.skip + k + 1)
        if cut:
            break
    if done and not cut:
        return ResultsPage(lines, "")
    if last is None:
        return ResultsPage(lines, after or str(cursor))
    return ResultsPage(lines, str(last))


def _split(data: bytes, n: int) -> list[bytes] | None:
    """``data`` as its ``n`` newline-ended lines (newlines kept); None if it is not."""
    if not data:
        return [] if n == 0 else None
    if not data.endswith(b"\n"):
        return None
    lines = [line + b"\n" for line in data[:-1].split(b"\n")]
    return lines if len(lines) == n else None


def _from_parts(work_dir: Path, batch_id: str, reads: list[_Read]) -> list[list[bytes]]:
    """The records of ``reads`` from the slices' parts (one machine, while it runs)."""
    handles: dict[int, BinaryIO] = {}
    try:
        out = []
        for r in reads:
            g = r.group
            fh = handles.get(g.slice_no)
            if fh is None:
                try:
                    fh = handles[g.slice_no] = open(  # noqa: SIM115 - closed below
                        part_path(work_dir, batch_id, g.slice_no), "rb")
                except FileNotFoundError:
                    raise _Gone from None
            fh.seek(g.part_start)
            data = fh.read(g.part_end - g.part_start)
            if g.part_end <= g.part_start or len(data) != g.part_end - g.part_start:
                raise _Gone  # the batch_expired lines, or a part cut: only in the files
            oks: list[bytes] = []
            errs: list[bytes] = []
            for _, ok, line in parse_records(data):
                (oks if ok else errs).append(line + b"\n")
            if len(oks) != g.n_ok or len(errs) != g.n_err:
                raise _Gone
            out.append((oks + errs)[r.skip:r.skip + r.take])
        return out
    finally:
        for fh in handles.values():
            fh.close()


async def _from_rows(store: Store, batch_id: str, reads: list[_Read]) -> list[list[bytes]]:
    """The records of ``reads`` from the store (many nodes, while it runs)."""
    rows = await store.group_results(batch_id, [r.group.key for r in reads])
    by_group: dict[tuple[int, int], list[bytes]] = {}
    oks: dict[tuple[int, int], int] = {}
    for row in rows:
        key = (row.commit_no, row.slice_no)
        by_group.setdefault(key, []).append(row.line + b"\n")
        oks[key] = oks.get(key, 0) + row.ok
    out = []
    for r in reads:
        g = r.group
        lines = by_group.get(g.key, [])
        if len(lines) != g.size or oks.get(g.key, 0) != g.n_ok:
            raise _Gone  # removed by ``finish``: the files hold them now
        out.append(lines[r.skip:r.skip + r.take])
    return out


async def _from_files(blobs: Blobs, b: BatchRecord, reads: list[_Read]) -> list[list[bytes]]:
    """The records of ``reads`` from the batch's published files (once it has ended)."""
    wanted: dict[str, list[tuple[int, int]]] = {}
    spans: list[tuple[tuple[str, int, int] | None, tuple[str, int, int] | None]] = []
    for r in reads:
        g = r.group
        if g.ok_offset is None or g.err_offset is None:
            raise _inconsistent(b.id, "a group has no place in the files")
        ok_span = err_span = None
        if g.n_ok and r.skip < g.n_ok:
            ok_span = (_file_of(b, b.output_file_id), g.ok_offset, g.ok_offset + g.ok_bytes)
        if g.n_err and r.skip + r.take > g.n_ok:
            err_span = (_file_of(b, b.error_file_id), g.err_offset,
                        g.err_offset + g.err_bytes)
        for span in (ok_span, err_span):
            if span is not None:
                wanted.setdefault(span[0], []).append(span[1:])
        spans.append((ok_span, err_span))
    data = {key: await _read_ranges(blobs, b.id, key, ranges) for key, ranges in wanted.items()}
    out = []
    for r, (ok_span, err_span) in zip(reads, spans, strict=True):
        g = r.group
        oks = _lines_of(data, ok_span, g.n_ok, b.id)
        errs = _lines_of(data, err_span, g.n_err, b.id)
        # Only what is read counts: an unread half is a list of placeholders.
        lines = (oks if oks is not None else [b""] * g.n_ok) \
            + (errs if errs is not None else [b""] * g.n_err)
        out.append(lines[r.skip:r.skip + r.take])
    return out


def _file_of(b: BatchRecord, file_id: str | None) -> str:
    if file_id is None:
        raise _inconsistent(b.id, "lines are logged for a file it does not have")
    return file_id


def _lines_of(data: dict[str, dict[tuple[int, int], bytes]],
              span: tuple[str, int, int] | None, n: int, batch_id: str) -> list[bytes] | None:
    if span is None:
        return None
    lines = _split(data[span[0]][span[1:]], n)
    if lines is None:
        raise _inconsistent(batch_id, "a group's lines are not where the log says")
    return lines


async def _read_ranges(blobs: Blobs, batch_id: str, key: str,
                       ranges: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The bytes of each range of blob ``key``, ranges that touch read together."""
    merged: list[list[int]] = []
    for start, end in sorted(set(ranges)):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    got: dict[tuple[int, int], bytes] = {}
    for start, end in merged:
        try:
            data = b"".join([chunk async for chunk in blobs.open_range(key, start, end)])
        except NotFound:
            raise Conflict(f"The result files of batch {batch_id} are gone (expired or "
                           "deleted): its results can no longer be read.",
                           param="batch_id", code="result_files_gone") from None
        if len(data) != end - start:
            raise _inconsistent(batch_id, "a file is shorter than its log")
        for s, e in ranges:
            if start <= s and e <= end:
                got[(s, e)] = data[s - start:e - start]
    return got


def _inconsistent(batch_id: str, why: str) -> BargeError:
    log.error("batch %s: its results log does not match its files: %s", batch_id, why)
    return BargeError(f"The results of batch {batch_id} cannot be read: {why}.")
