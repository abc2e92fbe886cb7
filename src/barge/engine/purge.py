"""Deleting a batch: its result files' bytes, its work folder, then its records."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

from barge.blobs.protocol import Blobs
from barge.domain.models import BatchRecord
from barge.exceptions import NotFound
from barge.store.protocol import Store


async def purge_batch(store: Store, blobs: Blobs, work_dir: Path, b: BatchRecord) -> bool:
    """Finish deleting a batch marked ``deleting``; safe to run again after a crash.
    Returns whether this call removed its record (False: another purge of it did)."""
    for file_id in (b.output_file_id, b.error_file_id):
        if file_id is not None:
            await blobs.delete(file_id)
    await asyncio.to_thread(shutil.rmtree, work_dir / b.id, True)
    try:
        await store.delete_batch(b.id)
    except NotFound:  # another purge of the same batch finished first
        return False
    return True


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
