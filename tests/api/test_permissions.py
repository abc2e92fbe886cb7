"""Security acceptance: roles and accounts on the OpenAI surface, against a real
``barge serve``. One test per action (a role with every action but that one is refused
exactly that one), the endpoint permission of ``create_batch``, the built-in reader role,
cross-account access to every route (always 404, identical to a missing object), and 401
for absent, malformed, wrong and revoked keys on every route, admin routes included.

``delete_batch`` is checked with plain HTTP (``DELETE /v1/batches/{id}``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from api.keys_support import (
    ADMIN_ROUTES,
    ALL_ACTIONS,
    Account,
    Connect,
    admin_request,
    api_key,
    assert_denied,
    assert_http_denied,
    barge_cli,
    cli_key,
    create_role,
    http_error,
    populate,
    slow_batch,
    unique,
)
from api.support import (
    CHAT,
    all_batch_ids,
    all_file_ids,
    auth_headers,
    chat_line,
    error_of,
    request_line,
    to_jsonl,
    upload,
    wait_terminal,
)
from barge_process import BargeProcess
from openai import OpenAI

EMBEDDINGS = "/v1/embeddings"
MISSING_FILE = "file-000000000000000000000000"
MISSING_BATCH = "batch_000000000000000000000000"

# The routes and the action guarding each.
GUARDED = ["create_batch", "get_batch", "get_batches", "cancel_batch", "upload_file",
           "get_file", "get_files", "download_file", "delete_file", "manage_keys",
           "delete_batch"]


def _sdk_404(r: httpx.Response) -> httpx.Response:
    """A plain-HTTP probe's 404 raised as the SDK would, so probes compare alike."""
    if r.status_code == 404:
        raise openai.NotFoundError("not found", response=r, body=r.json())
    return r


def _delete_batch(barge: BargeProcess, key: str, batch_id: str) -> httpx.Response:
    r = admin_request(barge, "DELETE", f"/batches/{batch_id}", key=key)
    if r.status_code == 403:
        raise openai.PermissionDeniedError("denied", response=r, body=r.json())
    return r


# -- one test per action ------------------------------------------------------------------


def _attempt(action: str, client: OpenAI, barge: BargeProcess, key: str, acct: Account,
             cancel_id: str) -> Any:
    """Do the one thing ``action`` guards, as ``client``; returns what came back."""
    if action == "create_batch":
        return client.batches.create(input_file_id=acct.input_file_id, endpoint=CHAT,
                                     completion_window="24h")
    if action == "get_batch":
        return client.batches.retrieve(acct.batch_id)
    if action == "get_batches":
        return client.batches.list(limit=100)
    if action == "cancel_batch":
        return client.batches.cancel(cancel_id)
    if action == "upload_file":
        return upload(client, [chat_line("restricted-upload")])
    if action == "get_file":
        return client.files.retrieve(acct.input_file_id)
    if action == "get_files":
        return client.files.list()
    if action == "download_file":
        return client.files.content(acct.input_file_id)
    if action == "delete_file":
        return client.files.delete(acct.spare_file_id)
    if action == "delete_batch":
        return _delete_batch(barge, key, acct.batch_id)
    assert action == "manage_keys"
    r = admin_request(barge, "GET", "/admin/keys", key=key)
    if r.status_code == 403:
        raise openai.PermissionDeniedError("denied", response=r, body=r.json())
    return r


