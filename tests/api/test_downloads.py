"""Acceptance: temporary download links. ``GET /v1/batches/{id}?download=true`` adds signed,
expiring URLs to the batch's output and error files; they download with no API key, and a
tampered, expired or stale link is a 403 that reveals nothing."""

from __future__ import annotations

import http.client
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from api.support import (
    assert_error_shape,
    auth_headers,
    chat_line,
    root_url,
    run_batch,
)
from barge_process import ADMIN_KEY, BargeProcess
from openai import OpenAI
from upstream import UpstreamServer

from barge.domain.signing import sign

Connect = Callable[..., OpenAI]
INVALID = "This download link is invalid or has expired."
SECRET = "0123456789abcdef" * 4
FAKE_FILE = "file-0123456789abcdef01234567"


def mixed_lines(prefix: str = "r") -> list[dict[str, Any]]:
    """Two requests that succeed and one the upstream refuses: an output and an error file."""
    return [chat_line(f"{prefix}-ok-0"), chat_line(f"{prefix}-ok-1"),
            chat_line(f"{prefix}-bad-0", status=400)]


def retrieve_raw(barge: BargeProcess, batch_id: str, key: str = ADMIN_KEY,
                 **params: str) -> httpx.Response:
    return httpx.get(f"{barge.base_url}/batches/{batch_id}", params=params,
                     headers=auth_headers(key), timeout=10)


def links(barge: BargeProcess, batch_id: str, key: str = ADMIN_KEY) -> dict[str, Any]:
    r = retrieve_raw(barge, batch_id, key, download="true")
    assert r.status_code == 200, r.text
    download: dict[str, Any] = r.json()["download"]
    return download


def fetch(url: str) -> httpx.Response:
    """A GET with no Authorization header at all."""
    with httpx.Client(timeout=10) as plain:
        r = plain.get(url)
    assert "authorization" not in {k.lower() for k in r.request.headers}
    return r


