"""Acceptance: ``GET /v1/me`` tells a key what it is — account, role, the actions its role
allows — for every valid key (no action needed), and 401 for no key or a bad one."""

from __future__ import annotations

import httpx
from api.keys_support import (
    ALL_ACTIONS,
    READER_ACTIONS,
    admin_request,
    api_key,
    create_role,
    unique,
)
from api.support import assert_error_shape
from barge_process import ADMIN_KEY, BargeProcess


def me(barge: BargeProcess, key: str | None) -> httpx.Response:
    return admin_request(barge, "GET", "/me", key=key)


def assert_401(r: httpx.Response, code: str) -> None:
    assert r.status_code == 401, (r.status_code, r.text)
    assert_error_shape(r.json(), code=code)


def test_the_admin_key_is_told_its_role_and_every_action(shared_barge: BargeProcess) -> None:
    r = me(shared_barge, ADMIN_KEY)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "object": "api_key.self", "account": "default", "key_id": "admin", "role": "admin",
        "permissions": sorted(ALL_ACTIONS), "operations": ["*"],
        "manages_all_accounts": True,
    }


def test_stored_keys_are_told_their_own_account_and_role(shared_barge: BargeProcess) -> None:
    account = unique("me")
    key_id, reader = api_key(shared_barge, "reader", account)
    body = me(shared_barge, reader).json()
    assert body == {
        "object": "api_key.self", "account": account, "key_id": key_id, "role": "reader",
        "permissions": sorted(READER_ACTIONS), "operations": [],
        "manages_all_accounts": False,
    }

    role = unique("canceller")
    create_role(shared_barge, role, ["get_batch", "cancel_batch"], ["/v1/embeddings"],
                account=account)
    _, custom = api_key(shared_barge, role, account)
    body = me(shared_barge, custom).json()
    assert (body["role"], body["permissions"], body["operations"]) == (
        role, ["cancel_batch", "get_batch"], ["/v1/embeddings"])

    # A role that allows nothing still lets the key ask what it is.
    empty = unique("nothing")
    create_role(shared_barge, empty, [], [], account=account)
    _, idle = api_key(shared_barge, empty, account)
    assert me(shared_barge, idle).json()["permissions"] == []


def test_no_key_a_wrong_key_and_a_revoked_key_get_401(shared_barge: BargeProcess) -> None:
    assert_401(me(shared_barge, None), "missing_api_key")
    assert_401(me(shared_barge, "sk-wrong"), "invalid_api_key")
    key_id, secret = api_key(shared_barge, "member", unique("me"))
    assert me(shared_barge, secret).status_code == 200
    r = admin_request(shared_barge, "DELETE", f"/admin/keys/{key_id}")
    assert r.status_code == 200, r.text
    assert_401(me(shared_barge, secret), "invalid_api_key")
    basic = {"Authorization": "Basic " + ADMIN_KEY}  # not a Bearer key
    assert_401(httpx.get(shared_barge.base_url + "/me", headers=basic, timeout=10),
               "missing_api_key")