def _check_allowed(action: str, result: Any, acct: Account, cancel_id: str) -> None:
    """``result`` is what the allowed ``action`` should have returned."""
    if action == "create_batch":
        assert result.input_file_id == acct.input_file_id and result.endpoint == CHAT
    elif action == "get_batch":
        assert result.id == acct.batch_id and result.status == "completed"
    elif action == "get_batches":
        assert acct.batch_id in {b.id for b in result.data}
    elif action == "cancel_batch":
        assert result.id == cancel_id and result.status in ("cancelling", "cancelled")
    elif action == "upload_file":
        assert result.id.startswith("file-") and result.purpose == "batch"
    elif action == "get_file":
        assert result.id == acct.input_file_id
    elif action == "get_files":
        assert {acct.input_file_id, acct.spare_file_id} <= {f.id for f in result.data}
    elif action == "download_file":
        assert result.content == acct.input_bytes
    elif action == "delete_file":
        assert result.id == acct.spare_file_id and result.deleted is True
    elif action == "delete_batch":
        assert result.status_code == 200, result.text
        assert result.json() == {"id": acct.batch_id, "object": "batch.deleted",
                                 "deleted": True}
    else:
        assert result.status_code == 200, result.text
        assert result.json()["object"] == "list"


def _denial_for_missing_object(action: str, client: OpenAI) -> Any:
    """The refused action on an object that does not exist: must be the same 403."""
    calls: dict[str, Callable[[], Any]] = {
        "get_batch": lambda: client.batches.retrieve(MISSING_BATCH),
        "cancel_batch": lambda: client.batches.cancel(MISSING_BATCH),
        "get_file": lambda: client.files.retrieve(MISSING_FILE),
        "download_file": lambda: client.files.content(MISSING_FILE),
        "delete_file": lambda: client.files.delete(MISSING_FILE),
        "create_batch": lambda: client.batches.create(input_file_id=MISSING_FILE,
                                                      endpoint=CHAT, completion_window="24h"),
    }
    return calls.get(action)


@pytest.mark.parametrize("missing", GUARDED)
def test_a_role_without_one_action_is_refused_only_that_action(
    shared_barge: BargeProcess, connect: Connect, missing: str
) -> None:
    barge = shared_barge
    acct = populate(barge, connect, unique(f"no-{missing}"))
    owner = connect(barge, api_key=acct.key)
    role = unique(f"all-but-{missing}").replace("_", "-")
    actions = [a for a in ALL_ACTIONS if a != missing]
    create_role(barge, role, actions, ["*"], account=acct.name)
    _, secret = api_key(barge, role, acct.name)
    client = connect(barge, api_key=secret)
    cancel_id = slow_batch(owner)  # a batch to cancel, still running
    files_before, batches_before = all_file_ids(owner), all_batch_ids(owner)

    with pytest.raises(openai.PermissionDeniedError) as exc:
        _attempt(missing, client, barge, secret, acct, cancel_id)
    err = assert_denied(exc.value, missing)
    assert role in err["message"], err
    assert secret not in exc.value.response.text

    # Refused before anything was looked up: a missing object gets the very same answer.
    other = _denial_for_missing_object(missing, client)
    if other is not None:
        with pytest.raises(openai.PermissionDeniedError) as again:
            other()
        assert again.value.response.json() == exc.value.response.json()

    # The refusal changed nothing.
    assert all_file_ids(owner) == files_before
    assert all_batch_ids(owner) == batches_before
    if missing == "cancel_batch":
        assert owner.batches.retrieve(cancel_id).status not in ("cancelling", "cancelled")
    if missing == "manage_keys":
        for method, path, body in ADMIN_ROUTES:
            r = admin_request(barge, method, path, key=secret, json=body)
            assert_http_denied(r, "manage_keys")
        names = {r["name"] for r in admin_request(barge, "GET", "/admin/roles").json()["data"]}
        assert "should-not-exist" not in names

    # Everything else the role allows still works (cancel first, while the batch runs;
    # delete the finished batch last, once nothing else needs it).
    for action in sorted(GUARDED, key=lambda a: (a != "cancel_batch", a == "delete_batch")):
        if action == missing:
            continue
        result = _attempt(action, client, barge, secret, acct, cancel_id)
        _check_allowed(action, result, acct, cancel_id)
    wait_terminal(owner, cancel_id)


