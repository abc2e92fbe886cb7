"""Fixtures of the acceptance tests: a barge shared by one module's tests, for the many
small request/response checks that need no fresh server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from barge_process import ADMIN_KEY, BargeProcess
from openai import OpenAI
from upstream import UpstreamConfig, UpstreamServer


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer.in_thread(UpstreamConfig()) as up:
        yield up


@pytest.fixture(scope="module")
def shared_barge(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamServer
) -> Iterator[BargeProcess]:
    """One barge for a whole module (its tests must not depend on each other's objects)."""
    proc = BargeProcess(tmp_path_factory.mktemp("shared") / "data", shared_upstream.base_url,
                        "--backoff-base", "0.01", "--completion-windows", "24h,2s")
    proc.start()
    yield proc
    proc.kill()


@pytest.fixture
def connect() -> Iterator[Callable[..., OpenAI]]:
    """``connect(barge, api_key=...)``: an SDK client for that barge, closed after the test."""
    clients: list[OpenAI] = []

    def make(proc: BargeProcess, api_key: str = ADMIN_KEY, **kwargs: Any) -> OpenAI:
        client = proc.client(api_key, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
