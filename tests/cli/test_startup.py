"""``barge serve`` at start: settings that cannot work, a data directory that cannot be
used or is in use, a port that is taken or out of range, and a ``BARGE_*`` value that
does not parse each end the command with one clear last line naming the setting, no
traceback and a non-zero exit. An unreachable upstream is not a start-up failure:
``/healthz`` answers 200 and tells whether the upstream can be reached."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from api.support import chat_line, run_batch, wait_for
from barge_process import ADMIN_KEY, BargeProcess, clean_env, free_port
from upstream import UpstreamConfig, UpstreamServer

GOOD_SECRET = "s" * 32


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
           data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``barge serve`` that is expected to refuse to start (20 s at most); the data
    directory, port and upstream are given as flags unless ``args`` or ``env`` do."""
    env = env or {}
    given = " ".join([*args, *env])
    cmd = [sys.executable, "-m", "barge.cli", "serve", *args]
    for flag, variable, default in (
        ("--data-dir", "BARGE_DATA_DIR", str(data_dir or tmp_path / "data")),
        ("--port", "BARGE_PORT", str(free_port())),
        ("--upstream", "BARGE_UPSTREAM", "http://127.0.0.1:9/v1"),
    ):
        if flag not in given and variable not in given:
            cmd += [flag, default]
    return subprocess.run(cmd, env=clean_env() | {"BARGE_ADMIN_KEY": ADMIN_KEY} | env,
                          capture_output=True, text=True, timeout=20, check=False)


def _refused(done: subprocess.CompletedProcess[str], *names: str) -> str:
    """The refusal's last line, which names every one of ``names``."""
    assert done.returncode != 0, (done.stdout, done.stderr)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines, output
    last = lines[-1]
    for name in names:
        assert name in last, (name, output)
    return last