def test_a_role_with_no_actions_is_refused_everything(shared_barge: BargeProcess,
                                                      connect: Connect) -> None:
    barge = shared_barge
    acct = populate(barge, connect, unique("nothing"))
    role = unique("nothing")
    create_role(barge, role, [], ["*"], account=acct.name)
    _, secret = api_key(barge, role, acct.name)
    client = connect(barge, api_key=secret)
    for action in GUARDED:
        with pytest.raises(openai.PermissionDeniedError) as exc:
            _attempt(action, client, barge, secret, acct, acct.batch_id)
        assert_denied(exc.value, action)


# -- the endpoint permission of create_batch ----------------------------------------------


def test_create_batch_also_needs_the_endpoints_operation(shared_barge: BargeProcess,
                                                         connect: Connect) -> None:
    barge = shared_barge
    account = unique("embed-only")
    role = unique("embedder")
    create_role(barge, role, ["create_batch", "upload_file", "get_batch", "get_file",
                              "download_file", "get_batches"], [EMBEDDINGS], account=account)
    _, secret = api_key(barge, role, account)
    client = connect(barge, api_key=secret)

    chat_file = upload(client, [chat_line("no-chat")])
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.batches.create(input_file_id=chat_file.id, endpoint=CHAT, completion_window="24h")
    err = error_of(exc.value, status=403, param="endpoint", code="permission_denied")
    assert CHAT in err["message"] and role in err["message"], err
    assert client.batches.list().data == []

    # The answer does not depend on whether the input file exists.
    with pytest.raises(openai.PermissionDeniedError) as again:
        client.batches.create(input_file_id=MISSING_FILE, endpoint=CHAT, completion_window="24h")
    assert again.value.response.json() == exc.value.response.json()

    emb = upload(client, to_jsonl([request_line(
        "e1", {"model": "emb-test", "input": ["some text"]}, url=EMBEDDINGS)]))
    b = client.batches.create(input_file_id=emb.id, endpoint=EMBEDDINGS, completion_window="24h")
    assert b.endpoint == EMBEDDINGS
    done = wait_terminal(client, b.id)
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.completed == 1


def test_create_batch_with_no_operations_is_refused(shared_barge: BargeProcess,
                                                    connect: Connect) -> None:
    barge = shared_barge
    role, account = unique("no-ops"), unique("no-ops")
    create_role(barge, role, ["create_batch", "upload_file"], [], account=account)
    _, secret = api_key(barge, role, account)
    client = connect(barge, api_key=secret)
    f = upload(client, [chat_line("x")])
    for endpoint in (CHAT, EMBEDDINGS):
        with pytest.raises(openai.PermissionDeniedError) as exc:
            client.batches.create(input_file_id=f.id, endpoint=endpoint,  # type: ignore[arg-type]
                                  completion_window="24h")
        error_of(exc.value, status=403, param="endpoint", code="permission_denied")


def test_operations_list_allows_exactly_its_endpoints(shared_barge: BargeProcess,
                                                      connect: Connect) -> None:
    barge = shared_barge
    role, account = unique("chat-and-emb"), unique("two-ops")
    create_role(barge, role, ["create_batch", "upload_file", "get_batch"],
                [CHAT, EMBEDDINGS], account=account)
    _, secret = api_key(barge, role, account)
    client = connect(barge, api_key=secret)
    f = upload(client, [request_line("c", {"model": "m", "prompt": "hi"},
                                     url="/v1/completions")])
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                              completion_window="24h")
    error_of(exc.value, status=403, param="endpoint", code="permission_denied")
    chat = upload(client, [chat_line("ok")])
    b = client.batches.create(input_file_id=chat.id, endpoint=CHAT, completion_window="24h")
    assert wait_terminal(client, b.id).status == "completed"


# -- the built-in reader role -------------------------------------------------------------


