"""Repeated custom_ids in an input file of any length, in bounded memory.

Each id seen is remembered as one 64-bit word: the top bits of its fingerprint (a 64-bit
hash of the id) and the byte offset of its line. The words live in an open-addressing
table (linear probing, at most half full); a fingerprint that matches is only a
candidate, confirmed by reading the earlier line back from the file and comparing the
ids themselves, so two different ids that share a fingerprint never fail a file.

Up to ``memory_entries`` ids (by default 2**19: an 8 MiB table) are checked as they come.
Past that the table is spilled into partition files (by fingerprint) in a scratch folder
and every later id is appended to its partition; ``finish`` then checks one partition at
a time (a partition still too large is split again), so memory stays the same for ten
million lines as for one. Duplicates found there are reported by ``finish``, with the
line of the repeat, as those found at once are."""

from __future__ import annotations

import contextlib
import heapq
import mmap
import shutil
import tempfile
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import orjson

from barge.domain.models import LineError
from barge.domain.validation import duplicate_error

MASK64 = (1 << 64) - 1
MEMORY_ENTRIES = 1 << 19  # ids checked in memory as they come, before spilling
MAX_PARTITIONS = 256
SPLIT_BITS = 4  # a partition still too large is split into 2**SPLIT_BITS
MAX_BUFFER = 4096  # words buffered per partition before they are written (at most)
MIN_BUFFER = 64
READ_CHUNK = 1 << 20

Fingerprint = Callable[[str], int]


@dataclass
class LateDuplicates:
    """Duplicates found by ``finish`` among the ids checked after the spill."""

    errors: list[LineError] = field(default_factory=list)  # the first ``limit``, by line
    count: int = 0  # all of them
    refused: int = 0  # of them, lines checked with ``refused`` (their other error goes)


class _Slots:
    """A table of 64-bit words, all zero at first, in an anonymous memory map: a page is
    taken only once written to, and every page goes back to the system on ``close``
    (none stays behind in the allocator's heap)."""

    __slots__ = ("_map", "words")

    def __init__(self, capacity: int) -> None:
        self._map = mmap.mmap(-1, 8 * capacity)
        self.words = memoryview(self._map).cast("Q")

    def close(self) -> None:
        self.words.release()
        self._map.close()


