"""Connections cannot wear the server down: under ~20,000 idle connections fresh clients
are still answered (past ``--max-connections`` the oldest idle connection is closed, and
file descriptors stay bounded); when every connection is busy a new one gets 503 at once;
a connection that does not finish its request headers within ``--header-timeout`` seconds
is closed, even one that never sends a byte; an idle keep-alive connection is closed after
``--keep-alive-timeout`` seconds."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from barge_process import ADMIN_KEY, BargeProcess
from upstream import UpstreamServer

Factory = Callable[..., BargeProcess]
DEFAULT_MAX_CONNECTIONS = 2048
WANTED_IDLE = 19_000  # the issue: ~20,000 idle connections; the hard fd limit here is 20,000
HEAD = f"GET /v1/files HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ADMIN_KEY}\r\n\r\n"


@contextlib.contextmanager
def fd_limit_raised() -> Iterator[int]:
    """This process's soft limit on open files raised to the hard one; yields it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield target
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else 64


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    # Close with a reset: no TIME_WAIT left behind for thousands of ports.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return s


def closed_by_server(s: socket.socket, within: float) -> bool:
    """Whether the server closes ``s`` within ``within`` seconds (reading and dropping
    whatever it sends first)."""
    s.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return True
            s.settimeout(max(0.01, deadline - time.monotonic()))
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = s.recv(65536)
        assert chunk, "closed inside a response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def server_fds(proc: BargeProcess) -> int | None:
    assert proc.proc is not None
    fd_dir = Path(f"/proc/{proc.proc.pid}/fd")
    return len(os.listdir(fd_dir)) if fd_dir.exists() else None


# ---- many idle connections -------------------------------------------------------------

SERVER_FD_HARD = 4096  # the server's own limit on open files: far below the idle count