def test_reader_can_read_but_not_write(shared_barge: BargeProcess, connect: Connect) -> None:
    barge = shared_barge
    acct = populate(barge, connect, unique("readers"))
    owner = connect(barge, api_key=acct.key)
    running = slow_batch(owner)
    _, secret = cli_key(barge, "reader", acct.name)
    reader = connect(barge, api_key=secret)

    assert {acct.input_file_id, acct.output_file_id, acct.spare_file_id} <= all_file_ids(reader)
    assert reader.files.retrieve(acct.input_file_id).id == acct.input_file_id
    assert reader.files.content(acct.input_file_id).content == acct.input_bytes
    assert reader.files.content(acct.output_file_id).content
    assert {acct.batch_id, running} <= all_batch_ids(reader)
    assert reader.batches.retrieve(acct.batch_id).status == "completed"

    files_before, batches_before = all_file_ids(owner), all_batch_ids(owner)
    refused: list[tuple[str, Callable[[], Any]]] = [
        ("upload_file", lambda: upload(reader, [chat_line("nope")])),
        ("create_batch", lambda: reader.batches.create(
            input_file_id=acct.input_file_id, endpoint=CHAT, completion_window="24h")),
        ("cancel_batch", lambda: reader.batches.cancel(running)),
        ("delete_file", lambda: reader.files.delete(acct.spare_file_id)),
    ]
    for action, call in refused:
        with pytest.raises(openai.PermissionDeniedError) as exc:
            call()
        err = assert_denied(exc.value, action)
        assert "reader" in err["message"], err
    for method, path, body in ADMIN_ROUTES:
        assert_http_denied(admin_request(barge, method, path, key=secret, json=body),
                           "manage_keys")
    assert all_file_ids(owner) == files_before
    assert all_batch_ids(owner) == batches_before
    assert owner.batches.retrieve(running).status not in ("cancelling", "cancelled")
    wait_terminal(owner, running)


# -- cross-account access -----------------------------------------------------------------


@pytest.fixture(scope="module")
def victim(shared_barge: BargeProcess) -> Iterator[Account]:
    """Account A's objects, shared by the cross-account tests (which only read them)."""
    clients: list[OpenAI] = []

    def connect(proc: BargeProcess, api_key: str) -> OpenAI:
        clients.append(proc.client(api_key))
        return clients[-1]

    yield populate(shared_barge, connect, unique("victim"))
    for c in clients:
        c.close()


def _same_404(foreign: openai.NotFoundError, missing: openai.NotFoundError,
              foreign_id: str, missing_id: str) -> None:
    """A foreign object's 404 is a missing object's 404, word for word (ids aside)."""
    got = foreign.response.json()
    want = missing.response.json()
    want["error"]["message"] = want["error"]["message"].replace(missing_id, foreign_id)
    assert got == want


