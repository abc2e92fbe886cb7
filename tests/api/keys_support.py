"""Helpers of the key, role and permission tests: the admin API over plain HTTP, the
``barge keys`` CLI, and one account's worth of objects to act on."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from api.support import CHAT, auth_headers, chat_line, error_of, upload, wait_terminal
from barge_process import ADMIN_KEY, BargeProcess, clean_env
from openai import OpenAI

Connect = Callable[..., OpenAI]

ALL_ACTIONS = (
    "create_batch", "get_batch", "get_batches", "cancel_batch", "delete_batch",
    "upload_file", "get_file", "get_files", "download_file", "delete_file", "manage_keys",
)
READER_ACTIONS = ("download_file", "get_batch", "get_batches", "get_file", "get_files")

# Every /v1/admin route, with a body for the POSTs (each would succeed for an admin).
ADMIN_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/admin/keys", None),
    ("POST", "/admin/keys", {"name": "should-not-exist", "role": "member"}),
    ("DELETE", "/admin/keys/key_000000000000000000000000", None),
    ("GET", "/admin/roles", None),
    ("POST", "/admin/roles", {"name": "should-not-exist", "actions": [], "operations": []}),
    ("GET", "/admin/accounts/weight-probe", None),
    ("PATCH", "/admin/accounts/weight-probe", {"weight": 999}),
]

_counter = itertools.count()


def unique(prefix: str) -> str:
    """A name no other test of this run uses (accounts, roles, keys on a shared server)."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def admin_request(barge: BargeProcess, method: str, path: str, *, key: str | None = ADMIN_KEY,
                  json: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """``method`` on ``/v1{path}`` with ``key`` as a Bearer key (or no Authorization)."""
    hdrs = dict(headers or {})
    if key is not None:
        hdrs |= auth_headers(key)
    return httpx.request(method, barge.base_url + path, json=json, headers=hdrs, timeout=10)


def create_role(barge: BargeProcess, name: str, actions: list[str] | tuple[str, ...],
                operations: list[str] | tuple[str, ...] = ("*",), *,
                account: str | None = None, by: str = ADMIN_KEY) -> dict[str, Any]:
    """A custom role of ``account`` (default: the account of the key ``by``), made through
    ``POST /v1/admin/roles``. Roles belong to one account: keys of another cannot use it."""
    body_in: dict[str, Any] = {"name": name, "actions": list(actions),
                               "operations": list(operations)}
    if account is not None:
        body_in["account"] = account
    r = admin_request(barge, "POST", "/admin/roles", key=by, json=body_in)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["name"] == name and body["builtin"] is False, body
    assert sorted(body["actions"]) == sorted(actions), body
    if account is not None:
        assert body["account"] == account, body
    return body


def api_key(barge: BargeProcess, role: str, account: str, name: str | None = None,
            *, by: str = ADMIN_KEY) -> tuple[str, str]:
    """(key id, secret) of a key made through ``POST /v1/admin/keys``."""
    r = admin_request(barge, "POST", "/admin/keys", key=by,
                      json={"name": name or unique("k"), "role": role, "account": account})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("key_") and body["role"] == role, body
    assert body["account"] == account, body
    assert isinstance(body["key"], str) and body["key"], body
    return body["id"], body["key"]


def barge_cli(barge: BargeProcess, *args: str, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
    """``python -m barge.cli ARGS --data-dir DIR`` on the running server's data dir."""
    proc = subprocess.run(
        [sys.executable, "-m", "barge.cli", *args, "--data-dir", str(barge.data_dir)],
        env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def cli_key(barge: BargeProcess, role: str, account: str,
            name: str | None = None) -> tuple[str, str]:
    """(key id, secret) of a key made by ``barge keys create``."""
    lines = barge_cli(barge, "keys", "create", "--name", name or unique("cli"), "--role", role,
                      "--account", account).stdout.strip().splitlines()
    first = lines[0].split()
    assert first[:2] == ["created", "key"] and first[2].startswith("key_"), lines
    secret = lines[-1].strip()
    assert secret and " " not in secret, lines
    return first[2], secret


def assert_denied(exc: Any, action: str) -> dict[str, Any]:
    """A 403 in the OpenAI shape, code permission_denied, naming ``action``."""
    err = error_of(exc, status=403, code="permission_denied")
    assert action in err["message"], err
    return err


def assert_http_denied(r: httpx.Response, action: str) -> dict[str, Any]:
    assert r.status_code == 403, (r.status_code, r.text)
    err = error_of(_Wrapped(r), status=403, code="permission_denied")
    assert action in err["message"], err
    return err


class _Wrapped:
    """An httpx response dressed as an SDK error, for ``error_of``."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status_code = response.status_code


def http_error(r: httpx.Response, *, status: int, param: Any = Any,
               code: Any = Any) -> dict[str, Any]:
    """The error dict of a plain HTTP response, its status and OpenAI shape checked."""
    return error_of(_Wrapped(r), status=status, param=param, code=code)


@dataclass
class Account:
    """One account's objects, made with a member key: a finished batch (with its input and
    output files) and a spare file that nothing uses."""

    name: str
    key: str
    input_bytes: bytes
    input_file_id: str
    batch_id: str
    output_file_id: str
    spare_file_id: str


def populate(barge: BargeProcess, connect: Connect, account: str) -> Account:
    _, secret = api_key(barge, "member", account)
    owner = connect(barge, api_key=secret)
    lines = [chat_line(f"{account}-a"), chat_line(f"{account}-b")]
    f = upload(owner, lines)
    b = owner.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    done = wait_terminal(owner, b.id)
    assert done.status == "completed" and done.output_file_id, done
    spare = upload(owner, [chat_line("spare")], filename="spare.jsonl")
    return Account(account, secret, owner.files.content(f.id).content, f.id, b.id,
                   done.output_file_id, spare.id)


def slow_batch(client: OpenAI, n: int = 3, delay: float = 1.0) -> str:
    """A batch that stays cancellable for a while; its id."""
    f = upload(client, [chat_line(f"slow-{i}", delay=delay) for i in range(n)])
    return client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id
