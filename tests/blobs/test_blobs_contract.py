"""The ``Blobs`` contract, run against every implementation: local disk, and S3 against a
moto server on loopback (one bucket prefix per test). Uploads invisible until committed,
writers that never share bytes, atomic publish, streaming, ranges, safe keys."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import obstore as obs
import pytest
from moto_s3 import PART_SIZE, MotoS3
from obstore.store import S3Store

from barge.blobs.local import LocalBlobs
from barge.blobs.protocol import BlobInfo, Blobs
from barge.blobs.s3 import S3Blobs
from barge.exceptions import NotFound, PayloadTooLarge

BIG = 1 << 30


@dataclass
class Harness:
    kind: str
    blobs: Blobs
    tmp: Path  # where writers spool
    stored: Callable[[], list[str]]  # the keys in the store, sorted

    def scratch(self) -> list[str]:
        return listing(self.tmp)


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def everything_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def s3_blobs(moto: MotoS3, prefix: str, tmp_path: Path, **kw: int) -> S3Blobs:
    return S3Blobs.from_url(f"s3://{moto.bucket}/{prefix}", tmp=tmp_path / "tmp",
                            cache=tmp_path / "cache", environ=moto.env(), **kw)


def s3_keys(moto: MotoS3, prefix: str) -> Callable[[], list[str]]:
    store = S3Store(moto.bucket, prefix=prefix, endpoint=moto.url, region=moto.region,
                    access_key_id=moto.access_key_id, secret_access_key=moto.secret_access_key,
                    client_options={"allow_http": True})
    return lambda: sorted(m["path"] for m in obs.list(store).collect())


@pytest.fixture(params=["local", "s3"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "local":
        root, tmp = tmp_path / "files", tmp_path / "tmp"
        return Harness("local", LocalBlobs(root, tmp), tmp, lambda: listing(root))
    moto: MotoS3 = request.getfixturevalue("moto_s3")
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    return Harness("s3", s3_blobs(moto, prefix, tmp_path, part_size=PART_SIZE), tmp_path / "tmp",
                   s3_keys(moto, prefix))


async def collect(blobs: Blobs, key: str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join([c async for c in blobs.stream(key, chunk_size)])


async def collect_range(blobs: Blobs, key: str, start: int, end: int, chunk_size: int = 1 << 20
                        ) -> bytes:
    return b"".join([c async for c in blobs.open_range(key, start, end, chunk_size=chunk_size)])


async def put(blobs: Blobs, key: str, data: bytes) -> BlobInfo:
    w = blobs.writer(key, max_bytes=BIG)
    w.write(data)
    return await w.commit()


@pytest.mark.asyncio
async def test_open_twice(h: Harness) -> None:
    await h.blobs.open()
    await h.blobs.open()
    assert h.stored() == []  # open's check leaves nothing behind


class TestWriter:
    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("chunks", "lines"),
        [
            ([b'{"a": 1}\n', b'{"b": 2}\n'], 2),  # trailing newline
            ([b'{"a": 1}\n', b'{"b": 2}'], 2),  # no trailing newline: last line still counts
            ([b"one\ntw", b"o\nthree"], 3),  # a line split across chunks
            ([b"\n"], 1),
            ([b"\n\n\n"], 3),
            ([b"x"], 1),
            ([b""], 0),
            ([], 0),
            ([b"a\n", b"", b"b"], 2),  # empty chunks change nothing
        ],
    )
    async def test_commit_reports_bytes_hash_lines(
        self, h: Harness, chunks: list[bytes], lines: int
    ) -> None:
        data = b"".join(chunks)
        w = h.blobs.writer("file-abc", max_bytes=BIG)
        for c in chunks:
            w.write(c)
        info = await w.commit()
        assert info == BlobInfo(len(data), hashlib.sha256(data).hexdigest(), lines)
        assert h.stored() == ["file-abc"]
        assert h.scratch() == []
        assert (await h.blobs.local_path("file-abc")).read_bytes() == data
        assert await collect(h.blobs, "file-abc") == data
        assert await h.blobs.exists("file-abc")

    @pytest.mark.asyncio
    async def test_nothing_visible_before_commit(self, h: Harness) -> None:
        w = h.blobs.writer("file-pending", max_bytes=BIG)
        w.write(b"half of it\n")
        assert h.stored() == []
        assert not await h.blobs.exists("file-pending")
        with pytest.raises(NotFound):
            await h.blobs.local_path("file-pending")
        with pytest.raises(NotFound):
            await collect(h.blobs, "file-pending")
        with pytest.raises(NotFound):
            await collect_range(h.blobs, "file-pending", 0, 4)
        await w.commit()
        assert h.stored() == ["file-pending"]

    @pytest.mark.asyncio
    async def test_commit_replaces_an_older_blob(self, h: Harness) -> None:
        await put(h.blobs, "file-x", b"old\n")
        assert (await h.blobs.local_path("file-x")).read_bytes() == b"old\n"
        info = await put(h.blobs, "file-x", b"new contents\n")
        assert info.bytes == len(b"new contents\n")
        assert await collect(h.blobs, "file-x") == b"new contents\n"
        assert (await h.blobs.local_path("file-x")).read_bytes() == b"new contents\n"

    @pytest.mark.asyncio
    async def test_writers_of_one_key_have_their_own_temporary_files(self, h: Harness) -> None:
        """Two uploads to one key at once never write into each other's bytes: the one
        committed is exactly its own, and aborting the other keeps it so."""
        a, b = (h.blobs.writer("file-same", max_bytes=BIG) for _ in range(2))
        assert len(h.scratch()) == 2
        for i in range(50):
            a.write(b"a%03d\n" % i)
            b.write(b"bb%03d\n" % i)
        want_a = b"".join(b"a%03d\n" % i for i in range(50))
        info = await a.commit()
        b.abort()
        assert await collect(h.blobs, "file-same") == want_a
        assert info.sha256 == hashlib.sha256(want_a).hexdigest()
        assert h.scratch() == [] and h.stored() == ["file-same"]

    @pytest.mark.asyncio
    async def test_the_last_writer_to_commit_wins(self, h: Harness) -> None:
        a, b = (h.blobs.writer("file-race", max_bytes=BIG) for _ in range(2))
        a.write(b"from a\n")
        b.write(b"from b\n")
        await b.commit()
        await a.commit()
        assert await collect(h.blobs, "file-race") == b"from a\n"
        assert h.scratch() == []

    def test_abort_leaves_nothing(self, h: Harness) -> None:
        w = h.blobs.writer("file-gone", max_bytes=BIG)
        w.write(b"some bytes\n")
        assert h.scratch() != []  # the upload is in progress in the tmp folder
        w.abort()
        assert h.stored() == []
        assert h.scratch() == []

    def test_abort_twice_is_harmless(self, h: Harness) -> None:
        w = h.blobs.writer("file-gone", max_bytes=BIG)
        w.abort()
        w.abort()
        assert h.stored() == []
        assert h.scratch() == []

    @pytest.mark.asyncio
    async def test_abort_after_commit_keeps_the_blob(self, h: Harness) -> None:
        w = h.blobs.writer("file-kept", max_bytes=BIG)
        w.write(b"kept\n")
        await w.commit()
        w.abort()
        assert await collect(h.blobs, "file-kept") == b"kept\n"
        assert h.scratch() == []

    @pytest.mark.asyncio
    async def test_abort_keeps_an_older_blob(self, h: Harness) -> None:
        await put(h.blobs, "file-keep", b"old\n")
        w = h.blobs.writer("file-keep", max_bytes=BIG)
        w.write(b"new\n")
        w.abort()
        assert await collect(h.blobs, "file-keep") == b"old\n"

    @pytest.mark.asyncio
    async def test_exactly_max_bytes_is_fine(self, h: Harness) -> None:
        w = h.blobs.writer("file-edge", max_bytes=10)
        w.write(b"12345")
        w.write(b"6789\n")
        info = await w.commit()
        assert info.bytes == 10

    def test_over_max_bytes_raises_and_abort_cleans_up(self, h: Harness) -> None:
        w = h.blobs.writer("file-big", max_bytes=10)
        w.write(b"12345")
        with pytest.raises(PayloadTooLarge) as exc:
            w.write(b"678901")
        assert exc.value.status_code == 413
        w.abort()
        assert h.stored() == []
        assert h.scratch() == []

    def test_single_chunk_over_max_bytes(self, h: Harness) -> None:
        w = h.blobs.writer("file-big", max_bytes=3)
        with pytest.raises(PayloadTooLarge):
            w.write(b"four")
        w.abort()
        assert h.stored() == []
        assert h.scratch() == []

    @pytest.mark.asyncio
    async def test_many_chunks_hash_like_one(self, h: Harness) -> None:
        data = b"".join(b'{"custom_id": "r%d"}\n' % i for i in range(2000))
        w = h.blobs.writer("file-many", max_bytes=BIG)
        for i in range(0, len(data), 777):
            w.write(data[i : i + 777])
        info = await w.commit()
        assert info == BlobInfo(len(data), hashlib.sha256(data).hexdigest(), 2000)
        assert await collect(h.blobs, "file-many") == data


class TestPublishStreamDelete:
    @pytest.mark.asyncio
    async def test_publish_consumes_the_file(self, h: Harness, tmp_path: Path) -> None:
        work = tmp_path / "work"
        work.mkdir()
        source = work / "output.jsonl"
        source.write_bytes(b"result 1\nresult 2\n")
        await h.blobs.publish("file-out", source)
        assert not source.exists()  # moved into the store
        assert h.stored() == ["file-out"]
        assert await collect(h.blobs, "file-out") == b"result 1\nresult 2\n"
        assert (await h.blobs.local_path("file-out")).read_bytes() == b"result 1\nresult 2\n"

    @pytest.mark.asyncio
    async def test_publish_replaces(self, h: Harness, tmp_path: Path) -> None:
        await put(h.blobs, "file-out", b"old\n")
        assert (await h.blobs.local_path("file-out")).read_bytes() == b"old\n"
        source = tmp_path / "new.jsonl"
        source.write_bytes(b"new\n")
        await h.blobs.publish("file-out", source)
        assert await collect(h.blobs, "file-out") == b"new\n"
        assert (await h.blobs.local_path("file-out")).read_bytes() == b"new\n"

    @pytest.mark.asyncio
    async def test_publish_an_empty_file(self, h: Harness, tmp_path: Path) -> None:
        source = tmp_path / "empty.jsonl"
        source.write_bytes(b"")
        await h.blobs.publish("file-empty", source)
        assert await h.blobs.exists("file-empty")
        assert await collect(h.blobs, "file-empty") == b""

    @pytest.mark.asyncio
    async def test_publish_missing_source_fails_and_publishes_nothing(
        self, h: Harness, tmp_path: Path
    ) -> None:
        with pytest.raises(Exception):  # noqa: B017 - StorageError today; any error will do
            await h.blobs.publish("file-out", tmp_path / "missing.jsonl")
        assert h.stored() == []

    @pytest.mark.asyncio
    async def test_stream_in_small_chunks(self, h: Harness) -> None:
        data = bytes(range(256)) * 40
        await put(h.blobs, "file-s", data)
        chunks = [c async for c in h.blobs.stream("file-s", 1000)]
        assert b"".join(chunks) == data
        assert all(len(c) <= 1000 for c in chunks)
        assert len(chunks) == -(-len(data) // 1000)

    @pytest.mark.asyncio
    async def test_stream_empty_blob(self, h: Harness) -> None:
        await put(h.blobs, "file-empty", b"")
        assert await collect(h.blobs, "file-empty") == b""

    @pytest.mark.asyncio
    async def test_stream_missing_is_not_found(self, h: Harness) -> None:
        with pytest.raises(NotFound):
            await collect(h.blobs, "file-missing")

    @pytest.mark.asyncio
    async def test_exists(self, h: Harness) -> None:
        assert not await h.blobs.exists("file-e")
        await put(h.blobs, "file-e", b"")
        assert await h.blobs.exists("file-e")
        await h.blobs.delete("file-e")
        assert not await h.blobs.exists("file-e")

    @pytest.mark.asyncio
    async def test_local_path_missing_is_not_found(self, h: Harness) -> None:
        with pytest.raises(NotFound):
            await h.blobs.local_path("file-missing")

    @pytest.mark.asyncio
    async def test_local_path_twice_is_the_same_file(self, h: Harness) -> None:
        await put(h.blobs, "file-lp", b"bytes\n")
        first = await h.blobs.local_path("file-lp")
        assert await h.blobs.local_path("file-lp") == first
        assert first.read_bytes() == b"bytes\n"

    @pytest.mark.asyncio
    async def test_delete(self, h: Harness) -> None:
        await put(h.blobs, "file-d", b"x\n")
        await put(h.blobs, "file-keep", b"y\n")
        await h.blobs.local_path("file-d")
        await h.blobs.delete("file-d")
        assert h.stored() == ["file-keep"]
        with pytest.raises(NotFound):
            await h.blobs.local_path("file-d")
        assert not await h.blobs.exists("file-d")
        await h.blobs.delete("file-d")  # deleting a missing blob is fine
        await h.blobs.delete("file-never")
        assert h.stored() == ["file-keep"]


DATA = bytes(range(256)) * 10  # 2,560 bytes


class TestOpenRange:
    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("start", "end"),
        [
            (0, len(DATA)),  # all of it
            (0, 1),
            (5, 6),
            (100, 1100),
            (len(DATA) - 1, len(DATA)),  # the last byte
            (1000, len(DATA) + 500),  # the end past the blob's end stops there
            (0, 10**9),
        ],
    )
    async def test_ranges_are_slices(self, h: Harness, start: int, end: int) -> None:
        await put(h.blobs, "file-r", DATA)
        assert await collect_range(h.blobs, "file-r", start, end) == DATA[start:end]

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("start", "end"),
        [(7, 7), (0, 0), (len(DATA), len(DATA)), (len(DATA), len(DATA) + 10), (10**6, 10**6 + 1)],
    )
    async def test_empty_ranges_yield_nothing(self, h: Harness, start: int, end: int) -> None:
        await put(h.blobs, "file-r", DATA)
        assert [c async for c in h.blobs.open_range("file-r", start, end)] == []

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("start", "end"), [(0, 0), (0, 10), (3, 4)])
    async def test_ranges_of_an_empty_blob(self, h: Harness, start: int, end: int) -> None:
        await put(h.blobs, "file-empty", b"")
        assert await collect_range(h.blobs, "file-empty", start, end) == b""

    @pytest.mark.asyncio
    async def test_chunks(self, h: Harness) -> None:
        await put(h.blobs, "file-r", DATA)
        chunks = [c async for c in h.blobs.open_range("file-r", 10, 2010, chunk_size=300)]
        assert b"".join(chunks) == DATA[10:2010]
        assert [len(c) for c in chunks] == [300] * 6 + [200]

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("start", "end"), [(0, 10), (0, 0), (5, 5)])
    async def test_missing_is_not_found(self, h: Harness, start: int, end: int) -> None:
        with pytest.raises(NotFound):
            await collect_range(h.blobs, "file-missing", start, end)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 4), (-3, -1)])
    async def test_bad_ranges_are_value_errors(self, h: Harness, start: int, end: int) -> None:
        await put(h.blobs, "file-r", DATA)
        with pytest.raises(ValueError):
            await collect_range(h.blobs, "file-r", start, end)


BAD_KEYS = [
    "",
    "../x",
    "..",
    ".",
    "a/b",
    "/etc/passwd",
    "a\\b",
    "..\\x",
    "x/../../y",
    "file-ok/",
    "a b",
    "a\x00b",
    "k" * 129,
    ".barge-probe-0123",
]


class TestKeys:
    @pytest.mark.parametrize("key", BAD_KEYS, ids=ascii)
    def test_writer_rejects_bad_keys(self, h: Harness, tmp_path: Path, key: str) -> None:
        before = everything_under(tmp_path)
        with pytest.raises(NotFound):
            h.blobs.writer(key, max_bytes=BIG)
        assert everything_under(tmp_path) == before
        assert h.stored() == []

    @pytest.mark.asyncio
    @pytest.mark.parametrize("key", BAD_KEYS, ids=ascii)
    async def test_reads_reject_bad_keys(self, h: Harness, key: str) -> None:
        with pytest.raises(NotFound):
            await h.blobs.local_path(key)
        with pytest.raises(NotFound):
            await collect(h.blobs, key)
        with pytest.raises(NotFound):
            await collect_range(h.blobs, key, 0, 10)
        assert not await h.blobs.exists(key)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("key", BAD_KEYS, ids=ascii)
    async def test_delete_rejects_bad_keys(self, h: Harness, key: str) -> None:
        with pytest.raises(NotFound):
            await h.blobs.delete(key)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("key", BAD_KEYS, ids=ascii)
    async def test_publish_rejects_bad_keys(self, h: Harness, tmp_path: Path, key: str) -> None:
        source = tmp_path / "src.jsonl"
        source.write_bytes(b"data\n")
        with pytest.raises(NotFound):
            await h.blobs.publish(key, source)
        assert source.read_bytes() == b"data\n"  # left where it was
        assert h.stored() == []

    @pytest.mark.asyncio
    async def test_key_with_a_trailing_newline_is_rejected(
        self, h: Harness, tmp_path: Path
    ) -> None:
        """Keys are Barge's own ids (``[A-Za-z0-9_-]{1,128}``); ``"file-ok\\n"`` is not one,
        but a ``$``-anchored pattern lets a trailing newline through."""
        key = "file-ok\n"
        refused = []
        try:
            w = h.blobs.writer(key, max_bytes=BIG)
        except NotFound:
            refused.append("writer")
        else:
            w.abort()
        source = tmp_path / "src.jsonl"
        source.write_bytes(b"data\n")
        try:
            await h.blobs.publish(key, source)
        except NotFound:
            refused.append("publish")
        try:
            await h.blobs.delete(key)
        except NotFound:
            refused.append("delete")
        assert refused == ["writer", "publish", "delete"]

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "key", ["file-0123456789abcdef01234567", "batch_abc", "A-Z_0-9", "k" * 128, "x"]
    )
    async def test_good_keys(self, h: Harness, key: str) -> None:
        await put(h.blobs, key, b"ok\n")
        assert await collect(h.blobs, key) == b"ok\n"
        assert h.stored() == [key]
