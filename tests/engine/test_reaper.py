"""Expired files are deleted (record and bytes), except an input an unfinished batch reads."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from barge.blobs.local import LocalBlobs
from barge.domain.ids import new_batch_id, new_file_id
from barge.domain.models import BatchRecord, FileRecord
from barge.domain.status import Status
from barge.engine.reaper import reap_expired_files
from barge.exceptions import NotFound
from barge.store.sqlite import SQLiteStore


async def _file(store: SQLiteStore, blobs: LocalBlobs, expires_at: int | None) -> FileRecord:
    f = FileRecord(new_file_id(), "acct", "a.jsonl", "batch", 3, "0" * 64, 1, expires_at, 1)
    w = blobs.writer(f.id, max_bytes=100)
    w.write(b"{}\n")
    await w.commit()
    await store.create_file(f)
    return f


@pytest.mark.asyncio
async def test_reaper_deletes_expired_files_but_keeps_inputs_in_use(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    await store.open()
    blobs = LocalBlobs(tmp_path / "files", tmp_path / "tmp")
    try:
        now = int(time.time())
        expired = await _file(store, blobs, now - 10)
        in_use = await _file(store, blobs, now - 10)
        live = await _file(store, blobs, now + 3600)
        forever = await _file(store, blobs, None)
        await store.create_batch(BatchRecord(
            id=new_batch_id(), account="acct", endpoint="/v1/chat/completions",
            completion_window="24h", input_file_id=in_use.id, status=Status.PROCESSING,
            created_at=now, updated_at=now, expires_at=now + 86400,
        ))

        assert await reap_expired_files(store, blobs) == 1

        with pytest.raises(NotFound):
            await store.get_file("acct", expired.id)
        assert not (tmp_path / "files" / expired.id).exists()
        for kept in (in_use, live, forever):
            assert (await store.get_file("acct", kept.id)).id == kept.id
            assert (await blobs.local_path(kept.id)).read_bytes() == b"{}\n"
    finally:
        await store.close()
