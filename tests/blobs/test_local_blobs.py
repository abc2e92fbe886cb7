"""LocalBlobs: uploads invisible until committed, atomic publish, safe keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from barge.blobs.local import LocalBlobs
from barge.blobs.protocol import BlobInfo
from barge.exceptions import NotFound, PayloadTooLarge

BIG = 1 << 30


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "files", tmp_path / "tmp"


@pytest.fixture
def blobs(dirs: tuple[Path, Path]) -> LocalBlobs:
    root, tmp = dirs
    return LocalBlobs(root, tmp)


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def everything_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


async def collect(blobs: LocalBlobs, key: str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join([c async for c in blobs.stream(key, chunk_size)])


async def put(blobs: LocalBlobs, key: str, data: bytes) -> BlobInfo:
    w = blobs.writer(key, max_bytes=BIG)
    w.write(data)
    return await w.commit()


def test_creates_its_folders(tmp_path: Path) -> None:
    LocalBlobs(tmp_path / "a" / "files", tmp_path / "b" / "tmp")
    assert (tmp_path / "a" / "files").is_dir()
    assert (tmp_path / "b" / "tmp").is_dir()


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
        self, blobs: LocalBlobs, dirs: tuple[Path, Path], chunks: list[bytes], lines: int
    ) -> None:
        root, tmp = dirs
        data = b"".join(chunks)
        w = blobs.writer("file-abc", max_bytes=BIG)
        for c in chunks:
            w.write(c)
        info = await w.commit()
        assert info == BlobInfo(len(data), hashlib.sha256(data).hexdigest(), lines)
        assert (root / "file-abc").read_bytes() == data
        assert listing(tmp) == []
        assert blobs.local_path("file-abc") == root / "file-abc"
        assert await collect(blobs, "file-abc") == data

    @pytest.mark.asyncio
    async def test_nothing_visible_before_commit(
        self, blobs: LocalBlobs, dirs: tuple[Path, Path]
    ) -> None:
        root, _ = dirs
        w = blobs.writer("file-pending", max_bytes=BIG)
        w.write(b"half of it\n")
        assert listing(root) == []
        with pytest.raises(NotFound):
            blobs.local_path("file-pending")
        with pytest.raises(NotFound):
            await collect(blobs, "file-pending")
        await w.commit()
        assert listing(root) == ["file-pending"]

    @pytest.mark.asyncio
    async def test_commit_replaces_an_older_blob(self, blobs: LocalBlobs) -> None:
        await put(blobs, "file-x", b"old\n")
        info = await put(blobs, "file-x", b"new contents\n")
        assert info.bytes == len(b"new contents\n")
        assert await collect(blobs, "file-x") == b"new contents\n"

    @pytest.mark.asyncio
    async def test_writers_of_one_key_have_their_own_temporary_files(
        self, blobs: LocalBlobs, dirs: tuple[Path, Path]
    ) -> None:
        """Two uploads to one key at once never write into each other's bytes: the one
        committed is exactly its own, and aborting the other keeps it so."""
        root, tmp = dirs
        a, b = (blobs.writer("file-same", max_bytes=BIG) for _ in range(2))
        assert len(listing(tmp)) == 2
        for i in range(50):
            a.write(b"a%03d\n" % i)
            b.write(b"bb%03d\n" % i)
        want_a = b"".join(b"a%03d\n" % i for i in range(50))
        info = await a.commit()
        b.abort()
        assert await collect(blobs, "file-same") == want_a
        assert info.sha256 == hashlib.sha256(want_a).hexdigest()
        assert listing(tmp) == [] and listing(root) == ["file-same"]

    def test_abort_leaves_nothing(self, blobs: LocalBlobs, dirs: tuple[Path, Path]) -> None:
        root, tmp = dirs
        w = blobs.writer("file-gone", max_bytes=BIG)
        w.write(b"some bytes\n")
        assert listing(tmp) != []  # the upload is in progress in the tmp folder
        w.abort()
        assert listing(root) == []
        assert listing(tmp) == []

    def test_abort_twice_is_harmless(self, blobs: LocalBlobs, dirs: tuple[Path, Path]) -> None:
        w = blobs.writer("file-gone", max_bytes=BIG)
        w.abort()
        w.abort()
        assert listing(dirs[0]) == []
        assert listing(dirs[1]) == []

    def test_abort_keeps_an_older_blob(self, blobs: LocalBlobs, dirs: tuple[Path, Path]) -> None:
        root, _ = dirs
        (root / "file-keep").write_bytes(b"old\n")
        w = blobs.writer("file-keep", max_bytes=BIG)
        w.write(b"new\n")
        w.abort()
        assert (root / "file-keep").read_bytes() == b"old\n"

    @pytest.mark.asyncio
    async def test_exactly_max_bytes_is_fine(self, blobs: LocalBlobs) -> None:
        w = blobs.writer("file-edge", max_bytes=10)
        w.write(b"12345")
        w.write(b"6789\n")
        info = await w.commit()
        assert info.bytes == 10

    def test_over_max_bytes_raises_and_abort_cleans_up(
        self, blobs: LocalBlobs, dirs: tuple[Path, Path]
    ) -> None:
        root, tmp = dirs
        w = blobs.writer("file-big", max_bytes=10)
        w.write(b"12345")
        with pytest.raises(PayloadTooLarge) as exc:
            w.write(b"678901")
        assert exc.value.status_code == 413
        w.abort()
        assert listing(root) == []
        assert listing(tmp) == []

    def test_single_chunk_over_max_bytes(
        self, blobs: LocalBlobs, dirs: tuple[Path, Path]
    ) -> None:
        w = blobs.writer("file-big", max_bytes=3)
        with pytest.raises(PayloadTooLarge):
            w.write(b"four")
        w.abort()
        assert listing(dirs[0]) == []
        assert listing(dirs[1]) == []

    @pytest.mark.asyncio
    async def test_many_chunks_hash_like_one(self, blobs: LocalBlobs) -> None:
        data = b"".join(b'{"custom_id": "r%d"}\n' % i for i in range(2000))
        w = blobs.writer("file-many", max_bytes=BIG)
        for i in range(0, len(data), 777):
            w.write(data[i : i + 777])
        info = await w.commit()
        assert info == BlobInfo(len(data), hashlib.sha256(data).hexdigest(), 2000)


class TestPublishStreamDelete:
    @pytest.mark.asyncio
    async def test_publish_moves_the_file(
        self, blobs: LocalBlobs, dirs: tuple[Path, Path], tmp_path: Path
    ) -> None:
        root, _ = dirs
        work = tmp_path / "work"
        work.mkdir()
        source = work / "output.jsonl"
        source.write_bytes(b"result 1\nresult 2\n")
        await blobs.publish("file-out", source)
        assert not source.exists()  # moved, not copied
        assert (root / "file-out").read_bytes() == b"result 1\nresult 2\n"
        assert await collect(blobs, "file-out") == b"result 1\nresult 2\n"

    @pytest.mark.asyncio
    async def test_publish_replaces_atomically(
        self, blobs: LocalBlobs, dirs: tuple[Path, Path], tmp_path: Path
    ) -> None:
        root, _ = dirs
        await put(blobs, "file-out", b"old\n")
        old_inode = (root / "file-out").stat().st_ino
        source = tmp_path / "new.jsonl"
        source.write_bytes(b"new\n")
        new_inode = source.stat().st_ino
        await blobs.publish("file-out", source)
        # a rename: the blob is now the source's inode, never a half-copied file
        assert (root / "file-out").stat().st_ino == new_inode != old_inode
        assert await collect(blobs, "file-out") == b"new\n"

    @pytest.mark.asyncio
    async def test_publish_missing_source_fails_and_publishes_nothing(
        self, blobs: LocalBlobs, dirs: tuple[Path, Path], tmp_path: Path
    ) -> None:
        with pytest.raises(Exception):  # noqa: B017 - StorageError today; any error will do
            await blobs.publish("file-out", tmp_path / "missing.jsonl")
        assert listing(dirs[0]) == []

    @pytest.mark.asyncio
    async def test_stream_in_small_chunks(self, blobs: LocalBlobs) -> None:
        data = bytes(range(256)) * 40
        await put(blobs, "file-s", data)
        chunks = [c async for c in blobs.stream("file-s", 1000)]
        assert b"".join(chunks) == data
        assert all(len(c) <= 1000 for c in chunks)
        assert len(chunks) == -(-len(data) // 1000)

    @pytest.mark.asyncio
    async def test_stream_empty_blob(self, blobs: LocalBlobs) -> None:
        await put(blobs, "file-empty", b"")
        assert await collect(blobs, "file-empty") == b""

    @pytest.mark.asyncio
    async def test_stream_missing_is_not_found(self, blobs: LocalBlobs) -> None:
        with pytest.raises(NotFound):
            await collect(blobs, "file-missing")

    @pytest.mark.asyncio
    async def test_delete(self, blobs: LocalBlobs, dirs: tuple[Path, Path]) -> None:
        await put(blobs, "file-d", b"x\n")
        await put(blobs, "file-keep", b"y\n")
        await blobs.delete("file-d")
        assert listing(dirs[0]) == ["file-keep"]
        with pytest.raises(NotFound):
            blobs.local_path("file-d")
        await blobs.delete("file-d")  # deleting a missing blob is fine
        assert listing(dirs[0]) == ["file-keep"]


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
]


class TestKeys:
    @pytest.mark.parametrize("key", BAD_KEYS, ids=ascii)
    def test_writer_rejects_bad_keys(
        self, blobs: LocalBlobs, dirs: tuple[Path, Path], tmp_path: Path, key: str
    ) -> None:
        before = everything_under(tmp_path)
        with pytest.raises(NotFound):
            blobs.writer(key, max_bytes=BIG)
        assert everything_under(tmp_path) == before

    @pytest.mark.parametrize("key", BAD_KEYS, ids=ascii)
    def test_local_path_rejects_bad_keys(self, blobs: LocalBlobs, key: str) -> None:
        with pytest.raises(NotFound):
            blobs.local_path(key)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("key", BAD_KEYS, ids=ascii)
    async def test_stream_rejects_bad_keys(self, blobs: LocalBlobs, key: str) -> None:
        with pytest.raises(NotFound):
            await collect(blobs, key)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("key", BAD_KEYS, ids=ascii)
    async def test_delete_rejects_bad_keys(self, blobs: LocalBlobs, key: str) -> None:
        with pytest.raises(NotFound):
            await blobs.delete(key)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("key", BAD_KEYS, ids=ascii)
    async def test_publish_rejects_bad_keys(
        self, blobs: LocalBlobs, tmp_path: Path, key: str
    ) -> None:
        source = tmp_path / "src.jsonl"
        source.write_bytes(b"data\n")
        with pytest.raises(NotFound):
            await blobs.publish(key, source)
        assert source.read_bytes() == b"data\n"  # left where it was

    @pytest.mark.asyncio
    async def test_path_keys_never_touch_files_outside_root(
        self, tmp_path: Path
    ) -> None:
        root = tmp_path / "data" / "files"
        blobs = LocalBlobs(root, tmp_path / "data" / "tmp")
        victim = tmp_path / "data" / "victim"
        victim.write_bytes(b"precious\n")
        for key in ("../victim", "..%2Fvictim", str(victim)):
            with pytest.raises(NotFound):
                await blobs.delete(key)
            with pytest.raises(NotFound):
                await collect(blobs, key)
            with pytest.raises(NotFound):
                blobs.writer(key, max_bytes=BIG)
        assert victim.read_bytes() == b"precious\n"

    @pytest.mark.asyncio
    async def test_key_with_a_trailing_newline_is_rejected(
        self, blobs: LocalBlobs, tmp_path: Path
    ) -> None:
        """Keys are Barge's own ids (``[A-Za-z0-9_-]{1,128}``); ``"file-ok\\n"`` is not one,
        but a ``$``-anchored pattern lets a trailing newline through."""
        key = "file-ok\n"
        refused = []
        try:
            w = blobs.writer(key, max_bytes=BIG)
        except NotFound:
            refused.append("writer")
        else:
            w.abort()
        source = tmp_path / "src.jsonl"
        source.write_bytes(b"data\n")
        try:
            await blobs.publish(key, source)
        except NotFound:
            refused.append("publish")
        try:
            await blobs.delete(key)
        except NotFound:
            refused.append("delete")
        assert refused == ["writer", "publish", "delete"]

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "key", ["file-0123456789abcdef01234567", "batch_abc", "A-Z_0-9", "k" * 128, "x"]
    )
    async def test_good_keys(self, blobs: LocalBlobs, key: str) -> None:
        await put(blobs, key, b"ok\n")
        assert await collect(blobs, key) == b"ok\n"


class TestClearTmp:
    def test_removes_upload_leftovers_only(
        self, blobs: LocalBlobs, dirs: tuple[Path, Path]
    ) -> None:
        root, tmp = dirs
        (tmp / "file-a.upload").write_bytes(b"half")
        (tmp / "file-b.upload").write_bytes(b"")
        (tmp / "notes.txt").write_bytes(b"keep")
        (root / "file-c").write_bytes(b"committed")
        blobs.clear_tmp()
        assert listing(tmp) == ["notes.txt"]
        assert listing(root) == ["file-c"]

    def test_removes_the_file_of_an_unfinished_writer(
        self, blobs: LocalBlobs, dirs: tuple[Path, Path]
    ) -> None:
        w = blobs.writer("file-crash", max_bytes=BIG)
        w.write(b"partial")
        blobs.clear_tmp()  # as on startup after a crash
        assert listing(dirs[1]) == []
        assert listing(dirs[0]) == []
        w.abort()

    def test_on_an_empty_tmp(self, blobs: LocalBlobs) -> None:
        blobs.clear_tmp()
        blobs.clear_tmp()

    @pytest.mark.asyncio
    async def test_a_new_instance_clears_after_a_crash(
        self, dirs: tuple[Path, Path]
    ) -> None:
        root, tmp = dirs
        first = LocalBlobs(root, tmp)
        w = first.writer("file-crash", max_bytes=BIG)
        w.write(b"partial")
        await put(first, "file-done", b"done\n")
        second = LocalBlobs(root, tmp)  # a restart
        second.clear_tmp()
        assert listing(tmp) == []
        assert listing(root) == ["file-done"]
        w.abort()
