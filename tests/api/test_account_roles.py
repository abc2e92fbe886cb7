"""Security acceptance: custom roles belong to an account, against a real ``barge serve``.
A role's name is unique within its account only; no account can list, read, use or
change another account's roles (the built-in admin, member and reader are the same for
all and cannot be changed). Roles made before roles had accounts (schema 4) land, on
upgrade, in every account whose keys use them, or in 'default'."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from api.keys_support import (
    Connect,
    admin_request,
    api_key,
    assert_http_denied,
    create_role,
    http_error,
    unique,
)
from barge_process import BargeProcess, clean_env
from upstream import UpstreamServer

from barge.store.sqlite import migrations, split_statements

BUILTIN = {"admin", "member", "reader"}


def _roles(barge: BargeProcess, key: str, query: str = "") -> list[dict[str, Any]]:
    r = admin_request(barge, "GET", f"/admin/roles{query}", key=key)
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


def _custom(barge: BargeProcess, key: str, query: str = "") -> dict[str, dict[str, Any]]:
    """Custom roles visible to ``key``, by name (each checked to be of one account)."""
    seen = [r for r in _roles(barge, key, query) if not r["builtin"]]
    return {r["name"]: r for r in seen}


def test_the_same_name_in_two_accounts_is_two_roles(shared_barge: BargeProcess,
                                                    connect: Connect) -> None:
    barge = shared_barge
    a, b = unique("roles-a"), unique("roles-b")
    _, a_admin = api_key(barge, "admin", a)
    _, b_admin = api_key(barge, "admin", b)
    name = unique("uploader")
    a_role = create_role(barge, name, ["upload_file", "get_files"], [], by=a_admin)
    # B may take the same name (no 409), with other permissions, and A's stays as it was.
    b_role = create_role(barge, name, ["get_batches"], [], by=b_admin)
    assert (a_role["account"], b_role["account"]) == (a, b)
    assert _custom(barge, a_admin) == {name: a_role}
    assert _custom(barge, b_admin) == {name: b_role}
    # Creating it again in one account is still a conflict that changes nothing.
    r = admin_request(barge, "POST", "/admin/roles", key=b_admin,
                      json={"name": name, "actions": ["get_files"], "operations": []})
    http_error(r, status=409, param="name")
    assert _custom(barge, a_admin) == {name: a_role}

    # Each account's keys of that role get their own account's definition.
    _, a_key = api_key(barge, name, a, by=a_admin)
    _, b_key = api_key(barge, name, b, by=b_admin)
    assert admin_request(barge, "GET", "/files", key=a_key).status_code == 200
    assert_http_denied(admin_request(barge, "GET", "/batches", key=a_key), "get_batches")
    assert admin_request(barge, "GET", "/batches", key=b_key).status_code == 200
    assert_http_denied(admin_request(barge, "GET", "/files", key=b_key), "get_files")


def test_another_accounts_roles_cannot_be_listed_used_or_changed(
    shared_barge: BargeProcess
) -> None:
    barge = shared_barge
    a, b = unique("owner"), unique("intruder")
    _, a_admin = api_key(barge, "admin", a)
    _, b_admin = api_key(barge, "admin", b)
    secret_role = unique("a-only")
    created = create_role(barge, secret_role, ["get_files"], [], by=a_admin)

    # Not listed for B, not even when asked for by account.
    assert {r["name"] for r in _roles(barge, b_admin)} == BUILTIN
    r = admin_request(barge, "GET", f"/admin/roles?account={a}", key=b_admin)
    http_error(r, status=403, param="account", code="permission_denied")
    # Not usable for B's keys: to B it does not exist.
    r = admin_request(barge, "POST", "/admin/keys", key=b_admin,
                      json={"name": "borrow", "role": secret_role, "account": b})
    http_error(r, status=400, param="role", code="unknown_role")
    # Not creatable or changeable in A's account by B.
    r = admin_request(barge, "POST", "/admin/roles", key=b_admin,
                      json={"name": secret_role, "actions": ["get_files", "delete_file"],
                            "operations": [], "account": a})
    http_error(r, status=403, param="account", code="permission_denied")
    assert _custom(barge, a_admin) == {secret_role: created}
    # The server's admin key sees both accounts' roles, each with its account.
    everything = [r for r in _roles(barge, "sk-test-admin") if r["name"] == secret_role]
    assert everything == [created]
    assert _custom(barge, "sk-test-admin", f"?account={b}") == {}


def test_the_cli_uses_only_the_accounts_own_roles(shared_barge: BargeProcess) -> None:
    barge = shared_barge
    a, b = unique("cli-a"), unique("cli-b")
    role = unique("cli-role")
    create_role(barge, role, ["get_files"], [], account=a)
    cmd = [sys.executable, "-m", "barge.cli", "keys", "create", "--data-dir",
           str(barge.data_dir), "--name", "x", "--role", role]
    refused = subprocess.run([*cmd, "--account", b], env=clean_env(), capture_output=True,
                             text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "No such role" in refused.stderr, refused
    made = subprocess.run([*cmd, "--account", a], env=clean_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert admin_request(barge, "GET", "/files", key=secret).status_code == 200


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_roles_stay_global_and_immutable(shared_barge: BargeProcess,
                                                 name: str) -> None:
    barge = shared_barge
    account = unique("builtin")
    _, admin = api_key(barge, "admin", account)
    r = admin_request(barge, "POST", "/admin/roles", key=admin,
                      json={"name": name, "actions": [], "operations": []})
    http_error(r, status=400, param="name")
    listed = {r["name"]: r for r in _roles(barge, admin)}
    assert listed[name]["builtin"] is True and listed[name]["account"] is None


# -- upgrading a data directory from before roles had accounts ----------------------------


def _schema_4_database(path: Path, roles: list[tuple[str, list[str]]],
                       keys: list[tuple[str, str, str]]) -> None:
    """A database as Barge left it at schema 4: ``roles`` (name, actions) global, and
    ``keys`` (secret, account, role)."""
    db = sqlite3.connect(path, isolation_level=None)
    for version, sql in migrations():
        if version <= 4:
            for statement in split_statements(sql):
                db.execute(statement)
    db.execute("PRAGMA user_version=4")
    for name, actions in roles:
        db.execute("INSERT INTO roles (name, actions, operations, created_at) VALUES (?,?,?,?)",
                   (name, orjson.dumps(actions).decode(), '["*"]', 1_700_000_000))
    for i, (secret, account, role) in enumerate(keys):
        db.execute("INSERT INTO api_keys (id, name, account, role, key_hash, created_at)"
                   " VALUES (?,?,?,?,?,?)",
                   (f"key_{i:024x}", f"old-{i}", account, role,
                    hashlib.sha256(secret.encode()).hexdigest(), 1_700_000_000))
    db.close()


def test_upgrade_puts_each_role_in_the_accounts_that_use_it(
    tmp_path: Path, barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _schema_4_database(
        data / "barge.db",
        roles=[("lister", ["get_files"]), ("batcher", ["get_batches"]), ("unused", [])],
        keys=[("sk-old-a-admin", "team-a", "admin"), ("sk-old-a", "team-a", "lister"),
              ("sk-old-b", "team-b", "lister"), ("sk-old-b2", "team-b", "batcher")],
    )
    barge = barge_factory(upstream.base_url, data_dir=data)

    assert set(_custom(barge, "sk-old-a-admin")) == {"lister"}
    by_account: dict[str, set[str]] = {}
    for r in _roles(barge, "sk-test-admin"):
        if not r["builtin"]:
            by_account.setdefault(r["account"], set()).add(r["name"])
    assert by_account == {"team-a": {"lister"}, "team-b": {"lister", "batcher"},
                          "default": {"unused"}}
    # The old keys keep their permissions.
    assert admin_request(barge, "GET", "/files", key="sk-old-a").status_code == 200
    assert admin_request(barge, "GET", "/files", key="sk-old-b").status_code == 200
    assert admin_request(barge, "GET", "/batches", key="sk-old-b2").status_code == 200
    assert_http_denied(admin_request(barge, "GET", "/batches", key="sk-old-a"), "get_batches")
    # And from now on team-a's lister is team-a's alone.
    create_role(barge, "batcher", ["get_files"], [], by="sk-old-a-admin")
    assert admin_request(barge, "GET", "/batches", key="sk-old-b2").status_code == 200
