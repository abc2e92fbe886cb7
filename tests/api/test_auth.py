"""Acceptance: API keys. No key or a wrong key is a 401 in the OpenAI error shape; keys made
with ``barge keys create`` work at once on a running server and stop at ``keys revoke``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import httpx
import openai
import pytest
from api.support import (
    CHAT,
    all_file_ids,
    assert_error_shape,
    auth_headers,
    chat_line,
    error_of,
    root_url,
    run_batch,
    upload,
)
from barge_process import ADMIN_KEY, BargeProcess, clean_env
from openai import OpenAI

Connect = Callable[..., OpenAI]

ENDPOINTS = [
    ("GET", "/files"),
    ("POST", "/files"),
    ("GET", "/files/file-000000000000000000000000"),
    ("GET", "/files/file-000000000000000000000000/content"),
    ("DELETE", "/files/file-000000000000000000000000"),
    ("GET", "/batches"),
    ("POST", "/batches"),
    ("GET", "/batches/batch_000000000000000000000000"),
    ("POST", "/batches/batch_000000000000000000000000/cancel"),
]


def barge_cli(barge: BargeProcess, *args: str) -> list[str]:
    """Run ``barge`` on the server's data dir (while it runs); its stdout lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "barge.cli", *args, "--data-dir", str(barge.data_dir)],
        env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def create_key(barge: BargeProcess, name: str, *extra: str) -> tuple[str, str]:
    """(key id, secret) of a new key: the id is in the first line, the key the last."""
    lines = barge_cli(barge, "keys", "create", "--name", name, *extra)
    first = lines[0].split()
    assert first[:2] == ["created", "key"], lines
    key_id, secret = first[2], lines[-1].strip()
    assert key_id.startswith("key_")
    assert secret and " " not in secret
    return key_id, secret


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_missing_key_is_401_everywhere(shared_barge: BargeProcess, method: str,
                                      path: str) -> None:
    r = httpx.request(method, shared_barge.base_url + path, timeout=10)
    assert r.status_code == 401, r.text
    assert_error_shape(r.json())


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Basic c2stdGVzdC1hZG1pbg==", f"bearer{ADMIN_KEY}",
     f"Token {ADMIN_KEY}", "Bearer sk-not-the-key"],
)
def test_malformed_or_wrong_authorization_is_401(shared_barge: BargeProcess,
                                                header: str) -> None:
    r = httpx.get(shared_barge.base_url + "/files", headers={"Authorization": header},
                  timeout=10)
    assert r.status_code == 401, r.text
    assert_error_shape(r.json())


def test_wrong_key_is_authentication_error(barge: BargeProcess, connect: Connect) -> None:
    admin = connect(barge)
    f = upload(admin, [chat_line("a")])
    intruder = connect(barge, api_key="sk-wrong-key")
    with pytest.raises(openai.AuthenticationError) as exc:
        intruder.files.list()
    error_of(exc.value, status=401)
    for call in (lambda: intruder.files.retrieve(f.id),
                 lambda: intruder.files.content(f.id),
                 lambda: intruder.files.delete(f.id),
                 lambda: intruder.batches.create(input_file_id=f.id, endpoint=CHAT,
                                                 completion_window="24h"),
                 lambda: upload(intruder, [chat_line("x")])):
        with pytest.raises(openai.AuthenticationError):
            call()
    # Nothing the intruder tried had an effect.
    assert all_file_ids(admin) == {f.id}
    assert admin.batches.list().data == []


def test_missing_key_error_names_the_problem(barge: BargeProcess) -> None:
    r = httpx.get(barge.base_url + "/batches", timeout=10)
    err = assert_error_shape(r.json())
    assert err["code"] == "missing_api_key"
    r = httpx.get(barge.base_url + "/batches", headers=auth_headers("sk-nope"), timeout=10)
    err = assert_error_shape(r.json())
    assert err["code"] == "invalid_api_key"
    assert "sk-nope" not in err["message"]  # the secret is never echoed back


def test_healthz_needs_no_key(barge: BargeProcess) -> None:
    r = httpx.get(f"{root_url(barge)}/healthz", timeout=10)
    assert r.status_code == 200
    r = httpx.get(f"{root_url(barge)}/healthz", headers=auth_headers("sk-wrong"), timeout=10)
    assert r.status_code == 200


def test_created_key_works_then_revoked_key_is_401(barge: BargeProcess,
                                                   connect: Connect) -> None:
    key_id, secret = create_key(barge, "ci")
    assert secret != ADMIN_KEY
    user = connect(barge, api_key=secret)

    # The new key works at once on the running server, for the whole loop.
    b = run_batch(user, [chat_line("with-new-key")])
    assert b.status == "completed"
    assert user.files.content(b.output_file_id).content  # type: ignore[arg-type]
    listed = barge_cli(barge, "keys", "list")
    assert any(line.startswith(key_id) and line.endswith("live") for line in listed), listed
    # Only a hash is stored: the secret appears nowhere in the database file.
    assert secret.encode() not in (barge.data_dir / "barge.db").read_bytes()

    assert barge_cli(barge, "keys", "revoke", key_id) == [f"revoked {key_id}"]
    with pytest.raises(openai.AuthenticationError) as exc:
        user.files.list()
    error_of(exc.value, status=401)
    with pytest.raises(openai.AuthenticationError):
        user.batches.retrieve(b.id)
    listed = barge_cli(barge, "keys", "list")
    assert any(line.startswith(key_id) and line.endswith("revoked") for line in listed), listed

    # The admin key is unaffected.
    assert connect(barge).batches.retrieve(b.id).status == "completed"


def test_revoking_an_unknown_key_fails(barge: BargeProcess) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "barge.cli", "keys", "revoke", "key_000000000000000000000000",
         "--data-dir", str(barge.data_dir)],
        env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0


def test_keys_of_another_account_see_nothing(barge: BargeProcess, connect: Connect) -> None:
    admin = connect(barge)
    mine = run_batch(admin, [chat_line("mine")])
    _, secret = create_key(barge, "other-team", "--account", "other")
    other = connect(barge, api_key=secret)

    assert other.files.list().data == []
    assert other.batches.list().data == []
    for call in (lambda: other.files.retrieve(mine.input_file_id),
                 lambda: other.files.content(mine.output_file_id),  # type: ignore[arg-type]
                 lambda: other.files.delete(mine.input_file_id),
                 lambda: other.batches.retrieve(mine.id),
                 lambda: other.batches.cancel(mine.id),
                 lambda: other.batches.create(input_file_id=mine.input_file_id, endpoint=CHAT,
                                              completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()

    theirs = run_batch(other, [chat_line("theirs")])
    assert theirs.status == "completed"
    assert [b.id for b in admin.batches.list()] == [mine.id]
    assert [b.id for b in other.batches.list()] == [theirs.id]
