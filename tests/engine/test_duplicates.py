"""DuplicateTracker: repeated custom_ids found exactly, in bounded memory, in memory and
after spilling to partition files; and scan_input's memory does not grow with the file."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from barge.domain.models import LineError
from barge.domain.validation import LineCodes
from barge.engine import duplicates
from barge.engine.duplicates import DuplicateTracker
from barge.engine.scan import MAX_REPORTED_ERRORS, scan_input

CHAT = "/v1/chat/completions"


def line(custom_id: str, model: str = "m") -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT,
                         "body": {"model": model}}) + b"\n"


def write(path: Path, ids: list[str], models: list[str] | None = None) -> list[int]:
    """One request line per id; the byte offset of each."""
    offsets, data = [], bytearray()
    for n, custom_id in enumerate(ids):
        offsets.append(len(data))
        data += line(custom_id, "m" if models is None else models[n])
    path.write_bytes(bytes(data))
    return offsets


def expected_repeats(ids: list[str]) -> list[int]:
    """The 1-based lines whose id an earlier line had: what a set of strings says."""
    seen: set[str] = set()
    repeats = []
    for n, custom_id in enumerate(ids, 1):
        if custom_id in seen:
            repeats.append(n)
        seen.add(custom_id)
    return repeats


def run(tracker: DuplicateTracker, ids: list[str], offsets: list[int],
        refused: Callable[[int], bool] = lambda n: False) -> tuple[list[LineError], int, int]:
    """Check every id; (every duplicate error in line order, how many, of which refused)."""
    at_once = [e for n, (custom_id, offset) in enumerate(zip(ids, offsets, strict=True), 1)
               if (e := tracker.check(custom_id, n, offset, refused(n))) is not None]
    late = tracker.finish(10**9)
    errors = sorted(at_once + late.errors, key=lambda e: e.line or 0)
    return errors, len(at_once) + late.count, late.refused


def constant(_: str) -> int:
    return 42  # every id collides with every other


def tiny(custom_id: str) -> int:
    return len(custom_id) % 3  # a few fingerprints for many ids


# -- the tracker on its own ----------------------------------------------------------------


def test_first_sightings_are_fine_and_repeats_are_errors_at_the_repeating_line(
        tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    ids = ["a", "b", "c", "d", "a", "A", "a"]
    offsets = write(path, ids)
    with DuplicateTracker(path) as t:
        got = [t.check(custom_id, n, off) for n, (custom_id, off)
               in enumerate(zip(ids, offsets, strict=True), 1)]
        assert t.finish(10).count == 0 and not t.spilled
    assert [n for n, e in enumerate(got, 1) if e is not None] == [5, 7]  # ids are case-sensitive
    err = got[4]
    assert err is not None
    assert (err.code, err.line, err.param) == (LineCodes.DUPLICATE_CUSTOM_ID, 5, "custom_id")
    assert err.message == "The custom_id 'a' appears more than once."


def test_trackers_are_independent(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    offsets = write(path, ["a"])
    with DuplicateTracker(path) as first, DuplicateTracker(path) as second:
        assert first.check("a", 1, offsets[0]) is None
        assert second.check("a", 1, offsets[0]) is None


@pytest.mark.parametrize("fingerprint", [hash, constant, tiny], ids=["hash", "constant", "tiny"])
@pytest.mark.parametrize("memory_entries", [1 << 19, 8, 1], ids=["memory", "spill-8", "spill-1"])
def test_repeats_are_found_exactly_whatever_the_fingerprints(
        tmp_path: Path, fingerprint: Callable[[str], int], memory_entries: int) -> None:
    """Distinct ids sharing a fingerprint (all of them, with ``constant``) are never taken
    for each other; every repeat is found at its line, before and after a spill."""
    rng = random.Random(7)
    ids = [f"id-{rng.randrange(150)}" for _ in range(300)] + [f"x{n}" for n in range(40)]
    rng.shuffle(ids)
    path = tmp_path / "in.jsonl"
    offsets = write(path, ids)
    with DuplicateTracker(path, memory_entries=memory_entries, fingerprint=fingerprint,
                          spill_dir=tmp_path / "work") as t:
        errors, count, _ = run(t, ids, offsets)
        assert t.spilled == (memory_entries < 200)
    want = expected_repeats(ids)
    assert [e.line for e in errors] == want
    assert count == len(want)
    for e in errors:
        assert e.line is not None
        assert e.message == f"The custom_id {ids[e.line - 1]!r} appears more than once."
    assert not any(tmp_path.glob("work/*"))  # the scratch files are gone (or never were)


def test_a_forced_collision_does_not_flag_distinct_ids(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    ids = [f"distinct-{n}" for n in range(50)]
    offsets = write(path, ids)
    for memory_entries in (1 << 19, 4):
        with DuplicateTracker(path, memory_entries=memory_entries, fingerprint=constant) as t:
            assert run(t, ids, offsets) == ([], 0, 0)


def test_after_a_spill_partitions_are_written_in_the_folder_given_and_removed(
        tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    ids = [f"r{n}" for n in range(30_000)] + ["r5", "r29999", "r0"]
    offsets = write(path, ids)
    work = tmp_path / "work" / "batch_x"
    with DuplicateTracker(path, memory_entries=64, spill_dir=work) as t:
        at_once = [t.check(c, n, o) for n, (c, o) in enumerate(zip(ids, offsets, strict=True), 1)]
        assert t.spilled and not any(at_once)  # found only at the end
        scratch = list(work.iterdir())
        assert len(scratch) == 1 and scratch[0].name.startswith("duplicates-")
        assert sum(f.stat().st_size for f in scratch[0].iterdir()) > 0
        late = t.finish(2)
        assert late.count == 3
        assert [(e.line, e.message) for e in late.errors] == [  # the first two, by line
            (30_001, "The custom_id 'r5' appears more than once."),
            (30_002, "The custom_id 'r29999' appears more than once."),
        ]
    assert not work.exists()  # made for the spill, and gone with it
    assert (tmp_path / "work").is_dir()


def test_oversized_partitions_are_split_again(tmp_path: Path) -> None:
    """A partition far larger than planned (ids unevenly spread) is split until each
    part fits, and still finds every repeat."""
    path = tmp_path / "in.jsonl"
    ids = [f"k{n % 700}" for n in range(1500)]
    offsets = write(path, ids)

    def skewed(custom_id: str) -> int:  # the top bits are the same for every id
        return hash(custom_id) & ((1 << 40) - 1)

    with DuplicateTracker(path, memory_entries=16, fingerprint=skewed) as t:
        errors, count, _ = run(t, ids, offsets)
    assert [e.line for e in errors] == expected_repeats(ids)
    assert count == 800


def test_refused_lines_found_repeating_late_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    ids = [f"q{n}" for n in range(100)] + ["q1", "q2", "q3"]
    offsets = write(path, ids)
    with DuplicateTracker(path, memory_entries=8) as t:
        _, count, refused = run(t, ids, offsets, refused=lambda n: n in (101, 103))
    assert (count, refused) == (3, 2)


# -- scan_input ----------------------------------------------------------------------------


@pytest.mark.parametrize("memory_ids", [1 << 19, 4], ids=["memory", "spilled"])
def test_scan_reports_the_same_errors_before_and_after_a_spill(tmp_path: Path,
                                                               memory_ids: int) -> None:
    """A repeat replaces the model_not_found its line would have, and the errors stay in
    line order with an exact count, however the repeats were found."""
    path = tmp_path / "in.jsonl"
    ids = [f"c{n}" for n in range(30)] + ["c3", "c4", "fresh", "c5", "fresh"]
    models = ["m"] * 30 + ["nope", "m", "nope", "m", "nope"]
    write(path, ids, models)
    with path.open("ab") as fh:
        fh.write(b"{bad\n")
    result = scan_input(path, batch_id="b", endpoint=CHAT, max_requests=100, max_bytes=1 << 20,
                        slice_lines=7, serves=lambda m: m == "m", scratch=tmp_path / "w",
                        memory_ids=memory_ids)
    assert [(e.code, e.line) for e in result.errors] == [
        (LineCodes.DUPLICATE_CUSTOM_ID, 31), (LineCodes.DUPLICATE_CUSTOM_ID, 32),
        (LineCodes.MODEL_NOT_FOUND, 33), (LineCodes.DUPLICATE_CUSTOM_ID, 34),
        (LineCodes.DUPLICATE_CUSTOM_ID, 35), (LineCodes.INVALID_JSON, 36),
    ]
    assert result.error_count == 6
    assert result.total == 36
    assert not any(tmp_path.glob("w/*"))


def test_scan_caps_late_duplicates_but_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    n = MAX_REPORTED_ERRORS + 500
    write(path, [f"d{i}" for i in range(n)] * 2)
    result = scan_input(path, batch_id="b", endpoint=CHAT, max_requests=10 * n,
                        max_bytes=1 << 30, slice_lines=1000, memory_ids=64)
    assert result.error_count == n
    assert len(result.errors) == MAX_REPORTED_ERRORS
    assert [e.line for e in result.errors] == list(range(n + 1, n + 1 + MAX_REPORTED_ERRORS))
    assert result.errors[0].message == "The custom_id 'd0' appears more than once."


def _scan_peak(path: Path, work: Path, tables: list[int]) -> tuple[int, int]:
    """(peak of the Python heap, most slots of a table) while ``path`` is validated."""
    tables.clear()
    tracemalloc.start()
    try:
        result = scan_input(path, batch_id="b", endpoint=CHAT, max_requests=10**7,
                            max_bytes=1 << 40, slice_lines=1 << 30, scratch=work,
                            memory_ids=1 << 12)
        assert result.errors == []
        return tracemalloc.get_traced_memory()[1], max(tables)
    finally:
        tracemalloc.stop()


def test_scan_memory_does_not_grow_with_the_lines(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the table's size, validating ten times the lines takes (nearly) no more
    memory: at most a few bytes a line, where a set of the ids took about 100. (The
    tables are memory maps, which tracemalloc does not see: their sizes are recorded.)"""
    tables: list[int] = []

    class Recorded(duplicates._Slots):
        def __init__(self, capacity: int) -> None:
            tables.append(capacity)
            super().__init__(capacity)

    monkeypatch.setattr(duplicates, "_Slots", Recorded)
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    for path, n in ((small, 20_000), (large, 200_000)):
        with path.open("wb") as fh:
            fh.write(b"".join(line(f"request-{i:08d}") for i in range(n)))
    small_peak, small_table = _scan_peak(small, tmp_path / "w", tables)
    large_peak, large_table = _scan_peak(large, tmp_path / "w", tables)
    # ~0 bytes a line run alone; up to ~22 seen late in a full run (what else the
    # process holds moves the peak). A set of the ids costs about 100 a line.
    assert (large_peak - small_peak) / 180_000 <= 40, (small_peak, large_peak)
    assert large_table == small_table <= 2 * (1 << 12)
