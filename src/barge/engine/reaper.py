"""Deletes files whose ``expires_at`` has passed (bytes and record)."""

from __future__ import annotations

import logging
import time

from barge.blobs.protocol import Blobs
from barge.exceptions import Conflict, NotFound
from barge.store.protocol import Store

log = logging.getLogger("barge.reaper")


async def reap_expired_files(store: Store, blobs: Blobs, *, limit: int = 500) -> int:
    """Delete up to ``limit`` expired files; an input still read by an unfinished batch
    stays until that batch ends. Returns how many were deleted."""
    deleted = 0
    for f in await store.expired_files(int(time.time()), limit=limit):
        try:
            await store.delete_file(f.account, f.id)
        except (Conflict, NotFound):
            continue
        await blobs.delete(f.id)
        deleted += 1
    if deleted:
        log.info("deleted %d expired files", deleted)
    return deleted
