"""API keys: made here, shown once, stored only as hashes."""

from __future__ import annotations

import re
import time

from barge.api.auth import hash_key
from barge.domain.ids import new_api_key, new_key_id
from barge.domain.models import KeyRecord
from barge.domain.permissions import BUILTIN_ROLES
from barge.exceptions import InvalidRequest
from barge.store.protocol import Store

_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


async def create_key(store: Store, *, name: str, role: str, account: str) -> tuple[KeyRecord, str]:
    """A new key record and its secret (the only time the secret exists in clear). The
    account comes into being with its first key."""
    if not name or len(name) > 128:
        raise InvalidRequest("A key's name is 1-128 characters.", param="name")
    if not _ACCOUNT.fullmatch(account):
        raise InvalidRequest("An account is 1-64 characters of letters, digits, '_', '.' "
                             "or '-'.", param="account")
    if role not in BUILTIN_ROLES and await store.get_role(role) is None:
        raise InvalidRequest(f"No such role: {role!r}.", param="role", code="unknown_role")
    secret = new_api_key()
    record = KeyRecord(new_key_id(), name, account, role, int(time.time()))
    await store.create_key(record, hash_key(secret))
    return record, secret
