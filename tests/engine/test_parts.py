"""Durable result parts on real local disk: PartWriter, read_records, done_map."""

from __future__ import annotations

from pathlib import Path

import orjson

from barge.engine.parts import PartWriter, done_map, parse_records, read_records
from barge.store.protocol import SliceProgress


def rec(i: int) -> bytes:
    return orjson.dumps({"custom_id": f"c-{i}", "note": "a b  c"})  # spaces inside on purpose


def test_append_take_sync_round_trip(tmp_path: Path) -> None:
    part = tmp_path / "work" / "batch_x" / "000000.part"
    w = PartWriter(part, 0, 0)
    assert part.exists() and part.stat().st_size == 0  # parent folder created
    assert not w.pending
    w.append(0, True, rec(0))
    w.append(2, False, rec(2))
    w.append(1, True, rec(1))
    assert w.pending
    data, completed, failed, done, usage, ok_bytes, err_bytes = w.take()
    assert (completed, failed, done) == (2, 1, False)
    # what the lines add to the output and error files, a newline each
    assert (ok_bytes, err_bytes) == (len(rec(0)) + len(rec(1)) + 2, len(rec(2)) + 1)
    assert data == b"0 o " + rec(0) + b"\n2 e " + rec(2) + b"\n1 o " + rec(1) + b"\n"
    assert not w.pending  # take empties the buffer
    assert part.stat().st_size == 0  # nothing is on disk before sync
    progress = w.sync(data, completed, failed, done, usage, ok_bytes, err_bytes)
    assert progress == SliceProgress(0, len(data), 2, 1, False, ok_bytes=ok_bytes,
                                     err_bytes=err_bytes, part_start=0)
    assert part.read_bytes() == data
    assert list(read_records(part, len(data))) == [
        (0, True, rec(0)), (2, False, rec(2)), (1, True, rec(1))
    ]

    # a second round appends and reports deltas, not totals
    w.append(3, True, rec(3))
    data2, c2, f2, d2, _, ok2, err2 = w.take()
    assert (ok2, err2) == (len(rec(3)) + 1, 0)  # deltas too
    progress2 = w.sync(data2, c2, f2, d2, ok_bytes=ok2)
    assert progress2 == SliceProgress(0, len(data) + len(data2), 1, 0, False, ok_bytes=ok2,
                                      part_start=len(data))
    # the records of one flush, read back from its part range
    assert list(parse_records(part.read_bytes()[progress2.part_start:])) == [
        (3, True, rec(3))]
    assert list(parse_records(b"7 e x\n8 o half")) == [(7, False, b"x")]
    assert [r[0] for r in read_records(part, progress2.committed_bytes)] == [0, 2, 1, 3]


def test_done_is_reported_once(tmp_path: Path) -> None:
    w = PartWriter(tmp_path / "p.part", 5, 0)
    w.mark_done()
    assert w.pending
    data, completed, failed, done, *_ = w.take()
    assert (data, completed, failed, done) == (b"", 0, 0, True)
    assert not w.pending
    assert w.sync(data, completed, failed, done) == SliceProgress(5, 0, 0, 0, True)
    assert not (tmp_path / "p.part").read_bytes()


def test_empty_sync_does_not_touch_the_file(tmp_path: Path) -> None:
    part = tmp_path / "p.part"
    w = PartWriter(part, 0, 0)
    assert w.sync(b"", 0, 0, False) == SliceProgress(0, 0, 0, 0, False)
    assert part.stat().st_size == 0


def test_read_records_stops_at_the_committed_length(tmp_path: Path) -> None:
    part = tmp_path / "p.part"
    w = PartWriter(part, 0, 0)
    for i in range(5):
        w.append(i, i % 2 == 0, rec(i))
    data, *_ = w.take()
    w.sync(data, 5, 0, False)
    lengths = [len(x) + 1 for x in data.split(b"\n")[:-1]]
    committed = 0
    for k, n in enumerate(lengths):
        assert [r[0] for r in read_records(part, committed)] == list(range(k))
        # a committed length in the middle of a record never yields that record
        assert [r[0] for r in read_records(part, committed + n - 1)] == list(range(k))
        committed += n
    assert [r[0] for r in read_records(part, committed)] == [0, 1, 2, 3, 4]
    assert [ok for _, ok, _ in read_records(part, committed)] == [True, False, True, False, True]


def test_read_records_of_nothing(tmp_path: Path) -> None:
    assert list(read_records(tmp_path / "missing.part", 100)) == []
    part = tmp_path / "p.part"
    part.write_bytes(b"0 o {}\n")
    assert list(read_records(part, 0)) == []


def test_read_records_ignores_a_partial_tail(tmp_path: Path) -> None:
    part = tmp_path / "p.part"
    good = b"0 o " + rec(0) + b"\n"
    part.write_bytes(good + b"1 o {\"custom_id\": \"c-")  # crash mid-record, no newline
    size = part.stat().st_size
    # even a committed length that (wrongly) covers the partial record yields only whole ones
    assert list(read_records(part, size)) == [(0, True, rec(0))]
    assert list(read_records(part, len(good))) == [(0, True, rec(0))]


def test_done_map(tmp_path: Path) -> None:
    part = tmp_path / "p.part"
    w = PartWriter(part, 0, 0)
    for i in (0, 3, 7):
        w.append(i, i != 3, rec(i))
    data, c, f, d, *_ = w.take()
    p = w.sync(data, c, f, d)
    assert done_map(part, p.committed_bytes, 8) == bytearray([1, 0, 0, 1, 0, 0, 0, 1])
    assert done_map(part, 0, 8) == bytearray(8)
    assert done_map(tmp_path / "none.part", 0, 3) == bytearray(3)
    first = len(b"0 o " + rec(0) + b"\n")
    assert done_map(part, first, 8) == bytearray([1, 0, 0, 0, 0, 0, 0, 0])


def test_reopening_truncates_an_uncommitted_tail(tmp_path: Path) -> None:
    """Crash simulation: results synced to disk past what the store acknowledged, plus
    garbage; a writer reopened at the acknowledged length cuts all of it off."""
    part = tmp_path / "w" / "000003.part"
    w = PartWriter(part, 3, 0)
    w.append(0, True, rec(0))
    w.append(1, False, rec(1))
    acknowledged = w.sync(*w.take()).committed_bytes
    w.append(2, True, rec(2))
    w.sync(*w.take())  # durable on disk, but the store never heard of it
    with open(part, "ab") as fh:
        fh.write(b"\x00\xffgarbage 9 o {not json\n7 o {\"half\":")
    assert part.stat().st_size > acknowledged
    assert [r[0] for r in read_records(part, acknowledged)] == [0, 1]

    w2 = PartWriter(part, 3, acknowledged)
    assert part.stat().st_size == acknowledged
    assert done_map(part, acknowledged, 3) == bytearray([1, 1, 0])
    w2.append(2, True, rec(2))
    p = w2.sync(*w2.take())
    assert p.no == 3 and p.committed_bytes == part.stat().st_size
    assert list(read_records(part, p.committed_bytes)) == [
        (0, True, rec(0)), (1, False, rec(1)), (2, True, rec(2))
    ]


def test_reopening_at_zero_empties_the_part(tmp_path: Path) -> None:
    part = tmp_path / "p.part"
    part.write_bytes(b"0 o {}\n1 o {}\n")
    PartWriter(part, 0, 0)
    assert part.read_bytes() == b""
