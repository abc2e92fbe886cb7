"""``/v1/admin``: keys, roles and account weights and limits, for callers whose role allows
``manage_keys``.

A stored key manages its own account only: its keys, its custom roles and its weight. It
may hand on only what its own role holds (a key's role, a new role's actions and
operations), and only admin keys make admin keys; likewise it revokes only keys whose role
it could grant (and itself). Only admin keys set a weight or limits. The server's admin key manages
every account."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from barge.api.auth import require
from barge.api.requests import app_of, json_object
from barge.api.responses import JSON
from barge.domain.models import KeyRecord
from barge.domain.permissions import (
    BUILTIN_ROLES,
    Action,
    Caller,
    InvalidRole,
    Role,
    make_role,
)
from barge.exceptions import InvalidRequest, NotFound, PermissionDenied
from barge.keys import check_account, check_grant, create_key
from barge.store.protocol import AccountSettings

router = APIRouter(prefix="/v1/admin")
Admin = Annotated[Caller, Depends(require(Action.MANAGE_KEYS))]

MAX_WEIGHT = 1000.0  # an account's weight is above 0 and at most this
DEFAULT_WEIGHT = 1.0  # the weight of an account never given one
MAX_IN_FLIGHT = 1_000_000  # an account's max_in_flight is at least 1 and at most this
MAX_TOKENS_PER_MINUTE = 10**12  # likewise its tokens_per_minute
SETTINGS = ("weight", "max_in_flight", "tokens_per_minute")


def key_object(k: KeyRecord) -> dict[str, Any]:
    return {"id": k.id, "object": "api_key", "name": k.name, "account": k.account,
            "role": k.role, "created_at": k.created_at, "revoked_at": k.revoked_at}


def role_object(r: Role, account: str | None) -> dict[str, Any]:
    """``account`` None: a built-in role, the same for every account."""
    return {"object": "role", "name": r.name, "actions": sorted(r.actions),
            "operations": sorted(r.operations), "builtin": account is None,
            "account": account}


def _string(body: dict[str, Any], param: str, default: str | None) -> str:
    value = body.get(param, default)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}' must be a string.", param=param)
    return value


def _strings(body: dict[str, Any], param: str) -> list[str]:
    value = body.get(param, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"'{param}' must be a list of strings.", param=param)
    return value


def _own_account(caller: Caller, account: str) -> str:
    """``account``, when the caller may manage it: its own, or any for the server's key."""
    if account != caller.account and not caller.manages_all_accounts:
        raise PermissionDenied("This key may manage only its own account.",
                               param="account", code="permission_denied")
    return account


async def _visible_keys(request: Request, caller: Caller) -> list[KeyRecord]:
    """Every key for the server's admin key; the caller's account's keys otherwise."""
    keys = await app_of(request).store.list_keys()
    if caller.manages_all_accounts:
        return keys
    return [k for k in keys if k.account == caller.account]


@router.post("/keys")
async def create_api_key(request: Request, caller: Admin) -> JSON:
    body = await json_object(request)
    account = _string(body, "account", caller.account)
    if account != caller.account and not caller.manages_all_accounts:
        raise PermissionDenied("This key may create keys only for its own account.",
                               param="account", code="permission_denied")
    record, secret = await create_key(
        app_of(request).store,
        name=_string(body, "name", None),
        role=_string(body, "role", "member"),
        account=account,
        granted_by=caller.role,
    )
    return JSON(key_object(record) | {"key": secret})


@router.get("/keys")
async def list_api_keys(request: Request, caller: Admin) -> JSON:
    keys = await _visible_keys(request, caller)
    return JSON({"object": "list", "data": [key_object(k) for k in keys]})


@router.delete("/keys/{key_id}")
async def revoke_api_key(request: Request, caller: Admin, key_id: str) -> JSON:
    """Revoke a live key the caller can see. A stored key may revoke only keys whose role
    it could grant itself (as when making keys: only admin keys revoke admin keys), and
    always itself; the server's admin key revokes any. Refused: 403, nothing changes."""
    app = app_of(request)
    target = next((k for k in await _visible_keys(request, caller)
                   if k.id == key_id and k.revoked_at is None), None)
    if target is None:
        raise NotFound(f"No such live key: {key_id}", param="key_id")
    if not caller.manages_all_accounts and target.id != caller.key_id:
        # Resolved as authentication resolves it: a custom role the account lacks allows
        # nothing, so any manage_keys key of the account may revoke such a key.
        held = await app.auth.role(target.account, target.role)
        check_grant(caller.role, held, what=f"revoke keys with role '{target.role}'",
                    param="key_id")
    await app.store.revoke_key(key_id)
    return JSON({"id": key_id, "object": "api_key", "revoked": True})