def server_fd_limit(hard: int) -> Callable[[], None]:
    """For the child: that hard limit on open files, and a soft one lower still (the
    server raises it to the hard one)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard // 4, hard))


def test_fresh_clients_are_answered_under_20000_idle_connections(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    with fd_limit_raised() as limit:
        count = min(WANTED_IDLE, limit - open_fds() - 300)
        if count < 800:
            pytest.skip(f"the open-file limit ({limit}) leaves too few connections to test")
        # Where this machine allows fewer connections, smaller limits keep the proportions.
        server_hard = min(SERVER_FD_HARD, count // 3)
        max_connections = min(DEFAULT_MAX_CONNECTIONS, server_hard // 2)
        args = [] if max_connections == DEFAULT_MAX_CONNECTIONS else [
            "--max-connections", str(max_connections), "--upstream-concurrency", "16"]
        proc = BargeProcess(tmp_path / "data", upstream.base_url, *args,
                            preexec=server_fd_limit(server_hard))
        proc.start()
        idle: list[socket.socket] = []
        try:
            # It raised its soft limit to the hard one.
            assert server_soft_fd_limit(proc) in (None, server_hard)
            started = time.monotonic()
            for _ in range(count):
                idle.append(connect(proc.port))
            opening = time.monotonic() - started

            # Fresh connections are answered at once: plain HTTP and the SDK.
            t0 = time.monotonic()
            r = httpx.get(f"http://127.0.0.1:{proc.port}/healthz", timeout=5)
            assert r.status_code == 200
            client = openai.OpenAI(base_url=proc.base_url, api_key=ADMIN_KEY, timeout=5,
                                   max_retries=0)
            try:
                f = client.files.create(file=("in.jsonl", b'{"a": 1}\n'), purpose="batch")
                assert client.files.retrieve(f.id).id == f.id
                assert client.files.list().data
            finally:
                client.close()
            assert time.monotonic() - t0 < 5, "fresh requests were slow to be answered"

            # The oldest idle connections were the ones closed; the newest stay open.
            assert all(closed_by_server(s, within=2) for s in idle[:50])
            newest = idle[-1]
            newest.sendall(HEAD.encode())
            assert read_response(newest)[0] == 200
            # The server holds no more than its limit, whatever came at it.
            fds = server_fds(proc)
            if fds is not None:
                assert fds < max_connections + 300, (fds, max_connections)
            assert opening < 90, f"opening {count} connections took {opening:.1f}s"
        finally:
            for s in idle:
                s.close()
            proc.kill()


def server_soft_fd_limit(proc: BargeProcess) -> int | None:
    assert proc.proc is not None
    limits = Path(f"/proc/{proc.proc.pid}/limits")
    if not limits.exists():
        return None
    for line in limits.read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return None


# ---- busy connections --------------------------------------------------------------------

def test_when_every_connection_is_busy_a_new_one_gets_503_at_once(
    barge_factory: Factory, upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--max-connections", "4")
    busy: list[socket.socket] = []
    try:
        # Four requests whose bodies never come: busy, not idle.
        for _ in range(4):
            s = connect(proc.port)
            s.sendall(f"POST /v1/admin/roles HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                      f"{ADMIN_KEY}\r\ncontent-type: application/json\r\n"
                      "content-length: 1000\r\n\r\n{".encode())
            busy.append(s)
        time.sleep(0.2)
        with connect(proc.port) as extra:
            t0 = time.monotonic()
            status, headers, body = read_response(extra)
            assert time.monotonic() - t0 < 2
            assert status == 503
            assert headers["connection"] == "close" and "x-request-id" in headers
            error = orjson.loads(body)["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == "too_many_connections"
            assert closed_by_server(extra, within=2)
        client = proc.client(timeout=5)
        try:
            with pytest.raises(openai.APIStatusError) as exc:
                client.files.list()
            assert exc.value.status_code == 503

            busy.pop().close()  # one frees up: the next client is served
            deadline = time.monotonic() + 5
            while True:
                try:
                    assert client.files.list() is not None
                    break
                except openai.APIStatusError:
                    assert time.monotonic() < deadline, "no room after a connection closed"
                    time.sleep(0.05)
        finally:
            client.close()
    finally:
        for s in busy:
            s.close()


# ---- slow headers and idle keep-alive ------------------------------------------------------

@pytest.fixture
def quick_barge(barge_factory: Factory, upstream: UpstreamServer) -> BargeProcess:
    return barge_factory(upstream.base_url, "--header-timeout", "1",
                         "--keep-alive-timeout", "3")


def test_a_connection_that_never_sends_a_byte_is_closed(quick_barge: BargeProcess) -> None:
    with connect(quick_barge.port) as s:
        t0 = time.monotonic()
        assert closed_by_server(s, within=5)
        assert 0.8 <= time.monotonic() - t0 < 3


def test_headers_sent_a_byte_at_a_time_are_cut_off(quick_barge: BargeProcess) -> None:
    with connect(quick_barge.port) as s:
        t0 = time.monotonic()
        closed = False
        for byte in HEAD.encode():  # ~80 bytes at 10 a second: 8 s if let through
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - t0 > 1.5:
                break
        assert closed or closed_by_server(s, within=2)
        assert time.monotonic() - t0 < 4


def test_after_a_response_the_next_headers_are_on_the_clock_too(
    quick_barge: BargeProcess,
) -> None:
    with connect(quick_barge.port) as s:
        s.sendall(HEAD.encode())
        assert read_response(s)[0] == 200
        time.sleep(0.5)  # idle: the keep-alive clock (3 s) runs
        s.sendall(HEAD.encode()[:10])  # then half a request, and nothing more
        t0 = time.monotonic()
        assert closed_by_server(s, within=5)
        assert 0.8 <= time.monotonic() - t0 < 2.3  # the header clock, from the first byte


def test_slow_but_timely_headers_and_a_slow_body_are_served(
    quick_barge: BargeProcess,
) -> None:
    head = HEAD.encode()
    with connect(quick_barge.port) as s:
        for i in range(0, len(head), len(head) // 4 + 1):  # 5 pieces over ~0.6 s
            s.sendall(head[i:i + len(head) // 4 + 1])
            time.sleep(0.12)
        assert read_response(s)[0] == 200
    body = orjson.dumps({"name": f"slow-{os.getpid()}", "actions": ["get_files"],
                         "operations": []})
    with connect(quick_barge.port) as s:
        s.sendall(f"POST /v1/admin/roles HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                  f"{ADMIN_KEY}\r\ncontent-type: application/json\r\n"
                  f"content-length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), len(body) // 6 + 1):  # the body takes ~2 s
            time.sleep(0.3)
            s.sendall(body[i:i + len(body) // 6 + 1])
        status, _, answer = read_response(s)
        assert status == 200, answer


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(
    quick_barge: BargeProcess,
) -> None:
    with connect(quick_barge.port) as s:
        s.sendall(HEAD.encode())
        assert read_response(s)[0] == 200
        t0 = time.monotonic()
        assert closed_by_server(s, within=8)
        assert 2.8 <= time.monotonic() - t0 < 5  # not the header clock (1 s)