def raw_get(barge: BargeProcess, target: str) -> tuple[int, bytes]:
    """A GET of ``target`` sent byte for byte (no client-side path normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", barge.port, timeout=10)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def with_parts(url: str, *, path_id: str | None = None, **query: str) -> str:
    """``url`` with its file id and/or query parameters replaced."""
    parts = urlsplit(url)
    params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    params.update(query)
    path = parts.path if path_id is None else parts.path.rsplit("/", 1)[0] + "/" + path_id
    return f"{parts.scheme}://{parts.netloc}{path}?{urlencode(params)}"


def part(url: str, name: str) -> str:
    if name == "file_id":
        return urlsplit(url).path.rsplit("/", 1)[1]
    return parse_qs(urlsplit(url).query)[name][0]


def assert_denied(r: httpx.Response, *secrets: bytes) -> None:
    """403 in the OpenAI shape, the fixed message, nothing of the files in the body."""
    assert r.status_code == 403, r.text
    err = assert_error_shape(r.json())
    assert err["message"] == INVALID
    assert err["code"] == "invalid_download_link"
    assert "file-" not in r.text
    for secret in secrets:
        assert secret not in r.content


def assert_download(r: httpx.Response, file_id: str, data: bytes) -> None:
    assert r.status_code == 200, r.text
    assert r.content == data
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["content-disposition"] == f'attachment; filename="{file_id}.jsonl"'


class Done:
    """A finished batch with output and error files, and its links."""

    def __init__(self, barge: BargeProcess, client: OpenAI) -> None:
        self.batch = run_batch(client, mixed_lines())
        assert self.batch.status == "completed"
        assert self.batch.output_file_id and self.batch.error_file_id
        self.output_id: str = self.batch.output_file_id
        self.error_id: str = self.batch.error_file_id
        self.output = client.files.content(self.output_id).content
        self.error = client.files.content(self.error_id).content
        self.input = client.files.content(self.batch.input_file_id).content
        self.links = links(barge, self.batch.id)
        self.url: str = self.links["url"]
        self.error_url: str = self.links["error_url"]


@pytest.fixture(scope="module")
def done(shared_barge: BargeProcess) -> Iterator[Done]:
    client = shared_barge.client()
    try:
        yield Done(shared_barge, client)
    finally:
        client.close()


# ---- the links ---------------------------------------------------------------------------


def test_links_download_the_exact_files_without_a_key(shared_barge: BargeProcess,
                                                       done: Done) -> None:
    before = time.time()
    download = links(shared_barge, done.batch.id)
    assert set(download) == {"url", "error_url", "validity_ts"}
    assert isinstance(download["validity_ts"], int)
    assert before + 3600 <= download["validity_ts"] <= time.time() + 3600 + 1

    prefix = f"{root_url(shared_barge)}/v1/downloads/"
    assert download["url"].startswith(prefix + done.output_id + "?")
    assert download["error_url"].startswith(prefix + done.error_id + "?")
    query = parse_qs(urlsplit(download["url"]).query)
    assert set(query) == {"account", "expires", "signature"}
    assert query["expires"] == [str(download["validity_ts"])]

    assert_download(fetch(download["url"]), done.output_id, done.output)
    assert_download(fetch(download["error_url"]), done.error_id, done.error)
    assert b"ok-0" in done.output and b"bad-0" in done.error
    # A link may be used again until it expires.
    assert fetch(download["url"]).content == done.output


def test_the_rest_of_the_batch_object_is_unchanged(shared_barge: BargeProcess,
                                                   done: Done) -> None:
    plain = retrieve_raw(shared_barge, done.batch.id).json()
    with_links = retrieve_raw(shared_barge, done.batch.id, download="true").json()
    assert "download" not in plain
    assert with_links.pop("download")
    assert with_links == plain


def test_sdk_sees_the_links_as_an_extra_field(connect: Connect, shared_barge: BargeProcess,
                                              done: Done) -> None:
    client = connect(shared_barge)
    b = client.batches.retrieve(done.batch.id, extra_query={"download": "true"})
    assert b.model_extra is not None
    download = b.model_extra["download"]
    assert_download(fetch(download["url"]), done.output_id, done.output)
    assert "download" not in (client.batches.retrieve(done.batch.id).model_extra or {})


@pytest.mark.parametrize("params", [{}, {"download": "false"}, {"download": "0"}])
def test_without_download_the_attribute_is_absent(shared_barge: BargeProcess, done: Done,
                                                  params: dict[str, str]) -> None:
    r = retrieve_raw(shared_barge, done.batch.id, **params)
    assert r.status_code == 200, r.text
    assert "download" not in r.json()
    listed = httpx.get(f"{shared_barge.base_url}/batches", headers=auth_headers(ADMIN_KEY),
                       timeout=10).json()
    assert all("download" not in b for b in listed["data"])


def test_a_batch_without_errors_has_a_null_error_url(connect: Connect,
                                                     shared_barge: BargeProcess) -> None:
    client = connect(shared_barge)
    b = run_batch(client, [chat_line("only-ok")])
    assert b.output_file_id and b.error_file_id is None
    download = links(shared_barge, b.id)
    assert download["error_url"] is None
    assert fetch(download["url"]).content == client.files.content(b.output_file_id).content


def test_download_of_another_accounts_batch_is_404(shared_barge: BargeProcess,
                                                   done: Done) -> None:
    other = create_key(shared_barge, account="someone-else", role="admin")
    r = retrieve_raw(shared_barge, done.batch.id, other, download="true")
    assert r.status_code == 404, r.text
    assert "download" not in r.text


def test_handing_out_links_needs_download_file(shared_barge: BargeProcess,
                                               done: Done) -> None:
    r = httpx.post(f"{shared_barge.base_url}/admin/roles", headers=auth_headers(ADMIN_KEY),
                   json={"name": "status-only", "actions": ["get_batch"], "operations": []},
                   timeout=10)
    assert r.status_code == 200, r.text
    key = create_key(shared_barge, account="default", role="status-only")
    assert retrieve_raw(shared_barge, done.batch.id, key).status_code == 200
    r = retrieve_raw(shared_barge, done.batch.id, key, download="true")
    assert r.status_code == 403, r.text
    assert "download_file" in assert_error_shape(r.json())["message"]
    # The reader role may download, so it may have links.
    reader = create_key(shared_barge, account="default", role="reader")
    download = links(shared_barge, done.batch.id, reader)
    assert fetch(download["url"]).content == done.output


def create_key(barge: BargeProcess, *, account: str, role: str) -> str:
    r = httpx.post(f"{barge.base_url}/admin/keys", headers=auth_headers(ADMIN_KEY),
                   json={"name": f"{account}-{role}", "role": role, "account": account},
                   timeout=10)
    assert r.status_code == 200, r.text
    key: str = r.json()["key"]
    return key


# ---- tampering -----------------------------------------------------------------------------


def _flip(s: str) -> str:
    return s[:-1] + ("0" if s[-1] != "0" else "1")


TAMPERS: dict[str, Callable[[Done, str], str]] = {
    "file id: the batch's error file": lambda d, u: with_parts(u, path_id=d.error_id),
    "file id: the batch's input file": lambda d, u: with_parts(u, path_id=d.batch.input_file_id),
    "file id: one digit changed": lambda d, u: with_parts(u, path_id=_flip(d.output_id)),
    "file id: upper case": lambda d, u: with_parts(u, path_id=d.output_id.upper()),
    "account: another": lambda d, u: with_parts(u, account="someone-else"),
    "account: case": lambda d, u: with_parts(u, account=part(u, "account").upper()),
    "account: empty": lambda d, u: with_parts(u, account=""),
    "expires: one second later": lambda d, u: with_parts(
        u, expires=str(int(part(u, "expires")) + 1)),
    "expires: a year later": lambda d, u: with_parts(
        u, expires=str(int(part(u, "expires")) + 365 * 86400)),
    "expires: leading zero": lambda d, u: with_parts(u, expires="0" + part(u, "expires")),
    "expires: not a number": lambda d, u: with_parts(u, expires="never"),
    "signature: one digit changed": lambda d, u: with_parts(
        u, signature=_flip(part(u, "signature"))),
    "signature: upper case": lambda d, u: with_parts(u, signature=part(u, "signature").upper()),
    "signature: truncated": lambda d, u: with_parts(u, signature=part(u, "signature")[:-2]),
    "signature: empty": lambda d, u: with_parts(u, signature=""),
    "signature: of the error file": lambda d, u: with_parts(
        u, signature=part(d.error_url, "signature")),
}


@pytest.mark.parametrize("how", sorted(TAMPERS))
def test_a_tampered_link_is_403(done: Done, how: str) -> None:
    url = TAMPERS[how](done, done.url)
    assert url != done.url
    assert_denied(fetch(url), done.output, done.error, done.input)


@pytest.mark.parametrize("missing", ["account", "expires", "signature"])
def test_a_link_missing_a_part_is_403(done: Done, missing: str) -> None:
    parts = urlsplit(done.url)
    params = {k: v[0] for k, v in parse_qs(parts.query).items() if k != missing}
    url = f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(params)}"
    assert_denied(fetch(url), done.output)


def test_a_repeated_parameter_does_not_confuse_the_check(done: Done) -> None:
    assert_denied(fetch(done.url + "&account=someone-else"), done.output)
    assert_denied(fetch(done.url + "&expires=9999999999"), done.output)
    assert_denied(fetch(done.url + "&signature=" + "0" * 64), done.output)


def test_a_link_for_an_unknown_file_is_403(done: Done) -> None:
    assert_denied(fetch(with_parts(done.url, path_id=FAKE_FILE)), done.output)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/downloads/..%2F..%2Fbarge.db",
        "/v1/downloads/..%2Fbarge.db",
        "/v1/downloads/%2e%2e%2f%2e%2e%2fbarge.db",
        "/v1/downloads/{out}/../../barge.db",
        "/v1/downloads/{out}/../x",
        "/v1/downloads/{out}%2F..%2F..%2Fbarge.db",
        "/v1/downloads/{out}%00",
        "/v1/downloads/{out}.jsonl",
        "/v1/downloads/../files/{out}/content",
        "/v1/downloads/../../signing.key",
        "/v1/downloads/signing.key",
        "/v1/downloads/barge.db",
        "/v1/downloads/",
        "/v1/downloads",
    ],
)
def test_path_tricks_reach_nothing(shared_barge: BargeProcess, done: Done, path: str) -> None:
    query = urlsplit(done.url).query
    status, body = raw_get(shared_barge, path.format(out=done.output_id) + "?" + query)
    assert status in (403, 404), (status, body[:200])
    assert_error_shape(httpx.Response(status, content=body).json())
    assert b"SQLite format" not in body
    assert done.output not in body and b"ok-0" not in body
    key = (shared_barge.data_dir / "signing.key").read_bytes().strip()
    assert key not in body


def test_a_trailing_slash_only_redirects_to_the_link_itself(shared_barge: BargeProcess,
                                                            done: Done) -> None:
    parts = urlsplit(done.url)
    conn = http.client.HTTPConnection("127.0.0.1", shared_barge.port, timeout=10)
    try:
        conn.request("GET", f"{parts.path}/?{parts.query}")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status in (307, 403, 404), resp.status
    assert done.output not in body
    if resp.status == 307:
        assert resp.getheader("location") == done.url


# ---- expiry, deletion, accounts, restarts ------------------------------------------------


def test_an_expired_link_is_403(barge_factory: Callable[..., BargeProcess],
                                upstream: UpstreamServer, connect: Connect) -> None:
    barge = barge_factory(upstream.base_url, "--backoff-base", "0.01",
                          "--download-url-ttl", "1")
    client = connect(barge)
    b = run_batch(client, mixed_lines())
    assert b.output_file_id
    data = client.files.content(b.output_file_id).content
    before = time.time()
    download = links(barge, b.id)
    assert before + 1 <= download["validity_ts"] <= time.time() + 2
    if time.time() < download["validity_ts"] - 0.2:  # a link is good until its expiry
        assert fetch(download["url"]).content == data
    time.sleep(max(0.0, download["validity_ts"] - time.time()) + 0.2)
    assert_denied(fetch(download["url"]), data)
    assert_denied(fetch(download["error_url"]))
    # A fresh link works again.
    assert fetch(links(barge, b.id)["url"]).content == data


def test_a_link_to_a_deleted_file_is_403(connect: Connect, shared_barge: BargeProcess) -> None:
    client = connect(shared_barge)
    b = run_batch(client, mixed_lines("del"))
    assert b.output_file_id and b.error_file_id
    data = client.files.content(b.output_file_id).content
    download = links(shared_barge, b.id)
    assert fetch(download["url"]).content == data

    client.files.delete(b.output_file_id)
    assert_denied(fetch(download["url"]), data)
    # The other file of the batch is still there and still served.
    assert fetch(download["error_url"]).content == client.files.content(b.error_file_id).content


def test_links_of_a_deleted_batch_are_403(connect: Connect, shared_barge: BargeProcess) -> None:
    client = connect(shared_barge)
    b = run_batch(client, mixed_lines("gone"))
    assert b.output_file_id and b.error_file_id
    output = client.files.content(b.output_file_id).content
    error = client.files.content(b.error_file_id).content
    download = links(shared_barge, b.id)
    assert fetch(download["url"]).content == output

    r = httpx.delete(f"{shared_barge.base_url}/batches/{b.id}",
                     headers=auth_headers(ADMIN_KEY), timeout=10)
    assert r.status_code == 200, r.text
    assert_denied(fetch(download["url"]), output, error)
    assert_denied(fetch(download["error_url"]), output, error)
    assert retrieve_raw(shared_barge, b.id, download="true").status_code == 404


def test_links_are_bound_to_their_account(barge_factory: Callable[..., BargeProcess],
                                          upstream: UpstreamServer, connect: Connect) -> None:
    """Even a correctly signed link (here forged with the known secret) opens only a file of
    the account it names: the account is checked against the store, not just signed."""
    barge = barge_factory(upstream.base_url, "--backoff-base", "0.01",
                          "--signing-secret", SECRET)
    assert not (barge.data_dir / "signing.key").exists()  # a given secret is never stored
    acme = connect(barge, create_key(barge, account="acme", role="member"))
    b = run_batch(acme, mixed_lines("acme"))
    assert b.output_file_id
    data = acme.files.content(b.output_file_id).content
    download = links(barge, b.id, create_key(barge, account="acme", role="reader"))
    assert part(download["url"], "account") == "acme"
    assert fetch(download["url"]).content == data

    # The server signs with the given secret.
    expires = int(part(download["url"], "expires"))
    assert part(download["url"], "signature") == sign(SECRET, b.output_file_id, "acme",
                                                      expires)
    # Account changed to B: the signature no longer matches.
    assert_denied(fetch(with_parts(download["url"], account="default")), data)
    # A valid signature over (A's file, account B) still opens nothing.
    forged = with_parts(download["url"], account="default",
                        signature=sign(SECRET, b.output_file_id, "default", expires))
    assert_denied(fetch(forged), data)
    # And account B's own links do not open A's files.
    mine = run_batch(connect(barge), mixed_lines("mine"))
    my_link = links(barge, mine.id)["url"]
    assert part(my_link, "account") == "default"
    assert_denied(fetch(with_parts(my_link, path_id=b.output_file_id)), data)


def test_links_survive_a_restart(barge_factory: Callable[..., BargeProcess],
                                 upstream: UpstreamServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "kept"
    barge = barge_factory(upstream.base_url, "--backoff-base", "0.01", data_dir=data_dir)
    client = barge.client()
    try:
        b = run_batch(client, mixed_lines())
        assert b.output_file_id
        data = client.files.content(b.output_file_id).content
    finally:
        client.close()
    download = links(barge, b.id)
    assert fetch(download["url"]).content == data

    key_file = data_dir / "signing.key"
    key = key_file.read_text().strip()
    assert len(key) == 64 and int(key, 16) >= 0
    assert os.stat(key_file).st_mode & 0o777 == 0o600

    barge.kill()
    barge.restart()
    assert key_file.read_text().strip() == key
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    assert fetch(download["url"]).content == data
    assert fetch(download["error_url"]).status_code == 200
    # The same batch's links asked for again carry the same key's signatures.
    again = links(barge, b.id)
    assert fetch(again["url"]).content == data


def test_each_data_dir_has_its_own_key(barge_factory: Callable[..., BargeProcess],
                                       upstream: UpstreamServer, tmp_path: Path) -> None:
    one = barge_factory(upstream.base_url, data_dir=tmp_path / "one")
    two = barge_factory(upstream.base_url, data_dir=tmp_path / "two")
    k1 = (tmp_path / "one" / "signing.key").read_text()
    k2 = (tmp_path / "two" / "signing.key").read_text()
    assert k1 != k2
    assert one.data_dir != two.data_dir


def test_links_use_the_public_url_when_one_is_set(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer, connect: Connect
) -> None:
    """Behind a proxy, links name the address clients know, with the same path and query."""
    public = "https://batches.example.com/barge/"
    barge = barge_factory(upstream.base_url, "--public-url", public)
    client = connect(barge)
    b = run_batch(client, mixed_lines())
    assert b.output_file_id
    url = links(barge, b.id)["url"]
    assert url.startswith(public + "v1/downloads/" + b.output_file_id + "?")
    # What the proxy would forward: the same link on the server's own address.
    local = url.replace(public, f"http://127.0.0.1:{barge.port}/", 1)
    assert fetch(local).content == client.files.content(b.output_file_id).content
