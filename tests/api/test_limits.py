"""Acceptance: request sizes are bounded. A JSON body past ``--max-json-bytes`` gets 413
(read no further than the limit, chunked or not), a request line and headers past
``--max-header-bytes`` get 431, and a multipart upload with too many parts or oversized
part headers gets 400; all in the OpenAI error shape, and the server keeps serving."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from api.support import (
    assert_error_shape,
    auth_headers,
    chat_line,
    error_of,
    healthy,
    root_url,
    stored_blobs,
    to_jsonl,
)
from barge_process import ADMIN_KEY, BargeProcess
from openai import OpenAI
from upstream import UpstreamServer

Connect = Callable[..., OpenAI]
MIB = 1024 * 1024
JSON_ROUTES = ["/v1/batches", "/v1/admin/roles", "/batches"]


@pytest.fixture
def http(shared_barge: BargeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=root_url(shared_barge), headers=auth_headers(ADMIN_KEY),
                      timeout=30) as c:
        yield c


def padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    body = orjson.dumps({"pad": ""})
    return orjson.dumps({"pad": "x" * (size - len(body))})


def assert_too_large(r: httpx.Response | tuple[int, dict[str, str], bytes], limit: int) -> None:
    status, headers, body = (r.status_code, dict(r.headers), r.content) \
        if isinstance(r, httpx.Response) else r
    assert status == 413, (status, body[:200])
    err = assert_error_shape(orjson.loads(body), code="request_too_large")
    assert str(limit) in err["message"]
    assert headers.get("x-should-retry") == "false"


class Raw:
    """One plain TCP connection, for what an HTTP client will not send."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (names lowercase) and body of the next response."""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed before a response: {self.buf!r}"
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        while len(self.buf) < size:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed inside a response body"
            self.buf += chunk
        body, self.buf = self.buf[:size], self.buf[size:]
        return status, headers, body

    def closed(self, within: float = 5.0) -> bool:
        """Whether the server closes the connection within ``within`` seconds."""
        self.sock.settimeout(within)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


def request_head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1",
             f"authorization: Bearer {ADMIN_KEY}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---- JSON bodies ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", JSON_ROUTES)