class DuplicateTracker:
    """Remembers the custom_ids of one input file (at ``path``, of ``size`` bytes), read
    in order. ``check`` each valid line's id with its line number and byte offset; then
    ``finish`` (for the ids checked after a spill); use as a context manager so that the
    scratch files and the file handle go. ``spill_dir``: where partitions are written
    (a temporary folder is made inside it, and removed); None: the system's temporary
    folder. ``fingerprint``: the 64-bit hash of an id (Python's own, keyed afresh in
    every process, unless a test gives another)."""

    def __init__(
        self, path: Path, *, size: int | None = None, spill_dir: Path | None = None,
        memory_entries: int = MEMORY_ENTRIES,
        fingerprint: Fingerprint = hash,
    ) -> None:
        self._path = path
        size = path.stat().st_size if size is None else size
        # A word: [fingerprint's top bits][refused: 1 bit][offset + 1: offset_bits].
        self._offset_bits = (size + 1).bit_length()
        self._low = self._offset_bits + 1
        self._key_bits = max(1, 64 - self._low)
        self._offset_mask = (1 << self._offset_bits) - 1
        self._fingerprint = fingerprint
        self._size = size
        self._spill_dir = spill_dir
        self._max_capacity = _pow2_at_least(2 * max(1, memory_entries))
        # After a spill, a partition holds about a quarter of what the table held (it is
        # checked with a table of its own), and all their write buffers as much again.
        self._partition_entries = max(1, memory_entries // 4)
        self._buffer_entries = MAX_BUFFER
        # The table in memory (None once spilled): its words, their count and limit.
        self._table: _Slots | None = _Slots(min(1024, self._max_capacity))
        self._words: memoryview | None = self._table.words
        self._mask = len(self._words) - 1
        self._count = 0
        self._limit = len(self._words) // 2
        self._reader: BinaryIO | None = None
        # After a spill: the scratch folder, and per partition its buffer and size.
        self._scratch: Path | None = None
        self._made_dir: Path | None = None  # ``spill_dir``, when the spill made it
        self._shift = 0
        self._buffers: list[array[int]] = []
        self._counts: list[int] = []
        self.spilled = False

    # -- as the file is read ---------------------------------------------------------

    def check(self, custom_id: str, line_no: int, offset: int, refused: bool = False
              ) -> LineError | None:
        """The duplicate_custom_id error of the line (``line_no``, 1-based; ``offset``:
        where it starts) when an earlier line had ``custom_id``; None when it is the
        first, or once spilled (``finish`` tells). ``refused``: the line has another
        error (no upstream serves its model), which a duplicate replaces."""
        low = self._low
        key = (self._fingerprint(custom_id) & MASK64) >> low
        words = self._words
        if words is None:
            self._append((key << low) | (refused << self._offset_bits) | (offset + 1))
            return None
        mask = self._mask
        i = key & mask
        word = words[i]
        while word:
            if word >> low == key and self._id_at((word & self._offset_mask) - 1) == custom_id:
                return duplicate_error(custom_id, line_no)
            i = (i + 1) & mask
            word = words[i]
        words[i] = (key << low) | (offset + 1)
        self._count += 1
        if self._count > self._limit:
            self._grow()
        return None

    def _id_at(self, offset: int) -> str:
        """The custom_id of the (valid) line at ``offset``."""
        fh = self._reader
        if fh is None:
            fh = self._reader = open(self._path, "rb")  # noqa: SIM115 - closed in close()
        fh.seek(offset)
        custom_id: str = orjson.loads(fh.readline())["custom_id"]
        return custom_id

    def _grow(self) -> None:
        table = self._table
        assert table is not None
        capacity = 2 * len(table.words)
        if capacity > self._max_capacity:
            self._spill(table)
            return
        self._table = _rehash(table, capacity, self._low)
        self._words = self._table.words
        self._mask = capacity - 1
        self._limit = capacity // 2

    def _spill(self, table: _Slots) -> None:
        """Move every id in memory to partition files; from now on ids go there."""
        if self._spill_dir is not None and not self._spill_dir.exists():
            self._spill_dir.mkdir(parents=True)
            self._made_dir = self._spill_dir
        self._scratch = Path(tempfile.mkdtemp(prefix="duplicates-", dir=self._spill_dir))
        # Enough partitions for the ids still to come, judged by the bytes read so far.
        read = max(1, max(w & self._offset_mask for w in table.words))
        expected = self._count * max(1.0, self._size / read)
        n = _pow2_at_least(-(-int(expected) // self._partition_entries))
        n = max(2, min(MAX_PARTITIONS, n))
        self._shift = max(0, self._key_bits - (n.bit_length() - 1))
        self._buffer_entries = max(MIN_BUFFER, min(MAX_BUFFER, self._partition_entries // n))
        self._buffers = [array("Q") for _ in range(n)]
        self._counts = [0] * n
        self._table = self._words = None
        self.spilled = True
        for word in table.words:
            if word:
                self._append(word)
        table.close()

    def _append(self, word: int) -> None:
        p = ((word >> self._low) >> self._shift) & (len(self._buffers) - 1)
        buffer = self._buffers[p]
        buffer.append(word)
        if len(buffer) >= self._buffer_entries:
            self._write(p)

    def _write(self, p: int) -> None:
        assert self._scratch is not None
        buffer = self._buffers[p]
        with open(self._scratch / f"{p:03d}", "ab") as fh:
            buffer.tofile(fh)
        self._counts[p] += len(buffer)
        self._buffers[p] = array("Q")

    # -- at the end ------------------------------------------------------------------

    def finish(self, limit: int) -> LateDuplicates:
        """The duplicates among the ids checked after the spill (none without one): each
        partition's ids in the order they were checked, every repeat confirmed."""
        found = LateDuplicates()
        if self._table is not None:
            return found
        assert self._scratch is not None
        for p in range(len(self._buffers)):
            if self._buffers[p]:
                self._write(p)
        first: list[tuple[int, str]] = []  # (-offset, id): the ``limit`` earliest
        for p, count in enumerate(self._counts):
            if count:
                self._settle(self._scratch / f"{p:03d}", count, self._shift, found, first,
                             limit)
        offsets = sorted((-neg, custom_id) for neg, custom_id in first)
        lines = _line_numbers(self._path, [off for off, _ in offsets])
        found.errors = [duplicate_error(custom_id, line)
                        for (_, custom_id), line in zip(offsets, lines, strict=True)]
        return found

    def _settle(self, path: Path, count: int, shift: int, found: LateDuplicates,
                first: list[tuple[int, str]], limit: int) -> None:
        """Check one partition's ids (split again while it is too large to hold)."""
        if count > 2 * self._partition_entries and shift > 0:
            self._split(path, shift, found, first, limit)
            return
        words = array("Q")
        with open(path, "rb") as fh:
            words.fromfile(fh, count)
        path.unlink()
        table = _Slots(_pow2_at_least(2 * count))
        try:
            self._settle_words(words, table.words, found, first, limit)
        finally:
            table.close()

    def _settle_words(self, words: array[int], slots: memoryview, found: LateDuplicates,
                      first: list[tuple[int, str]], limit: int) -> None:
        mask, low = len(slots) - 1, self._low
        for word in words:
            key = word >> low
            offset = (word & self._offset_mask) - 1
            mine: str | None = None
            i = key & mask
            repeat = False
            while other := slots[i]:
                if other >> low == key:
                    if mine is None:
                        mine = self._id_at(offset)
                    if self._id_at((other & self._offset_mask) - 1) == mine:
                        repeat = True
                        break
                i = (i + 1) & mask
            if not repeat:
                slots[i] = word
                continue
            assert mine is not None
            found.count += 1
            found.refused += (word >> self._offset_bits) & 1
            if len(first) < limit:
                heapq.heappush(first, (-offset, mine))
            elif -first[0][0] > offset:
                heapq.heapreplace(first, (-offset, mine))

    def _split(self, path: Path, shift: int, found: LateDuplicates,
               first: list[tuple[int, str]], limit: int) -> None:
        """Split a partition by the next bits of its fingerprints, then settle each part
        (the order of the ids within each part is kept)."""
        shift = max(0, shift - SPLIT_BITS)
        parts = [path.with_name(f"{path.name}.{n:x}") for n in range(1 << SPLIT_BITS)]
        counts = [0] * len(parts)
        low, mask = self._low, len(parts) - 1
        with open(path, "rb") as src:
            while chunk := src.read(8 * self._buffer_entries * len(parts)):
                words = array("Q")
                words.frombytes(chunk)
                buckets: list[array[int]] = [array("Q") for _ in parts]
                for word in words:
                    buckets[((word >> low) >> shift) & mask].append(word)
                for n, bucket in enumerate(buckets):
                    if bucket:
                        with open(parts[n], "ab") as fh:
                            bucket.tofile(fh)
                        counts[n] += len(bucket)
        path.unlink()
        for part, count in zip(parts, counts, strict=True):
            if count:
                self._settle(part, count, shift, found, first, limit)

    # -- cleaning up -----------------------------------------------------------------

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        if self._made_dir is not None:
            with contextlib.suppress(OSError):  # unless something else is in it now
                self._made_dir.rmdir()
            self._made_dir = None
        if self._table is not None:
            self._words = None
            self._table.close()
            self._table = None
        self._buffers = []

    def __enter__(self) -> DuplicateTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _rehash(table: _Slots, capacity: int, low: int) -> _Slots:
    """The words of ``table`` in a new table of ``capacity`` slots; ``table`` is closed."""
    new = _Slots(capacity)
    slots, mask = new.words, capacity - 1
    for word in table.words:
        if word:
            i = (word >> low) & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = word
    table.close()
    return new


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _line_numbers(path: Path, offsets: list[int]) -> list[int]:
    """The 1-based line numbers of the lines starting at ``offsets`` (ascending)."""
    lines: list[int] = []
    if not offsets:
        return lines
    newlines, at = 0, 0
    todo = iter(offsets)
    target: int | None = next(todo)
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(READ_CHUNK)
            end = at + len(chunk)
            while target is not None and target <= end:
                lines.append(newlines + chunk.count(b"\n", 0, target - at) + 1)
                target = next(todo, None)
            if target is None or not chunk:
                break
            newlines += chunk.count(b"\n")
            at = end
    return lines
