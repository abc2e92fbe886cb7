"""Security acceptance: no privilege escalation through the admin API, against a real
``barge serve``. A key allowed ``manage_keys`` may hand on only what its own role holds:
the keys it makes get roles whose actions and operations are a subset of its own, only
admin keys make admin keys, and the roles it creates allow nothing it lacks. A refusal
is a 403 that changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from api.keys_support import (
    ALL_ACTIONS,
    READER_ACTIONS,
    Connect,
    admin_request,
    api_key,
    create_role,
    http_error,
    unique,
)
from api.support import CHAT, chat_line, run_batch
from barge_process import BargeProcess

EMBEDDINGS = "/v1/embeddings"


def _key_ids(barge: BargeProcess) -> set[str]:
    r = admin_request(barge, "GET", "/admin/keys")
    assert r.status_code == 200, r.text
    return {k["id"] for k in r.json()["data"]}


def _role_names(barge: BargeProcess) -> set[tuple[str | None, str]]:
    r = admin_request(barge, "GET", "/admin/roles")
    assert r.status_code == 200, r.text
    return {(x["account"], x["name"]) for x in r.json()["data"]}


def _refused_key(barge: BargeProcess, by: str, role: str, account: str) -> dict[str, Any]:
    """Asking for a key of ``role`` is 403 naming the role, and no key comes into being."""
    before = _key_ids(barge)
    r = admin_request(barge, "POST", "/admin/keys", key=by,
                      json={"name": unique("escalate"), "role": role, "account": account})
    err = http_error(r, status=403, param="role", code="permission_denied")
    assert role in err["message"], err
    assert "key" not in r.json()
    assert _key_ids(barge) == before
    return err


def _refused_role(barge: BargeProcess, by: str, body: dict[str, Any],
                  param: str) -> dict[str, Any]:
    before = _role_names(barge)
    r = admin_request(barge, "POST", "/admin/roles", key=by, json=body)
    err = http_error(r, status=403, param=param, code="permission_denied")
    assert _role_names(barge) == before
    return err


def _keymaster(barge: BargeProcess, actions: list[str] | tuple[str, ...],
               operations: list[str] | tuple[str, ...] = ()) -> tuple[str, str, str]:
    """(account, role name, secret) of a key whose custom role allows ``manage_keys``
    plus ``actions`` and ``operations``."""
    account, role = unique("km-acct"), unique("keymaster")
    held = ["manage_keys", *(a for a in actions if a != "manage_keys")]
    create_role(barge, role, held, list(operations), account=account)
    _, secret = api_key(barge, role, account)
    return account, role, secret


def test_manage_keys_alone_cannot_mint_admin_member_or_reader_keys(
    shared_barge: BargeProcess
) -> None:
    barge = shared_barge
    account, _, secret = _keymaster(barge, [])
    for role in ("admin", "member", "reader"):
        err = _refused_key(barge, secret, role, account)
        if role == "reader":
            assert "get_files" in err["message"], err


def test_a_key_may_grant_its_own_role_and_roles_within_it(shared_barge: BargeProcess,
                                                          connect: Connect) -> None:
    barge = shared_barge
    account, role, secret = _keymaster(barge, READER_ACTIONS)
    # Its own role, and the reader role (which it holds all of), are fine ...
    _, same = api_key(barge, role, account, by=secret)
    _, reader = api_key(barge, "reader", account, by=secret)
    assert connect(barge, api_key=reader).files.list().data == []
    assert admin_request(barge, "GET", "/admin/keys", key=same).status_code == 200
    # ... a subset custom role too, made by the keymaster itself ...
    narrow = unique("lister")
    create_role(barge, narrow, ["get_files"], [], by=secret)
    _, lister = api_key(barge, narrow, account, by=secret)
    assert admin_request(barge, "GET", "/files", key=lister).status_code == 200
    # ... but member and admin are not.
    err = _refused_key(barge, secret, "member", account)
    assert "upload_file" in err["message"] and "create_batch" in err["message"], err
    _refused_key(barge, secret, "admin", account)


def test_only_admin_keys_make_admin_keys(shared_barge: BargeProcess, connect: Connect) -> None:
    """A custom role that allows every action and operation still cannot hand on the
    built-in admin role; an admin-role key can."""
    barge = shared_barge
    account, _, almighty = _keymaster(barge, ALL_ACTIONS, ["*"])
    _refused_key(barge, almighty, "admin", account)
    _, member = api_key(barge, "member", account, by=almighty)
    assert run_batch(connect(barge, api_key=member), [chat_line("m")]).status == "completed"

    _, admin_secret = api_key(barge, "admin", account)
    _, minted = api_key(barge, "admin", account, by=admin_secret)
    assert admin_request(barge, "GET", "/admin/keys", key=minted).status_code == 200
    # And a key made by a refused request never works.
    assert admin_request(barge, "GET", "/admin/roles", key=member).status_code == 403


def test_operations_must_be_held_too(shared_barge: BargeProcess) -> None:
    barge = shared_barge
    account, _, secret = _keymaster(barge, ["create_batch", "upload_file"], [CHAT])
    wide, other, fine = unique("wide"), unique("other"), unique("fine")
    create_role(barge, wide, ["create_batch"], ["*"], account=account)
    create_role(barge, other, ["create_batch"], [EMBEDDINGS], account=account)
    create_role(barge, fine, ["create_batch", "upload_file"], [CHAT], account=account)
    assert "*" in _refused_key(barge, secret, wide, account)["message"]
    assert EMBEDDINGS in _refused_key(barge, secret, other, account)["message"]
    api_key(barge, fine, account, by=secret)


def test_a_non_admin_cannot_create_roles_with_permissions_it_lacks(
    shared_barge: BargeProcess
) -> None:
    barge = shared_barge
    account, _, secret = _keymaster(barge, ["get_files", "create_batch"], [CHAT])
    err = _refused_role(barge, secret, {"name": unique("grab"), "actions": ["get_files",
                                                                            "delete_file"],
                                        "operations": []}, "actions")
    assert "delete_file" in err["message"], err
    _refused_role(barge, secret, {"name": unique("grab"), "actions": list(ALL_ACTIONS),
                                  "operations": ["*"]}, "actions")
    err = _refused_role(barge, secret, {"name": unique("grab"), "actions": ["create_batch"],
                                        "operations": ["*"]}, "operations")
    assert "*" in err["message"], err
    _refused_role(barge, secret, {"name": unique("grab"), "actions": ["create_batch"],
                                  "operations": [CHAT, EMBEDDINGS]}, "operations")
    # Within its own permissions it may.
    made = create_role(barge, unique("ok"), ["create_batch", "manage_keys"], [CHAT], by=secret)
    assert made["account"] == account


@pytest.mark.parametrize("role", ["admin", "member"])
def test_builtin_roles_with_everything_keep_working(shared_barge: BargeProcess,
                                                    role: str) -> None:
    """An admin-role key may create any role in its account; a server admin key any role
    anywhere. (A member key has no manage_keys at all.)"""
    barge = shared_barge
    account = unique(f"{role}-acct")
    _, secret = api_key(barge, role, account)
    body = {"name": unique("everything"), "actions": list(ALL_ACTIONS), "operations": ["*"]}
    r = admin_request(barge, "POST", "/admin/roles", key=secret, json=body)
    if role == "admin":
        assert r.status_code == 200, r.text
        assert r.json()["account"] == account
    else:
        http_error(r, status=403, code="permission_denied")
