"""LocalBlobs only: where its files go, atomic renames, fsyncs, clearing a crash's
leftovers. What every implementation must do is in test_blobs_contract.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from barge.blobs.local import LocalBlobs
from barge.blobs.protocol import BlobInfo
from barge.exceptions import NotFound

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


@pytest.mark.asyncio
async def test_open_makes_missing_folders_again(
    blobs: LocalBlobs, dirs: tuple[Path, Path]
) -> None:
    root, tmp = dirs
    tmp.rmdir()
    root.rmdir()
    await blobs.open()
    assert root.is_dir() and tmp.is_dir()


@pytest.mark.asyncio
async def test_a_blob_is_one_file_under_root(blobs: LocalBlobs, dirs: tuple[Path, Path]) -> None:
    root, tmp = dirs
    w = blobs.writer("file-abc", max_bytes=BIG)
    assert [p.endswith(".upload") and p.startswith("file-abc.") for p in listing(tmp)] == [True]
    w.write(b"data\n")
    await w.commit()
    assert (root / "file-abc").read_bytes() == b"data\n"
    assert await blobs.local_path("file-abc") == root / "file-abc"
    assert listing(tmp) == []


@pytest.mark.asyncio
async def test_commit_fsyncs_the_file_and_its_folder(
    blobs: LocalBlobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                      else str(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await put(blobs, "file-sync", b"x\n")
    assert len(synced) == 2  # the upload's file, then the folder it was renamed into
    if os.path.exists("/proc/self/fd"):
        assert synced[0].endswith(".upload") and synced[1].endswith("files")


@pytest.mark.asyncio
async def test_publish_renames_the_file(
    blobs: LocalBlobs, dirs: tuple[Path, Path], tmp_path: Path
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
    assert not source.exists()
    assert await collect(blobs, "file-out") == b"new\n"


@pytest.mark.asyncio
async def test_path_keys_never_touch_files_outside_root(tmp_path: Path) -> None:
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
        with pytest.raises(NotFound):
            await blobs.local_path(key)
        assert not await blobs.exists(key)
    assert victim.read_bytes() == b"precious\n"


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

    @pytest.mark.asyncio
    async def test_open_clears_them(self, blobs: LocalBlobs, dirs: tuple[Path, Path]) -> None:
        root, tmp = dirs
        (tmp / "file-a.upload").write_bytes(b"half")
        (root / "file-c").write_bytes(b"committed")
        await blobs.open()
        assert listing(tmp) == []
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
        await second.open()
        assert listing(tmp) == []
        assert listing(root) == ["file-done"]
        w.abort()
