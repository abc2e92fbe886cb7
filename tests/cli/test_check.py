"""``barge check``: one line per component — the store, the blob store, each upstream —
and exit 0 when every one can be reached, 1 when any cannot or the server does not
answer. Real processes: a server whose upstream is down, and a node on a private
PostgreSQL that is stopped and started again, and on S3 behind a proxy that answers 503."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from api.support import wait_for
from barge_process import BargeProcess, clean_env, free_port
from moto_s3 import MotoS3
from private_pg import PrivatePostgres
from s3_proxy import S3FaultProxy
from upstream import UpstreamServer


def _check(url: str | None = None, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    given = ["--url", url] if url is not None else []
    return subprocess.run([sys.executable, "-m", "barge.cli", "check", *given,
                           "--timeout", "5", *args], capture_output=True, text=True,
                          timeout=30, env=clean_env() | (env or {}))


def _root(proc: BargeProcess) -> str:
    return f"http://127.0.0.1:{proc.port}"


def _health(proc: BargeProcess) -> dict[str, Any]:
    r = httpx.get(f"{_root(proc)}/healthz", timeout=10)
    assert r.status_code == 200, r.text  # always, whatever the components say
    body: dict[str, Any] = r.json()
    return body


def test_check_is_zero_for_a_running_server(barge: BargeProcess,
                                            upstream: UpstreamServer) -> None:
    done = _check(_root(barge))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "healthy" in done.stdout
    lines = done.stdout.splitlines()
    assert "  store: ok" in lines and "  blobs: ok" in lines, lines
    assert any(ln.startswith(f"  upstream default ({upstream.base_url})") for ln in lines), lines


def test_check_is_one_when_nothing_listens() -> None:
    done = _check(f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "not healthy" in done.stderr


def test_check_names_an_upstream_that_is_down(
    barge_factory: Callable[..., BargeProcess]
) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    barge = barge_factory(down, "--upstream-probe-interval", "0.2")
    wait_for(lambda: _health(barge)["upstream"]["last_error"], timeout=10,
             what="the probe to fail")
    done = _check(_root(barge))
    assert done.returncode == 1, (done.stdout, done.stderr)
    [line] = [ln for ln in done.stdout.splitlines() if down in ln]
    assert "unreachable" in line, done.stdout
    assert "  store: ok" in done.stdout.splitlines(), done.stdout
    assert ": unhealthy" in done.stdout.splitlines()[0], done.stdout
    # The server itself is fine: /healthz says so with 200, and only the upstream is down.
    health = _health(barge)
    assert health["status"] == "ok" and health["upstreams"][0]["reachable"] is False


def test_check_takes_base_url_and_prints_json(barge: BargeProcess) -> None:
    by_flag = _check(None, "--base-url", barge.base_url, "--json")  # .../v1 is fine too
    assert by_flag.returncode == 0, by_flag.stderr
    health = orjson.loads(by_flag.stdout)
    assert health["status"] == "ok", health
    assert health["store"] == {"ok": True, "error": None, "checked_at": health["store"]
                               ["checked_at"]}, health
    assert health["blobs"]["ok"] is True and health["upstreams"], health
    by_env = _check(None, env={"BARGE_BASE_URL": _root(barge)})
    assert by_env.returncode == 0 and "store: ok" in by_env.stdout, by_env.stderr


# -- shared mode: PostgreSQL stopped and started, the object store failing -----------------


@pytest.fixture
def cluster_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().init()
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


@pytest.fixture
def s3_proxy(moto_s3: MotoS3) -> Iterator[S3FaultProxy]:
    proxy = S3FaultProxy(moto_s3.url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.timeout(180)
def test_check_follows_postgres_and_the_object_store(
    tmp_path: Path, cluster_pg: PrivatePostgres, moto_s3: MotoS3, s3_proxy: S3FaultProxy,
    upstream: UpstreamServer,
) -> None:
    common = ["--database-url", cluster_pg.url,
              "--blob-url", f"s3://{moto_s3.bucket}/check-{os.getpid()}-{free_port()}",
              "--lease-seconds", "3"]
    env = moto_s3.env(AWS_ENDPOINT_URL=s3_proxy.url)
    nodes = [BargeProcess(tmp_path / "api", upstream.base_url, *common, env=env),
             BargeProcess(tmp_path / "worker", upstream.base_url, *common, env=env,
                          command="worker")]
    try:
        for proc in nodes:
            proc.start(timeout=60)

        def every(ok: bool, part: str = "") -> list[subprocess.CompletedProcess[str]] | None:
            done = [_check(_root(p)) for p in nodes]
            if all((d.returncode == 0) == ok and part in d.stdout for d in done):
                return done
            return None

        healthy = wait_for(lambda: every(True), timeout=20, what="both nodes healthy")
        assert "(worker " in healthy[1].stdout.splitlines()[0], healthy[1].stdout

        cluster_pg.stop("fast")
        down = wait_for(lambda: every(False, "store: unreachable"), timeout=20,
                        what="the store reported unreachable")
        for d in down:
            assert "PostgreSQL" in d.stdout and "blobs: ok" in d.stdout, d.stdout
        health = _health(nodes[0])
        assert health["status"] == "degraded" and health["store"]["ok"] is False, health
        assert health["store"]["error"], health

        cluster_pg.start()
        wait_for(lambda: every(True, "store: ok"), timeout=30, what="the store back")

        s3_proxy.fail_for(60)
        failing = wait_for(lambda: every(False, "blobs: unreachable"), timeout=20,
                           what="the blob store reported unreachable")
        assert "SlowDown" in failing[0].stdout, failing[0].stdout
        assert _health(nodes[1])["status"] == "degraded"
        s3_proxy.fail_until = 0.0
        wait_for(lambda: every(True, "blobs: ok"), timeout=20, what="the blob store back")
    finally:
        for proc in nodes:
            proc.kill()
