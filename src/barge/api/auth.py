"""Authentication and permissions: a Bearer key becomes a Caller (401 otherwise), and
each route names the action it needs (403 otherwise)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request

from barge.domain.permissions import BUILTIN_ROLES, Action, Caller, Role
from barge.exceptions import PermissionDenied, Unauthenticated
from barge.store.protocol import Store

ADMIN = Caller(account="default", key_id="admin", role=BUILTIN_ROLES["admin"],
               manages_all_accounts=True)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, store: Store, admin_key: str | None) -> None:
        self._store = store
        self._admin_hash = hash_key(admin_key) if admin_key else None

    async def caller(self, authorization: str | None) -> Caller:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthenticated(
                "Missing API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        digest = hash_key(authorization[7:].strip())
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return ADMIN
        principal = await self._store.principal_for(digest)
        if principal is None:
            raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
        role = await self.role(principal.account, principal.role)
        return Caller(principal.account, principal.key_id, role)

    async def role(self, account: str, name: str) -> Role:
        """A built-in role, or the account's own custom role of that name; a name the
        account does not have (another account's role included) allows nothing."""
        builtin = BUILTIN_ROLES.get(name)
        if builtin is not None:
            return builtin
        custom = await self._store.get_role(account, name)
        return custom if custom is not None else Role(name, frozenset(), frozenset())


def require(action: Action) -> Callable[[Request], Awaitable[Caller]]:
    """A route dependency: the authenticated caller, whose role must allow ``action``."""

    async def dependency(request: Request) -> Caller:
        auth: Authenticator = request.app.state.barge.auth
        caller = await auth.caller(request.headers.get("authorization"))
        if not caller.role.allows(action):
            raise PermissionDenied(
                f"This key's role '{caller.role.name}' does not allow '{action.value}'.",
                code="permission_denied",
            )
        return caller

    return dependency


def require_operation(caller: Caller, endpoint: str) -> None:
    """Creating a batch also needs the permission for its endpoint."""
    if not caller.role.allows_operation(endpoint):
        raise PermissionDenied(
            f"This key's role '{caller.role.name}' may not run batches on {endpoint}.",
            param="endpoint",
            code="permission_denied",
        )
