"""Security acceptance: the admin API (``/v1/admin/keys``, ``/v1/admin/roles``) and how keys
are kept, against a real ``barge serve``. Only ``manage_keys`` opens the admin API; keys and
roles are validated; a key made there works at once, is shown once and stored only as a
hash; revoking it ends it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from api.keys_support import (
    ADMIN_ROUTES,
    ALL_ACTIONS,
    READER_ACTIONS,
    Connect,
    admin_request,
    api_key,
    assert_http_denied,
    barge_cli,
    cli_key,
    create_role,
    http_error,
    populate,
    unique,
)
from api.support import CHAT, auth_headers, chat_line, error_of, run_batch, upload
from barge_process import ADMIN_KEY, BargeProcess

KEY_FIELDS = {"id", "object", "name", "account", "role", "created_at", "revoked_at"}
ROLE_FIELDS = {"object", "name", "actions", "operations", "builtin", "account"}


def _keys(barge: BargeProcess) -> list[dict[str, Any]]:
    r = admin_request(barge, "GET", "/admin/keys")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list", body
    data: list[dict[str, Any]] = body["data"]
    return data


def _roles(barge: BargeProcess) -> dict[str, dict[str, Any]]:
    r = admin_request(barge, "GET", "/admin/roles")
    assert r.status_code == 200, r.text
    return {role["name"]: role for role in r.json()["data"]}


# -- who may use the admin API ------------------------------------------------------------


@pytest.mark.parametrize(("role", "made_by"), [("member", "api"), ("member", "cli"),
                                               ("reader", "api"), ("reader", "cli")])
def test_member_and_reader_keys_are_403_on_the_admin_api(shared_barge: BargeProcess,
                                                         role: str, made_by: str) -> None:
    barge = shared_barge
    account = unique(f"{role}-{made_by}")
    make = api_key if made_by == "api" else cli_key
    _, secret = make(barge, role, account)
    keys_before, roles_before = _keys(barge), _roles(barge)
    victim_id, _ = api_key(barge, "member", account)

    routes = [*ADMIN_ROUTES, ("DELETE", f"/admin/keys/{victim_id}", None),
              ("POST", "/admin/keys", {"name": "escalate", "role": "admin",
                                       "account": account})]
    for method, path, body in routes:
        r = admin_request(barge, method, path, key=secret, json=body)
        err = assert_http_denied(r, "manage_keys")
        assert role in err["message"], err
        assert secret not in r.text
    # Nothing was created or revoked.
    keys_after = _keys(barge)
    assert len(keys_after) == len(keys_before) + 1
    assert all(k["revoked_at"] is None for k in keys_after if k["id"] == victim_id)
    assert _roles(barge) == roles_before


def test_admin_role_key_and_custom_manage_keys_role_may_use_the_admin_api(
    shared_barge: BargeProcess
) -> None:
    barge = shared_barge
    account = unique("keymasters")
    _, admin_secret = cli_key(barge, "admin", account)
    role = unique("keymaster")
    # A key hands on only what it holds: this one may make reader keys, nothing more.
    create_role(barge, role, ["manage_keys", *READER_ACTIONS], [], account=account)
    _, km_secret = api_key(barge, role, account)
    for secret in (admin_secret, km_secret):
        assert admin_request(barge, "GET", "/admin/keys", key=secret).status_code == 200
        assert admin_request(barge, "GET", "/admin/roles", key=secret).status_code == 200
        key_id, new = api_key(barge, "reader", account, by=secret)
        r = admin_request(barge, "GET", "/files", key=new)
        assert r.status_code == 200, r.text
        r = admin_request(barge, "DELETE", f"/admin/keys/{key_id}", key=secret)
        assert r.status_code == 200, r.text
    # manage_keys opens nothing else.
    r = admin_request(barge, "DELETE", "/files/file-000000000000000000000000", key=km_secret)
    assert_http_denied(r, "delete_file")


# -- keys ---------------------------------------------------------------------------------


def test_a_key_made_by_the_admin_api_works_at_once_and_is_shown_once(
    shared_barge: BargeProcess, connect: Connect
) -> None:
    barge = shared_barge
    account = unique("fresh")
    name = unique("fresh-key")
    r = admin_request(barge, "POST", "/admin/keys",
                      json={"name": name, "role": "member", "account": account})
    assert r.status_code == 200, r.text
    created = r.json()
    assert set(created) == KEY_FIELDS | {"key"}, created
    assert created["object"] == "api_key" and created["name"] == name
    assert created["account"] == account and created["role"] == "member"
    assert created["revoked_at"] is None and isinstance(created["created_at"], int)
    secret = created["key"]
    assert len(secret) >= 32 and secret != ADMIN_KEY

    # It works immediately, for the whole loop, in its own account.
    client = connect(barge, api_key=secret)
    b = run_batch(client, [chat_line("via-admin-api")])
    assert b.status == "completed"
    assert [x.id for x in client.batches.list()] == [b.id]

    # The listing shows it, without the secret or anything derived from it.
    r = admin_request(barge, "GET", "/admin/keys")
    assert secret not in r.text
    listed = [k for k in r.json()["data"] if k["id"] == created["id"]]
    assert listed == [{k: v for k, v in created.items() if k != "key"}]
    for k in r.json()["data"]:
        assert set(k) == KEY_FIELDS, k
    assert ADMIN_KEY not in r.text
    cli_list = barge_cli(barge, "keys", "list").stdout
    assert created["id"] in cli_list and secret not in cli_list


def test_two_keys_never_share_a_secret(shared_barge: BargeProcess) -> None:
    account = unique("pair")
    secrets = {api_key(shared_barge, "member", account, "same-name")[1] for _ in range(5)}
    assert len(secrets) == 5


def test_key_defaults_to_member_of_the_callers_account(shared_barge: BargeProcess) -> None:
    r = admin_request(shared_barge, "POST", "/admin/keys", json={"name": unique("dflt")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["role"] == "member" and body["account"] == "default", body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "k", "role": "no-such-role", "account": "a"}, "role"),
        ({"name": "k", "role": "Admin", "account": "a"}, "role"),
        ({"name": "k", "role": "", "account": "a"}, "role"),
        ({"name": "k", "role": 7, "account": "a"}, "role"),
        ({"role": "member", "account": "a"}, "name"),
        ({"name": "", "role": "member", "account": "a"}, "name"),
        ({"name": "x" * 129, "role": "member", "account": "a"}, "name"),
        ({"name": "k", "role": "member", "account": "../etc"}, "account"),
        ({"name": "k", "role": "member", "account": "has space"}, "account"),
        ({"name": "k", "role": "member", "account": ""}, "account"),
        ({"name": "k", "role": "member", "account": ["a"]}, "account"),
    ],
    ids=["unknown-role", "role-wrong-case", "empty-role", "role-not-string", "no-name",
         "empty-name", "long-name", "account-path", "account-space", "empty-account",
         "account-not-string"],
)
def test_invalid_key_requests_are_400(shared_barge: BargeProcess, body: dict[str, Any],
                                      param: str) -> None:
    before = len(_keys(shared_barge))
    r = admin_request(shared_barge, "POST", "/admin/keys", json=body)
    err = http_error(r, status=400, param=param)
    if param == "role" and isinstance(body["role"], str) and body["role"]:
        assert err["code"] == "unknown_role", err
    assert len(_keys(shared_barge)) == before


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"name"', b""])
def test_admin_bodies_must_be_json_objects(shared_barge: BargeProcess, raw: bytes) -> None:
    for path in ("/admin/keys", "/admin/roles"):
        r = httpx.post(shared_barge.base_url + path, content=raw, timeout=10,
                       headers={**auth_headers(ADMIN_KEY), "Content-Type": "application/json"})
        http_error(r, status=400)


def test_revoking_through_the_admin_api(shared_barge: BargeProcess, connect: Connect) -> None:
    barge = shared_barge
    account = unique("revoke")
    key_id, secret = api_key(barge, "member", account)
    keep_id, keep = api_key(barge, "member", account)
    client = connect(barge, api_key=secret)
    f = upload(client, [chat_line("before-revoke")])

    r = admin_request(barge, "DELETE", f"/admin/keys/{key_id}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": key_id, "object": "api_key", "revoked": True}
    with pytest.raises(openai.AuthenticationError) as exc:
        client.files.retrieve(f.id)
    err = error_of(exc.value, status=401, code="invalid_api_key")
    assert secret not in err["message"]
    r = admin_request(barge, "GET", "/admin/keys", key=secret)
    http_error(r, status=401)

    row = next(k for k in _keys(barge) if k["id"] == key_id)
    assert isinstance(row["revoked_at"], int), row
    assert next(k for k in _keys(barge) if k["id"] == keep_id)["revoked_at"] is None
    assert f"{key_id}\t" in barge_cli(barge, "keys", "list").stdout

    # Revoking again, or a key that never existed, is 404.
    for missing in (key_id, "key_000000000000000000000000"):
        r = admin_request(barge, "DELETE", f"/admin/keys/{missing}")
        http_error(r, status=404)

    # The account's objects stay; another key of the account still sees them.
    other = connect(barge, api_key=keep)
    assert other.files.retrieve(f.id).id == f.id


def test_a_key_revoked_by_the_cli_stops_at_once_for_the_admin_api(
    shared_barge: BargeProcess
) -> None:
    barge = shared_barge
    key_id, secret = cli_key(barge, "admin", unique("cli-revoke"))
    assert admin_request(barge, "GET", "/admin/keys", key=secret).status_code == 200
    barge_cli(barge, "keys", "revoke", key_id)
    for method, path, body in ADMIN_ROUTES:
        r = admin_request(barge, method, path, key=secret, json=body)
        err = http_error(r, status=401, code="invalid_api_key")
        assert secret not in r.text, err


# -- roles --------------------------------------------------------------------------------


def test_builtin_roles_are_listed(shared_barge: BargeProcess) -> None:
    roles = _roles(shared_barge)
    for name in ("admin", "member", "reader"):
        assert set(roles[name]) == ROLE_FIELDS, roles[name]
        assert roles[name]["builtin"] is True
    assert sorted(roles["admin"]["actions"]) == sorted(ALL_ACTIONS)
    assert sorted(roles["member"]["actions"]) == sorted(set(ALL_ACTIONS) - {"manage_keys"})
    assert sorted(roles["reader"]["actions"]) == sorted(READER_ACTIONS)
    assert roles["admin"]["operations"] == ["*"] and roles["member"]["operations"] == ["*"]
    assert roles["reader"]["operations"] == []
    assert all(roles[name]["account"] is None for name in ("admin", "member", "reader"))


def test_a_custom_role_is_listed_and_usable(shared_barge: BargeProcess,
                                            connect: Connect) -> None:
    barge = shared_barge
    name = unique("uploader")
    account = unique("uploaders")
    created = create_role(barge, name, ["upload_file", "get_files"], [CHAT], account=account)
    assert created == {"object": "role", "name": name, "actions": ["get_files", "upload_file"],
                       "operations": [CHAT], "builtin": False, "account": account}
    assert _roles(barge)[name] == created
    # Usable by keys of its account, from the API and from the CLI.
    for _, secret in (api_key(barge, name, account), cli_key(barge, name, account)):
        client = connect(barge, api_key=secret)
        f = upload(client, [chat_line("up")])
        assert f.id in {x.id for x in client.files.list()}
        with pytest.raises(openai.PermissionDeniedError):
            client.files.retrieve(f.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "bad-action", "actions": ["get_file", "fly"], "operations": []}, "actions"),
        ({"name": "bad-action2", "actions": ["GET_FILE"], "operations": []}, "actions"),
        ({"name": "Bad Name", "actions": [], "operations": []}, "name"),
        ({"name": "UPPER", "actions": [], "operations": []}, "name"),
        ({"name": "9starts-with-digit", "actions": [], "operations": []}, "name"),
        ({"name": "", "actions": [], "operations": []}, "name"),
        ({"name": "a" * 65, "actions": [], "operations": []}, "name"),
        ({"actions": [], "operations": []}, "name"),
        ({"name": "admin", "actions": [], "operations": []}, "name"),
        ({"name": "member", "actions": ["get_file"], "operations": ["*"]}, "name"),
        ({"name": "reader", "actions": list(ALL_ACTIONS), "operations": ["*"]}, "name"),
        ({"name": "bad-op", "actions": [], "operations": ["chat/completions"]}, "operations"),
        ({"name": "bad-op2", "actions": [], "operations": ["/v2/chat/completions"]},
         "operations"),
        ({"name": "bad-op3", "actions": [], "operations": ["**"]}, "operations"),
        ({"name": "bad-type", "actions": "get_file", "operations": []}, "actions"),
        ({"name": "bad-type2", "actions": [], "operations": "*"}, "operations"),
    ],
    ids=["unknown-action", "action-wrong-case", "name-with-space", "name-upper",
         "name-starts-with-digit", "empty-name", "long-name", "no-name", "builtin-admin",
         "builtin-member", "builtin-reader", "op-without-v1", "op-v2", "op-double-star",
         "actions-not-list", "operations-not-list"],
)
def test_invalid_role_definitions_are_400(shared_barge: BargeProcess, body: dict[str, Any],
                                          param: str) -> None:
    before = _roles(shared_barge)
    r = admin_request(shared_barge, "POST", "/admin/roles", json=body)
    http_error(r, status=400, param=param)
    assert _roles(shared_barge) == before


def test_a_duplicate_role_is_409_and_changes_nothing(shared_barge: BargeProcess) -> None:
    barge = shared_barge
    name = unique("dup")
    original = create_role(barge, name, ["get_files"], [])
    r = admin_request(barge, "POST", "/admin/roles",
                      json={"name": name, "actions": list(ALL_ACTIONS), "operations": ["*"]})
    http_error(r, status=409, param="name")
    assert _roles(barge)[name] == original


# -- keys are kept only as hashes ---------------------------------------------------------


def _stored_bytes(data_dir: Path) -> bytes:
    out = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = data_dir / f"barge.db{suffix}"
        if p.exists():
            out += p.read_bytes()
    return out


def test_secrets_are_stored_only_as_hashes(shared_barge: BargeProcess,
                                           connect: Connect) -> None:
    barge = shared_barge
    account = unique("hashed")
    _, api_secret = api_key(barge, "member", account)
    _, cli_secret = cli_key(barge, "member", account)
    acct = populate(barge, connect, unique("hashed-objects"))
    revoked_id, revoked_secret = api_key(barge, "reader", account)
    assert admin_request(barge, "DELETE", f"/admin/keys/{revoked_id}").status_code == 200
    for secret in (api_secret, cli_secret):
        assert connect(barge, api_key=secret).files.list() is not None

    stored = _stored_bytes(barge.data_dir)
    assert stored, "no database file found"
    for secret in (api_secret, cli_secret, acct.key, revoked_secret, ADMIN_KEY):
        assert secret.encode() not in stored, secret
        # Not even the random part without its prefix.
        assert secret[-24:].encode() not in stored, secret
    log = barge.log()
    for secret in (api_secret, cli_secret, acct.key, revoked_secret):
        assert secret not in log


def test_a_stored_admin_key_manages_only_its_own_accounts_keys(
    shared_barge: BargeProcess, connect: Connect
) -> None:
    """manage_keys on a stored key stays inside its account: it cannot see, make or
    revoke another account's keys (those look like they do not exist). Only the server's
    own admin key (BARGE_ADMIN_KEY) manages every account."""
    a, b = unique("acct-a"), unique("acct-b")
    a_key_id, a_secret = api_key(shared_barge, "member", a)
    _, b_admin = api_key(shared_barge, "admin", b)

    listed = admin_request(shared_barge, "GET", "/admin/keys", key=b_admin).json()["data"]
    assert {k["account"] for k in listed} == {b}

    r = admin_request(shared_barge, "POST", "/admin/keys", key=b_admin,
                      json={"name": "sneaky", "role": "admin", "account": a})
    http_error(r, status=403, param="account")

    r = admin_request(shared_barge, "DELETE", f"/admin/keys/{a_key_id}", key=b_admin)
    http_error(r, status=404)
    client = connect(shared_barge, api_key=a_secret)
    assert client.files.list().data == []  # A's key still works

    everyone = {k["account"] for k in _keys(shared_barge)}  # the server admin sees all
    assert {a, b} <= everyone