@pytest.mark.parametrize("role", ["member", "admin", "reader"])
def test_another_accounts_objects_are_404_on_every_route(
    shared_barge: BargeProcess, connect: Connect, victim: Account, role: str
) -> None:
    barge = shared_barge
    owner = connect(barge, api_key=victim.key)
    running = slow_batch(owner)
    _, secret = api_key(barge, role, unique(f"intruder-{role}"))
    intruder = connect(barge, api_key=secret)
    may_write = role != "reader"

    probes: list[tuple[str, Callable[[str], Any], str, str]] = [
        ("retrieve file", lambda i: intruder.files.retrieve(i), victim.input_file_id,
         MISSING_FILE),
        ("file content", lambda i: intruder.files.content(i), victim.input_file_id,
         MISSING_FILE),
        ("output content", lambda i: intruder.files.content(i), victim.output_file_id,
         MISSING_FILE),
        ("list files after", lambda i: intruder.files.list(after=i), victim.input_file_id,
         MISSING_FILE),
        ("retrieve batch", lambda i: intruder.batches.retrieve(i), victim.batch_id,
         MISSING_BATCH),
        ("retrieve running batch", lambda i: intruder.batches.retrieve(i), running,
         MISSING_BATCH),
        ("list batches after", lambda i: intruder.batches.list(after=i), victim.batch_id,
         MISSING_BATCH),
        ("results so far", lambda i: _sdk_404(
            admin_request(barge, "GET", f"/batches/{i}/results", key=secret)),
         running, MISSING_BATCH),
    ]
    if may_write:
        probes += [
            ("delete file", lambda i: intruder.files.delete(i), victim.spare_file_id,
             MISSING_FILE),
            ("cancel finished batch", lambda i: intruder.batches.cancel(i), victim.batch_id,
             MISSING_BATCH),
            ("cancel running batch", lambda i: intruder.batches.cancel(i), running,
             MISSING_BATCH),
            ("batch from their file", lambda i: intruder.batches.create(
                input_file_id=i, endpoint=CHAT, completion_window="24h"),
             victim.input_file_id, MISSING_FILE),
            ("delete finished batch", lambda i: _sdk_404(
                admin_request(barge, "DELETE", f"/batches/{i}", key=secret)),
             victim.batch_id, MISSING_BATCH),
            ("batch links", lambda i: _sdk_404(
                admin_request(barge, "GET", f"/batches/{i}?download=true", key=secret)),
             victim.batch_id, MISSING_BATCH),
            ("retry batch", lambda i: _sdk_404(
                admin_request(barge, "POST", f"/batches/{i}/retry", key=secret)),
             victim.batch_id, MISSING_BATCH),
        ]
    for what, call, foreign_id, missing_id in probes:
        with pytest.raises(openai.NotFoundError) as foreign:
            call(foreign_id)
        err = error_of(foreign.value, status=404)
        assert victim.name not in foreign.value.response.text, (what, err)
        with pytest.raises(openai.NotFoundError) as missing:
            call(missing_id)
        _same_404(foreign.value, missing.value, foreign_id, missing_id)
        if what == "batch from their file":
            assert err["param"] == "input_file_id", err

    # Listing shows none of A's objects.
    assert all_file_ids(intruder).isdisjoint(
        {victim.input_file_id, victim.output_file_id, victim.spare_file_id})
    assert all_batch_ids(intruder).isdisjoint({victim.batch_id, running})

    # A's objects are untouched.
    assert owner.files.retrieve(victim.spare_file_id).id == victim.spare_file_id
    assert owner.files.content(victim.input_file_id).content == victim.input_bytes
    assert owner.batches.retrieve(victim.batch_id).status == "completed"
    assert owner.batches.retrieve(running).status not in ("cancelling", "cancelled")
    assert {b.input_file_id for b in owner.batches.list(limit=100)} >= {victim.input_file_id}
    assert wait_terminal(owner, running).status == "completed"


def test_intruders_own_objects_stay_its_own(shared_barge: BargeProcess, connect: Connect,
                                            victim: Account) -> None:
    """B works normally in its own account, and A does not see B's objects either."""
    barge = shared_barge
    other = populate(barge, connect, unique("neighbour"))
    owner = connect(barge, api_key=victim.key)
    assert all_file_ids(owner).isdisjoint({other.input_file_id, other.spare_file_id})
    assert other.batch_id not in all_batch_ids(owner)
    with pytest.raises(openai.NotFoundError):
        owner.batches.retrieve(other.batch_id)
    with pytest.raises(openai.NotFoundError):
        owner.files.content(other.output_file_id)


# -- 401: no key, malformed, wrong, revoked -----------------------------------------------


@pytest.fixture(scope="module")
def revoked(shared_barge: BargeProcess, victim: Account) -> dict[str, str]:
    """Two admin-role keys of the victim's account, both shown to work, then one revoked
    with ``barge keys revoke`` and one with ``DELETE /v1/admin/keys/{id}``."""
    barge = shared_barge
    cli_id, cli_secret = cli_key(barge, "admin", victim.name)
    api_id, api_secret = api_key(barge, "admin", victim.name)
    for secret in (cli_secret, api_secret):
        r = httpx.get(f"{barge.base_url}/files/{victim.input_file_id}",
                      headers=auth_headers(secret), timeout=10)
        assert r.status_code == 200, r.text
        assert admin_request(barge, "GET", "/admin/keys", key=secret).status_code == 200
    out = barge_cli(barge, "keys", "revoke", cli_id).stdout.strip().splitlines()
    assert out == [f"revoked {cli_id}"], out
    r = admin_request(barge, "DELETE", f"/admin/keys/{api_id}")
    assert r.status_code == 200, r.text
    assert r.json()["revoked"] is True
    return {"cli": cli_secret, "api": api_secret}