def _health(barge: BargeProcess) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{barge.port}/healthz", timeout=5)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# -- weak or malformed settings -----------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("secret", ["x", "s" * 31, "é" * 15])
def test_a_short_signing_secret_is_refused(tmp_path: Path, how: str, secret: str) -> None:
    if how == "flag":
        done = _serve(tmp_path, "--signing-secret", secret)
    else:
        done = _serve(tmp_path, env={"BARGE_SIGNING_SECRET": secret})
    last = _refused(done, "--signing-secret", "BARGE_SIGNING_SECRET", "32 bytes")
    assert len(secret) < 8 or secret not in last  # a secret is never echoed
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_a_32_byte_signing_secret_is_accepted(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    barge = barge_factory(upstream.base_url, "--signing-secret", GOOD_SECRET)
    assert _health(barge)["status"] == "ok"


@pytest.mark.parametrize("url", ["ftp://gpu:8000/v1", "localhost:8000/v1", "http://",
                                 "http:///v1", "gpu", "", "http://gpu:99999/v1"])
def test_an_upstream_that_is_not_an_http_url_is_refused(tmp_path: Path, url: str) -> None:
    runs = [_serve(tmp_path, "--upstream", url)]
    if url:  # an empty variable counts as unset
        runs.append(_serve(tmp_path, env={"BARGE_UPSTREAM": url}))
    for done in runs:
        last = _refused(done, "--upstream", "BARGE_UPSTREAM")
        assert "http" in last
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_an_upstream_without_v1_starts_with_a_warning(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    url = upstream.base_url.removesuffix("/v1")
    barge = barge_factory(url)
    wait_for(lambda: url in barge.log() or None, timeout=10)
    warning = next(ln for ln in barge.log().splitlines() if "does not end in /v1" in ln)
    assert url in warning and f"{url}/chat/completions" in warning, warning


@pytest.mark.parametrize(
    ("variable", "value", "expects"),
    [
        ("BARGE_PORT", "abc", "integer"),
        ("BARGE_PORT", "70000", "65535"),
        ("BARGE_PORT", "0", "65535"),
        ("BARGE_UPSTREAM_CONCURRENCY", "many", "integer"),
        ("BARGE_UPSTREAM_TIMEOUT", "soon", "float"),
        ("BARGE_MAX_ATTEMPTS", "0", "1<=x<=100"),
        ("BARGE_LOG_LEVEL", "loud", "debug"),
        ("BARGE_DOWNLOAD_URL_TTL", "1h", "integer"),
        ("BARGE_COMPLETION_WINDOWS", "a day", "24h"),
        ("BARGE_ENDPOINTS", "chat", "/v1/chat/completions"),
    ],
)
def test_a_barge_variable_that_does_not_parse_is_named(tmp_path: Path, variable: str,
                                                       value: str, expects: str) -> None:
    done = _serve(tmp_path, env={variable: value})
    flag = "--" + variable.removeprefix("BARGE_").lower().replace("_", "-")
    last = _refused(done, variable, flag, expects)
    assert value in last or variable == "BARGE_PORT", last


# -- the data directory and the port -------------------------------------------------------


def test_a_second_server_on_the_same_data_dir_names_the_first_ones_pid(
    tmp_path: Path, barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    first = barge_factory(upstream.base_url)
    assert first.proc is not None
    assert (first.data_dir / "engine.lock").read_text().strip() == str(first.proc.pid)
    done = _serve(tmp_path, "--upstream", upstream.base_url, data_dir=first.data_dir)
    last = _refused(done, str(first.data_dir), f"pid {first.proc.pid}")
    assert "Another barge process" in last
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    with first.client() as client:
        assert client.files.list().data == []  # the first one serves on


def test_a_data_dir_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = _serve(tmp_path, data_dir=blocker / "data")
    _refused(done, str(blocker / "data"), "data directory")


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = _serve(tmp_path, data_dir=blocker)
    _refused(done, str(blocker), "--data-dir", "BARGE_DATA_DIR", "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o500)
    try:
        _refused(_serve(tmp_path, data_dir=data), str(data), "not writable")
    finally:
        os.chmod(data, 0o700)


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, env in (((f"--port={port}",), {}), ((), {"BARGE_PORT": str(port)})):
            done = _serve(tmp_path, *args, env=env)
            last = _refused(done, f"127.0.0.1:{port}", "in use", "--port", "BARGE_PORT")
            assert len(done.stderr.strip().splitlines()) == 1, (last, done.stderr)
    # Refused before the engine started: no database was opened, nothing dispatched.
    assert not (tmp_path / "data" / "barge.db").exists()


# -- an unreachable upstream ---------------------------------------------------------------


def test_healthz_tells_whether_the_upstream_can_be_reached(
    barge_factory: Callable[..., BargeProcess]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    barge = barge_factory(url, "--upstream-probe-interval", "0.2")
    first = wait_for(lambda: (h := _health(barge)["upstream"])["last_error"] and h,
                     timeout=10)
    assert first["url"] == url and first["reachable"] is False, first
    assert _health(barge)["status"] == "ok"
    wait_for(lambda: url in barge.log() or None, timeout=10)
    assert any(url in ln and "cannot be reached" in ln for ln in barge.log().splitlines())

    with UpstreamServer.in_thread(UpstreamConfig(), port=port) as up:
        wait_for(lambda: _health(barge)["upstream"]["reachable"] or None, timeout=10)
        up.stop_blocking()  # down again
        down = wait_for(lambda: (h := _health(barge)["upstream"])["reachable"] is False and h,
                        timeout=10)
        assert down["last_error"], down


def test_a_dispatched_request_marks_the_upstream_reachable(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """With the probe off, what the engine's requests meet is what /healthz says."""
    barge = barge_factory(upstream.base_url, "--upstream-probe-interval", "0")
    time.sleep(0.3)
    before = _health(barge)["upstream"]
    assert before == {"url": upstream.base_url, "reachable": False, "last_error": None,
                      "checked_at": None}, before
    with barge.client() as client:
        run_batch(client, [chat_line("ping")])
    assert _health(barge)["upstream"]["reachable"] is True
