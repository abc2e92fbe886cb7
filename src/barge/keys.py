"""API keys: made here, shown once, stored only as hashes."""

from __future__ import annotations

import time

from barge.api.auth import hash_key
from barge.domain.ids import new_api_key, new_key_id
from barge.domain.models import KeyRecord
from barge.store.protocol import Store


async def create_key(store: Store, *, name: str, role: str, account: str) -> tuple[KeyRecord, str]:
    """A new key record and its secret (the only time the secret exists in clear)."""
    secret = new_api_key()
    record = KeyRecord(new_key_id(), name, account, role, int(time.time()))
    await store.create_key(record, hash_key(secret))
    return record, secret
