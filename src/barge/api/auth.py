"""The auth dependency: a Bearer key becomes a Principal, or the request gets a 401."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from barge.domain.models import Principal
from barge.exceptions import Unauthenticated
from barge.store.protocol import Store

ADMIN = Principal(account="default", key_id="admin", role="admin")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, store: Store, admin_key: str | None) -> None:
        self._store = store
        self._admin_hash = hash_key(admin_key) if admin_key else None

    async def principal(self, authorization: str | None) -> Principal:
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
        return principal


async def require_principal(request: Request) -> Principal:
    auth: Authenticator = request.app.state.barge.auth
    return await auth.principal(request.headers.get("authorization"))
