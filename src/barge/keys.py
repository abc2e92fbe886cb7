"""API keys: made here, shown once, stored only as hashes."""

from __future__ import annotations

import re
import time

from barge.api.auth import hash_key
from barge.domain.ids import new_api_key, new_key_id
from barge.domain.models import KeyRecord
from barge.domain.permissions import BUILTIN_ROLES, Role, missing_grants
from barge.exceptions import InvalidRequest, PermissionDenied
from barge.store.protocol import Store

_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_account(account: str) -> None:
    if not _ACCOUNT.fullmatch(account):
        raise InvalidRequest("An account is 1-64 characters of letters, digits, '_', '.' "
                             "or '-'.", param="account")


async def role_of(store: Store, account: str, name: str) -> Role:
    """A built-in role, or ``account``'s own custom role of that name (another account's
    roles do not exist for it); 400 unknown_role otherwise."""
    role = BUILTIN_ROLES.get(name) or await store.get_role(account, name)
    if role is None:
        raise InvalidRequest(f"No such role: {name!r}.", param="role", code="unknown_role")
    return role


def check_grant(grantor: Role, wanted: Role, *, what: str, param: str | None) -> None:
    """403 unless ``grantor`` holds everything ``wanted`` allows: a key hands on only
    what it holds itself, and only admin keys make admin keys."""
    actions, operations = missing_grants(grantor, wanted)
    if not actions and not operations:
        return
    lacking = ", ".join([*actions, *(f"operation {op}" for op in operations)])
    if param is None:
        param = "actions" if actions else "operations"
    raise PermissionDenied(
        f"This key's role '{grantor.name}' may not {what}: it does not hold {lacking}.",
        param=param, code="permission_denied",
    )


async def create_key(store: Store, *, name: str, role: str, account: str,
                     granted_by: Role | None = None) -> tuple[KeyRecord, str]:
    """A new key record and its secret (the only time the secret exists in clear). The
    account comes into being with its first key. ``granted_by``: the role of the key
    asking (None for the operator's CLI), which must hold all that ``role`` allows."""
    if not name or len(name) > 128:
        raise InvalidRequest("A key's name is 1-128 characters.", param="name")
    check_account(account)
    wanted = await role_of(store, account, role)
    if granted_by is not None:
        check_grant(granted_by, wanted, what=f"make keys with role '{role}'", param="role")
    secret = new_api_key()
    record = KeyRecord(new_key_id(), name, account, role, int(time.time()))
    await store.create_key(record, hash_key(secret))
    return record, secret
