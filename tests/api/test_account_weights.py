"""Account weights and limits over the admin API (``GET``/``PATCH /v1/admin/accounts/{account}``),
against a real ``barge serve``: who may read and set them, what a weight may be, and
what the answers look like."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from api.keys_support import (
    READER_ACTIONS,
    admin_request,
    api_key,
    assert_http_denied,
    cli_key,
    create_role,
    http_error,
    unique,
)
from barge_process import ADMIN_KEY, BargeProcess


def _get(barge: BargeProcess, account: str, key: str = ADMIN_KEY) -> Any:
    return admin_request(barge, "GET", f"/admin/accounts/{account}", key=key)


def _patch(barge: BargeProcess, account: str, body: Any, key: str = ADMIN_KEY) -> Any:
    return admin_request(barge, "PATCH", f"/admin/accounts/{account}", key=key, json=body)


def _weight(barge: BargeProcess, account: str) -> float:
    r = _get(barge, account)
    assert r.status_code == 200, r.text
    weight: float = r.json()["weight"]
    return weight


def test_an_account_never_weighted_has_weight_1(shared_barge: BargeProcess) -> None:
    account = unique("unweighted")
    r = _get(shared_barge, account)
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "account", "id": account, "weight": 1,
                        "max_in_flight": None, "tokens_per_minute": None}


def test_set_and_read_back(shared_barge: BargeProcess) -> None:
    account = unique("weighted")
    for weight in (2.5, 1000, 0.001, 3):
        r = _patch(shared_barge, account, {"weight": weight})
        assert r.status_code == 200, r.text
        assert r.json() == {"object": "account", "id": account, "weight": weight,
                            "max_in_flight": None, "tokens_per_minute": None}
        got = _get(shared_barge, account)
        assert got.status_code == 200, got.text
        assert got.json() == r.json()
    # Other accounts keep theirs.
    assert _weight(shared_barge, unique("bystander")) == 1


@pytest.mark.parametrize("body", [
    {"weight": 0}, {"weight": -1}, {"weight": 0.0}, {"weight": -0.5}, {"weight": 1000.0001},
    {"weight": 1001}, {"weight": 10**30}, {"weight": 1e308}, {"weight": "2"},
    {"weight": True}, {"weight": None}, {"weight": [2]}, {"weight": {"value": 2}},
], ids=repr)
def test_an_invalid_weight_is_400_and_changes_nothing(shared_barge: BargeProcess,
                                                      body: dict[str, Any]) -> None:
    account = unique("invalid")
    assert _patch(shared_barge, account, {"weight": 4}).status_code == 200
    err = http_error(_patch(shared_barge, account, body), status=400, param="weight",
                     code="invalid_weight")
    assert "1000" in err["message"], err
    assert _weight(shared_barge, account) == 4


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'"weight"', b"{}", b'{"weight": NaN}',
                                 b'{"weight": Infinity}', b'{"weight": 1e400}'], ids=repr)
def test_a_body_without_a_valid_weight_is_400(shared_barge: BargeProcess,
                                              raw: bytes) -> None:
    account = unique("raw")
    r = httpx.patch(f"{shared_barge.base_url}/admin/accounts/{account}", content=raw,
                    headers={"Authorization": f"Bearer {ADMIN_KEY}",
                             "Content-Type": "application/json"}, timeout=10)
    http_error(r, status=400, param=None if raw != b"{}" else "weight")
    assert _weight(shared_barge, account) == 1


def test_an_invalid_account_name_is_400(shared_barge: BargeProcess) -> None:
    bad = "x" * 65
    http_error(_get(shared_barge, bad), status=400, param="account")
    http_error(_patch(shared_barge, bad, {"weight": 2}), status=400, param="account")
    r = _patch(shared_barge, "bad%20name", {"weight": 2})
    http_error(r, status=400, param="account")


@pytest.mark.parametrize("role", ["member", "reader"])
def test_member_and_reader_keys_are_403(shared_barge: BargeProcess, role: str) -> None:
    account = unique(f"weights-{role}")
    _, secret = api_key(shared_barge, role, account)
    for r in (_get(shared_barge, account, key=secret),
              _patch(shared_barge, account, {"weight": 50}, key=secret)):
        err = assert_http_denied(r, "manage_keys")
        assert role in err["message"], err
    assert _weight(shared_barge, account) == 1


def test_a_custom_manage_keys_role_reads_but_does_not_set(shared_barge: BargeProcess) -> None:
    account = unique("keymasters-w")
    role = unique("keymaster-w")
    create_role(shared_barge, role, ["manage_keys", *READER_ACTIONS], [], account=account)
    _, secret = api_key(shared_barge, role, account)
    assert _patch(shared_barge, account, {"weight": 2}).status_code == 200
    r = _get(shared_barge, account, key=secret)
    assert r.status_code == 200, r.text
    assert r.json()["weight"] == 2
    err = http_error(_patch(shared_barge, account, {"weight": 50}, key=secret),
                     status=403, param="account", code="permission_denied")
    assert "server's admin key" in err["message"], err
    assert _weight(shared_barge, account) == 2


@pytest.mark.parametrize("made_by", ["api", "cli"])
def test_a_stored_admin_key_reads_its_own_weight_but_never_sets_one(
        shared_barge: BargeProcess, made_by: str) -> None:
    account, other = unique("own-w"), unique("other-w")
    make = api_key if made_by == "api" else cli_key
    _, secret = make(shared_barge, "admin", account)
    # Raising its own share would take turns from every other account: refused.
    r = _patch(shared_barge, account, {"weight": 7.5}, key=secret)
    http_error(r, status=403, param="account", code="permission_denied")
    assert _patch(shared_barge, account, {"weight": 7.5}).status_code == 200  # the server's
    assert _get(shared_barge, account, key=secret).json()["weight"] == 7.5
    # Another account is out of reach, for reading and for setting.
    for r in (_get(shared_barge, other, key=secret),
              _patch(shared_barge, other, {"weight": 50}, key=secret)):
        http_error(r, status=403, param="account", code="permission_denied")
    assert _weight(shared_barge, other) == 1


def test_without_a_key_it_is_401(shared_barge: BargeProcess) -> None:
    account = unique("anon-w")
    for r in (admin_request(shared_barge, "GET", f"/admin/accounts/{account}", key=None),
              admin_request(shared_barge, "PATCH", f"/admin/accounts/{account}", key=None,
                            json={"weight": 5})):
        http_error(r, status=401)
    assert _weight(shared_barge, account) == 1


def test_other_methods_are_not_allowed(shared_barge: BargeProcess) -> None:
    account = unique("methods-w")
    for method in ("POST", "PUT", "DELETE"):
        r = admin_request(shared_barge, method, f"/admin/accounts/{account}",
                          json={"weight": 5})
        assert r.status_code == 405, (method, r.status_code, r.text)
    assert _weight(shared_barge, account) == 1


def _limits(barge: BargeProcess, account: str) -> tuple[Any, Any, Any]:
    r = _get(barge, account)
    assert r.status_code == 200, r.text
    body = r.json()
    return body["weight"], body["max_in_flight"], body["tokens_per_minute"]


def test_limits_set_read_back_and_clear(shared_barge: BargeProcess) -> None:
    account = unique("limited")
    r = _patch(shared_barge, account, {"max_in_flight": 2})
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "account", "id": account, "weight": 1,
                        "max_in_flight": 2, "tokens_per_minute": None}
    assert _get(shared_barge, account).json() == r.json()
    # What a body leaves out stays.
    r = _patch(shared_barge, account, {"tokens_per_minute": 6000, "weight": 3})
    assert r.status_code == 200, r.text
    assert _limits(shared_barge, account) == (3, 2, 6000)
    r = _patch(shared_barge, account, {"weight": 0.5})
    assert r.status_code == 200, r.text
    assert r.json()["max_in_flight"] == 2 and r.json()["tokens_per_minute"] == 6000
    # null clears one.
    r = _patch(shared_barge, account, {"max_in_flight": None})
    assert r.status_code == 200, r.text
    assert _limits(shared_barge, account) == (0.5, None, 6000)
    r = _patch(shared_barge, account, {"tokens_per_minute": None, "max_in_flight": 10**6})
    assert r.status_code == 200, r.text
    assert _limits(shared_barge, account) == (0.5, 10**6, None)
    assert _limits(shared_barge, unique("bystander")) == (1, None, None)


@pytest.mark.parametrize("param", ["max_in_flight", "tokens_per_minute"])
@pytest.mark.parametrize("value", [0, -1, 1.5, 2.0, "2", True, False, [2], {"n": 2},
                                   10**13], ids=repr)
def test_an_invalid_limit_is_400_with_its_name_and_changes_nothing(
        shared_barge: BargeProcess, param: str, value: Any) -> None:
    account = unique("bad-limit")
    assert _patch(shared_barge, account, {"weight": 2, param: 5}).status_code == 200
    # The whole body is refused, its valid parts too.
    err = http_error(_patch(shared_barge, account, {"weight": 4, param: value}),
                     status=400, param=param, code=f"invalid_{param}")
    assert param in err["message"], err
    weight, mif, tpm = _limits(shared_barge, account)
    assert weight == 2 and (mif if param == "max_in_flight" else tpm) == 5


def test_a_stored_admin_key_reads_its_limits_but_never_sets_them(
        shared_barge: BargeProcess) -> None:
    account = unique("own-limits")
    _, secret = api_key(shared_barge, "admin", account)
    assert _patch(shared_barge, account, {"max_in_flight": 3}).status_code == 200
    for body in ({"max_in_flight": None}, {"tokens_per_minute": 10**6}):
        http_error(_patch(shared_barge, account, body, key=secret), status=403,
                   param="account", code="permission_denied")
    r = _get(shared_barge, account, key=secret)
    assert r.status_code == 200, r.text
    assert r.json()["max_in_flight"] == 3 and r.json()["tokens_per_minute"] is None
