"""``GET /v1/me``: what the calling key is — its account, role and the actions that role
allows — so that a client (the dashboard) offers only what the key may do."""

from __future__ import annotations

from fastapi import APIRouter, Request

from barge.api.auth import Authenticator
from barge.api.requests import app_of
from barge.api.responses import JSON

router = APIRouter(prefix="/v1")


@router.get("/me")
async def who_am_i(request: Request) -> JSON:
    """Any valid key may ask about itself (401 otherwise); no action is needed."""
    auth: Authenticator = app_of(request).auth
    caller = await auth.caller(request.headers.get("authorization"))
    return JSON({
        "object": "api_key.self",
        "account": caller.account,
        "key_id": caller.key_id,
        "role": caller.role.name,
        "permissions": sorted(a.value for a in caller.role.actions),
        "operations": sorted(caller.role.operations),
        "manages_all_accounts": caller.manages_all_accounts,
    })
