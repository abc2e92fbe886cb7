"""Fixtures shared by every test tier: a loopback upstream and the real barge process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from barge_process import BargeProcess
from moto_s3 import MotoS3
from upstream import UpstreamConfig, UpstreamServer

# The app's settings are cleared; BARGE_TEST_* configure the tests themselves (such as
# BARGE_TEST_DATABASE_URL, the PostgreSQL server the store tests use).
for _name in [k for k in os.environ if k.startswith("BARGE_") and not k.startswith("BARGE_TEST_")]:
    del os.environ[_name]


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    """A loopback OpenAI-compatible upstream in a background thread."""
    with UpstreamServer.in_thread(UpstreamConfig()) as up:
        yield up


@pytest.fixture
def barge_factory(tmp_path: Path) -> Iterator[Callable[..., BargeProcess]]:
    """Start ``barge serve`` processes; every one is stopped at the end of the test."""
    started: list[BargeProcess] = []

    def start(upstream_url: str, *args: str, env: dict[str, str] | None = None,
              data_dir: Path | None = None) -> BargeProcess:
        proc = BargeProcess(data_dir or tmp_path / "data", upstream_url, *args, env=env)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def barge(barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer) -> BargeProcess:
    """A running barge in front of the default upstream, with fast retries."""
    return barge_factory(upstream.base_url, "--backoff-base", "0.01",
                         "--completion-windows", "24h,2s")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One S3-protocol server (moto_server) on loopback for the whole session; each test
    keeps to a prefix of its own in its one bucket."""
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()