def _routes(acct: Account) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every route, with real ids of ``acct`` (so a working key would get a 2xx or 409)."""
    return [
        ("GET", "/files", None),
        ("POST", "/files", None),
        ("GET", f"/files/{acct.input_file_id}", None),
        ("GET", f"/files/{acct.input_file_id}/content", None),
        ("DELETE", f"/files/{acct.spare_file_id}", None),
        ("GET", "/batches", None),
        ("POST", "/batches", {"input_file_id": acct.input_file_id, "endpoint": CHAT,
                              "completion_window": "24h"}),
        ("GET", f"/batches/{acct.batch_id}", None),
        ("POST", f"/batches/{acct.batch_id}/cancel", None),
        ("GET", f"/batches/{acct.batch_id}/results", None),
        ("POST", f"/batches/{acct.batch_id}/retry", None),
        *ADMIN_ROUTES,
    ]


CREDENTIALS = ["none", "empty", "bearer-only", "basic", "lowercase-scheme", "no-space",
               "wrong", "revoked-cli", "revoked-api"]


def _headers(kind: str, revoked: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """(headers, the token presented) for each kind of bad credential."""
    if kind == "none":
        return {}, None
    token = {"revoked-cli": revoked["cli"], "revoked-api": revoked["api"]}.get(
        kind, "sk-wrong-key-0123456789abcdef")
    header = {
        "empty": "",
        "bearer-only": "Bearer",
        "basic": f"Basic {token}",
        "lowercase-scheme": f"bearer {token}",
        "no-space": f"Bearer{token}",
    }.get(kind, f"Bearer {token}")
    return {"Authorization": header}, token


@pytest.mark.parametrize("kind", CREDENTIALS)
def test_bad_credentials_are_401_on_every_route(shared_barge: BargeProcess, victim: Account,
                                                revoked: dict[str, str], kind: str) -> None:
    headers, token = _headers(kind, revoked)
    for method, path, body in _routes(victim):
        if path == "/files" and method == "POST":
            r = httpx.post(shared_barge.base_url + path, headers=headers, timeout=10,
                           files={"file": ("x.jsonl", to_jsonl([chat_line("x")]))},
                           data={"purpose": "batch"})
        else:
            r = httpx.request(method, shared_barge.base_url + path, headers=headers,
                              json=body, timeout=10)
        err = http_error(r, status=401)
        assert err["code"] in ("missing_api_key", "invalid_api_key"), err
        if token is not None:
            assert token not in r.text, (method, path, r.text)
            assert token[-8:] not in r.text, (method, path, r.text)
    # Nothing any of it did reached the victim's objects.
    spare = httpx.get(f"{shared_barge.base_url}/files/{victim.spare_file_id}",
                      headers=auth_headers(victim.key), timeout=10)
    assert spare.status_code == 200, spare.text


def test_revoked_keys_are_authentication_errors_in_the_sdk(
    shared_barge: BargeProcess, connect: Connect, victim: Account, revoked: dict[str, str]
) -> None:
    for secret in revoked.values():
        client = connect(shared_barge, api_key=secret)
        calls: list[Callable[[], Any]] = [
            client.files.list,
            lambda c=client: c.files.retrieve(victim.input_file_id),
            lambda c=client: c.batches.retrieve(victim.batch_id),
            lambda c=client: c.batches.create(input_file_id=victim.input_file_id,
                                              endpoint=CHAT, completion_window="24h"),
        ]
        for call in calls:
            with pytest.raises(openai.AuthenticationError) as exc:
                call()
            err = error_of(exc.value, status=401, code="invalid_api_key")
            assert secret not in err["message"]
    keys = admin_request(shared_barge, "GET", "/admin/keys").json()["data"]
    revoked_rows = [k for k in keys if k["account"] == victim.name and k["revoked_at"]]
    assert len(revoked_rows) == 2, keys
