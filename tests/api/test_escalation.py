"""Security acceptance: no privilege escalation through the admin API, against a real
``barge serve``. A key allowed ``manage_keys`` may hand on only what its own role holds:
the keys it makes get roles whose actions and operations are a subset of its own, only
admin keys make admin keys, and the roles it creates allow nothing it lacks. Likewise it
revokes only keys whose role it could grant (and itself): a key-master cannot lock its
account's administrators out. A refusal is a 403 that changes nothing."""

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
from barge_process import ADMIN_KEY, BargeProcess

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


# -- revoking -----------------------------------------------------------------------------


def _live(barge: BargeProcess, key_id: str) -> bool:
    r = admin_request(barge, "GET", "/admin/keys")
    assert r.status_code == 200, r.text
    return next(k for k in r.json()["data"] if k["id"] == key_id)["revoked_at"] is None


def _revoke(barge: BargeProcess, key_id: str, *, by: str = ADMIN_KEY) -> None:
    r = admin_request(barge, "DELETE", f"/admin/keys/{key_id}", key=by)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": key_id, "object": "api_key", "revoked": True}
    assert not _live(barge, key_id)


def _refused_revoke(barge: BargeProcess, by: str, key_id: str, secret: str,
                    role: str) -> dict[str, Any]:
    """Revoking ``key_id`` is 403 naming its role, and the key stays live and working."""
    r = admin_request(barge, "DELETE", f"/admin/keys/{key_id}", key=by)
    err = http_error(r, status=403, param="key_id", code="permission_denied")
    assert role in err["message"], err
    assert _live(barge, key_id)
    assert admin_request(barge, "GET", "/files", key=secret).status_code == 200
    return err


def test_a_keymaster_cannot_revoke_admin_keys_or_keys_of_wider_roles(
    shared_barge: BargeProcess
) -> None:
    """A key allowed manage_keys (and little else) must not lock its account's
    administrators out: it revokes only keys whose role it could grant."""
    barge = shared_barge
    account, _, secret = _keymaster(barge, READER_ACTIONS)
    admin_id, admin_secret = api_key(barge, "admin", account)
    member_id, member_secret = api_key(barge, "member", account)
    wider = unique("wider")
    create_role(barge, wider, [*READER_ACTIONS, "manage_keys", "delete_file"], [],
                account=account)
    wider_id, wider_secret = api_key(barge, wider, account)

    err = _refused_revoke(barge, secret, admin_id, admin_secret, "admin")
    assert "manage_keys" in err["message"], err  # the admin role is never within reach
    assert "upload_file" in _refused_revoke(barge, secret, member_id, member_secret,
                                            "member")["message"]
    assert "delete_file" in _refused_revoke(barge, secret, wider_id, wider_secret,
                                            wider)["message"]
    # The admin key still manages the account.
    assert admin_request(barge, "GET", "/admin/keys", key=admin_secret).status_code == 200


def test_a_keymaster_with_manage_keys_alone_cannot_revoke_an_admin_key(
    shared_barge: BargeProcess
) -> None:
    barge = shared_barge
    account, _, secret = _keymaster(barge, [])
    admin_id, admin_secret = api_key(barge, "admin", account)
    _refused_revoke(barge, secret, admin_id, admin_secret, "admin")
    reader_id, reader_secret = api_key(barge, "reader", account)
    _refused_revoke(barge, secret, reader_id, reader_secret, "reader")


def test_a_keymaster_revokes_keys_within_its_role_and_itself(
    shared_barge: BargeProcess
) -> None:
    barge = shared_barge
    account, role, secret = _keymaster(barge, READER_ACTIONS)
    reader_id, reader_secret = api_key(barge, "reader", account)
    peer_id, _ = api_key(barge, role, account)
    _revoke(barge, reader_id, by=secret)
    http_error(admin_request(barge, "GET", "/files", key=reader_secret), status=401)
    _revoke(barge, peer_id, by=secret)  # its own role is within its own role

    # Revoking itself is always allowed (it gives up only what it holds) ...
    own_id, own = api_key(barge, role, account)
    _revoke(barge, own_id, by=own)
    # ... and takes effect at once; the other key-master is untouched.
    http_error(admin_request(barge, "GET", "/admin/keys", key=own), status=401,
               code="invalid_api_key")
    assert admin_request(barge, "GET", "/admin/keys", key=secret).status_code == 200


def test_a_keymaster_cannot_revoke_another_accounts_keys(shared_barge: BargeProcess) -> None:
    barge = shared_barge
    _, _, secret = _keymaster(barge, READER_ACTIONS)
    other_id, other_secret = api_key(barge, "reader", unique("elsewhere"))
    r = admin_request(barge, "DELETE", f"/admin/keys/{other_id}", key=secret)
    http_error(r, status=404)
    assert _live(barge, other_id)
    assert admin_request(barge, "GET", "/files", key=other_secret).status_code == 200


def test_an_admin_key_revokes_any_key_of_its_account(shared_barge: BargeProcess) -> None:
    barge = shared_barge
    account, role, _ = _keymaster(barge, ALL_ACTIONS, ["*"])
    _, admin_secret = api_key(barge, "admin", account)
    victims = [api_key(barge, r, account)[0] for r in (role, "member", "reader", "admin")]
    for key_id in victims:
        _revoke(barge, key_id, by=admin_secret)
    assert admin_request(barge, "GET", "/admin/keys", key=admin_secret).status_code == 200


def test_the_server_admin_key_revokes_any_key(shared_barge: BargeProcess) -> None:
    barge = shared_barge
    account, _, _ = _keymaster(barge, [])
    for role in ("admin", "member", "reader"):
        key_id, secret = api_key(barge, role, account)
        _revoke(barge, key_id)
        http_error(admin_request(barge, "GET", "/files", key=secret), status=401)