@router.get("/roles")
async def list_roles(request: Request, caller: Admin, account: str | None = None) -> JSON:
    """The built-in roles and the custom roles of the caller's account (of every
    account, or of ``account``, for the server's admin key)."""
    if account is None and not caller.manages_all_accounts:
        account = caller.account
    if account is not None:
        _own_account(caller, account)
    custom = await app_of(request).store.list_roles(account)
    data = [role_object(r, None) for r in BUILTIN_ROLES.values()]
    data += [role_object(r, owner) for owner, r in custom]
    return JSON({"object": "list", "data": data})


@router.post("/roles")
async def create_role(request: Request, caller: Admin) -> JSON:
    body = await json_object(request)
    account = _own_account(caller, _string(body, "account", caller.account))
    check_account(account)
    name = _string(body, "name", None)
    actions, operations = _strings(body, "actions"), _strings(body, "operations")
    try:
        role = make_role(name, actions, operations)
    except InvalidRole as e:
        raise InvalidRequest(f"Invalid role: {e}.", param=e.param) from e
    check_grant(caller.role, role, what=f"create role '{name}'", param=None)
    await app_of(request).store.create_role(account, role)
    return JSON(role_object(role, account))


def account_object(account: str, settings: AccountSettings) -> dict[str, Any]:
    return {"object": "account", "id": account, "weight": settings.weight,
            "max_in_flight": settings.max_in_flight,
            "tokens_per_minute": settings.tokens_per_minute}


def _weight(body: dict[str, Any]) -> float:
    value = body["weight"]
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or not 0 < value <= MAX_WEIGHT:
        raise InvalidRequest(
            f"'weight' must be a number above 0 and at most {MAX_WEIGHT:g}.",
            param="weight", code="invalid_weight",
        )
    return float(value)


def _limit(body: dict[str, Any], param: str, most: int) -> int | None:
    """A limit: a whole number from 1 to ``most``, or null (no limit)."""
    value = body[param]
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= most:
        raise InvalidRequest(
            f"'{param}' must be a whole number from 1 to {most}, or null for no limit.",
            param=param, code=f"invalid_{param}",
        )
    return value


def _settings(body: dict[str, Any], current: AccountSettings) -> AccountSettings:
    """``current`` with what ``body`` sets (at least one of ``SETTINGS``)."""
    if not any(name in body for name in SETTINGS):
        raise InvalidRequest("Missing required parameter: 'weight'.", param="weight",
                             code="missing_required_parameter")
    changes: dict[str, Any] = {}
    if "weight" in body:
        changes["weight"] = _weight(body)
    if "max_in_flight" in body:
        changes["max_in_flight"] = _limit(body, "max_in_flight", MAX_IN_FLIGHT)
    if "tokens_per_minute" in body:
        changes["tokens_per_minute"] = _limit(body, "tokens_per_minute",
                                              MAX_TOKENS_PER_MINUTE)
    return replace(current, **changes)


@router.get("/accounts/{account}")
async def get_account(request: Request, caller: Admin, account: str) -> JSON:
    """The account's weight (its share of the upstream when accounts compete for it; 1
    when never set) and its limits (null when not set)."""
    check_account(_own_account(caller, account))
    settings = await app_of(request).store.account_settings()
    return JSON(account_object(account, settings.get(account, AccountSettings())))


@router.patch("/accounts/{account}")
async def update_account(request: Request, caller: Admin, account: str) -> JSON:
    """Set the account's weight, ``{"weight": N}`` with 0 < N <= 1000, and/or its limits,
    ``max_in_flight`` and ``tokens_per_minute`` (whole numbers from 1; null clears one);
    what the body leaves out stays. The server's admin key only: a weight is the
    account's share against every other account, so an account's own keys, admin or
    not, may read it but never raise it (nor lift a limit). The account need not have
    keys yet."""
    check_account(account)
    if not caller.manages_all_accounts:
        raise PermissionDenied(
            "Only the server's admin key (--admin-key / BARGE_ADMIN_KEY) sets an "
            "account's weight: it is the account's share against all the others.",
            param="account", code="permission_denied",
        )
    if caller.role != BUILTIN_ROLES["admin"]:
        raise PermissionDenied(
            f"Only admin keys set an account's weight; this key's role is "
            f"'{caller.role.name}'.", code="permission_denied",
        )
    body = await json_object(request)
    store = app_of(request).store
    current = (await store.account_settings()).get(account, AccountSettings())
    settings = _settings(body, current)
    await store.set_account_settings(account, settings)
    return JSON(account_object(account, settings))