def test_a_json_body_over_the_limit_is_413(http: httpx.Client, path: str) -> None:
    assert_too_large(http.post(path, content=padded(MIB + 1),
                               headers={"content-type": "application/json"}), MIB)
    # At the limit exactly the body is read, and judged on its content.
    r = http.post(path, content=padded(MIB), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text


def test_the_sdk_gets_the_413_in_the_openai_shape(shared_barge: BargeProcess,
                                                   connect: Connect) -> None:
    client = connect(shared_barge)
    with pytest.raises(openai.APIStatusError) as exc:
        client.batches.create(input_file_id="file-x", endpoint="/v1/chat/completions",
                              completion_window="24h", extra_body={"pad": "x" * (2 * MIB)})
    error_of(exc.value, status=413, code="request_too_large")
    assert healthy(shared_barge)


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_a_declared_length_over_the_limit_is_refused_before_the_body(
    shared_barge: BargeProcess, path: str
) -> None:
    with Raw(shared_barge.port) as conn:
        conn.send(request_head("POST", path, "content-type: application/json",
                               f"content-length: {100 * MIB}"))
        assert_too_large(conn.response(), MIB)  # without a byte of the body sent


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_a_chunked_body_is_read_no_further_than_the_limit(
    shared_barge: BargeProcess, path: str
) -> None:
    """The body never ends: the answer comes once the limit is passed."""
    with Raw(shared_barge.port) as conn:
        conn.send(request_head("POST", path, "content-type: application/json",
                               "transfer-encoding: chunked"))
        chunk = b"x" * 65536
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        conn.send(b'10\r\n{"pad": "xxxxxxx\r\n' + framed * (MIB // len(chunk) + 2))
        assert_too_large(conn.response(), MIB)
    assert healthy(shared_barge)


def test_the_json_limit_and_the_header_limit_are_settings(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--max-header-bytes", "1024",
                         env={"BARGE_MAX_JSON_BYTES": "300"})
    with httpx.Client(base_url=root_url(proc), headers=auth_headers(ADMIN_KEY)) as http:
        assert_too_large(http.post("/v1/batches", content=padded(301)), 300)
        assert http.post("/v1/batches", content=padded(300)).status_code == 400
        assert http.get("/healthz", headers={"x-pad": "y" * 800}).status_code == 200
    with Raw(proc.port) as conn:
        conn.send(request_head("GET", "/healthz", "x-pad: " + "y" * 1200))
        status, headers, body = conn.response()
        assert status == 431
        assert_error_shape(orjson.loads(body), code="headers_too_large")
        assert headers["x-should-retry"] == "false"
        assert conn.closed()
    assert healthy(proc)


# ---- request line and headers ------------------------------------------------------------

@pytest.mark.parametrize("shape", ["one long header", "many headers", "long path"])
def test_headers_over_the_limit_get_431_and_a_closed_connection(
    shared_barge: BargeProcess, shape: str
) -> None:
    size = 20 * 1024  # the default limit is 16 KiB
    if shape == "one long header":
        head = request_head("GET", "/healthz", "x-pad: " + "y" * size)
    elif shape == "many headers":
        head = request_head("GET", "/healthz", *(f"x-pad-{i}: {'y' * 90}"
                                                 for i in range(size // 100)))
    else:
        head = request_head("GET", "/healthz?" + "q" * size)
    with Raw(shared_barge.port) as conn:
        conn.send(head)
        status, headers, body = conn.response()
        assert status == 431, body
        assert_error_shape(orjson.loads(body), code="headers_too_large")
        assert headers["connection"] == "close" and headers["x-request-id"].startswith("req_")
        assert conn.closed()
    assert healthy(shared_barge)


def test_headers_sent_in_pieces_count_together(shared_barge: BargeProcess) -> None:
    with Raw(shared_barge.port) as conn:
        conn.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        sent = 0
        while sent < 20:  # 1 KiB at a time, until the server answers
            conn.send(b"x-pad: " + b"y" * 1000 + b"\r\n")
            sent += 1
            if select.select([conn.sock], [], [], 0.3 if sent >= 15 else 0.02)[0]:
                break
        status, _, _ = conn.response()
        assert status == 431
        assert 14 <= sent <= 17  # past 16 KiB, not before
        assert conn.closed()


def test_headers_under_the_limit_and_a_large_body_pass(http: httpx.Client,
                                                       connect: Connect,
                                                       shared_barge: BargeProcess) -> None:
    assert http.get("/healthz", headers={"x-pad": "y" * 12_000}).status_code == 200
    # Headers end within the first read, the body fills the rest: only headers count.
    data = to_jsonl([chat_line(f"r{i}", content="z" * 1000) for i in range(200)])
    f = connect(shared_barge).files.create(file=("big.jsonl", data), purpose="batch")
    assert f.bytes == len(data)


# ---- multipart uploads ---------------------------------------------------------------------

def multipart(parts: list[tuple[list[str], bytes]], boundary: str = "BOUNDARY") -> bytes:
    out = b""
    for headers, content in parts:
        out += f"--{boundary}\r\n".encode() + "\r\n".join(headers).encode() + b"\r\n\r\n"
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


FILE_PART = (['Content-Disposition: form-data; name="file"; filename="in.jsonl"',
              "Content-Type: application/jsonl"], to_jsonl([chat_line("a")]))
PURPOSE_PART = (['Content-Disposition: form-data; name="purpose"'], b"batch")


def post_multipart(http: httpx.Client, body: bytes) -> httpx.Response:
    return http.post("/v1/files", content=body,
                     headers={"content-type": "multipart/form-data; boundary=BOUNDARY"})


@pytest.mark.parametrize(
    ("parts", "code"),
    [
        ([FILE_PART, PURPOSE_PART]
         + [([f'Content-Disposition: form-data; name="extra{i}"'], b"1") for i in range(20)],
         "too_many_parts"),
        ([FILE_PART, (['Content-Disposition: form-data; name="purpose"',
                       *(f"X-Pad-{i}: {'p' * 3000}" for i in range(3))], b"batch")],
         "part_headers_too_large"),
    ],
    ids=["too many parts", "part headers too large"],
)
def test_multipart_bodies_past_their_bounds_are_400(
    shared_barge: BargeProcess, http: httpx.Client, parts: list[Any], code: str
) -> None:
    before = stored_blobs(shared_barge.data_dir)
    r = post_multipart(http, multipart(parts))
    assert r.status_code == 400, r.text
    assert_error_shape(r.json(), code=code)
    assert stored_blobs(shared_barge.data_dir) == before
    # The same upload within the bounds is fine.
    ok = post_multipart(http, multipart([FILE_PART, PURPOSE_PART]))
    assert ok.status_code == 200, ok.text
