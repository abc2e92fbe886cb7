"""Reading a batch's results while it runs, through ``kill -9``: on one machine (SQLite,
part files) and on a cluster (PostgreSQL + S3, results as rows). A reader that goes on
with its old cursor after the restart, and one that starts over, each read every
custom_id at most once, and after the end exactly the lines of the output and error
files."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest
from api.support import CHAT, chat_line, to_jsonl, upload
from barge_process import BargeProcess
from cli.test_shared import Node, node, shared
from openai import OpenAI
from openai.types import Batch
from pg_support import pg_database
from results_support import (
    assert_at_most_once,
    assert_same_lines,
    file_lines,
    page,
    read_to_end,
)
from upstream import UpstreamServer

__all__ = ["node", "pg_database", "shared"]

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _lines(n: int) -> bytes:
    """Requests of which every eleventh fails for good, the rest succeed."""
    return to_jsonl(chat_line(f"c-{i}", key=f"c-{i}", **({"status": 400} if i % 11 == 0
                                                          else {})) for i in range(n))


def _retrying(read: Callable[[], tuple[list[bytes], str]],
              timeout: float = 60.0) -> tuple[list[bytes], str]:
    """``read`` until the server answers (it may be restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except (openai.APIConnectionError, openai.InternalServerError, httpx.HTTPError):
            assert time.monotonic() < deadline, "the server did not come back"
            time.sleep(0.1)


class Reader:
    """A client reading a batch's results page by page, checking as it goes."""

    def __init__(self, client: Callable[[], OpenAI], batch_id: str, limit: int) -> None:
        self._client = client
        self.batch_id = batch_id
        self.limit = limit
        self.cursor: str | None = None
        self.lines: list[bytes] = []

    @property
    def done(self) -> bool:
        return self.cursor == ""

    def step(self) -> int:
        lines, self.cursor = _retrying(
            lambda: page(self._client(), self.batch_id, self.cursor, self.limit))
        self.lines += lines
        assert_at_most_once(self.lines)
        return len(lines)


def _read_through_kills(client: Callable[[], OpenAI], batch_id: str, n: int,
                        kill: Callable[[], None], kills: int) -> tuple[Reader, list[Reader]]:
    """Read the batch to its end, killing (and restarting) the server ``kills`` times
    along the way, while it runs; after each restart one more reader starts from the
    beginning. Every reader is checked at every page."""
    main = Reader(client, batch_id, limit=37)
    late: list[Reader] = []
    killed = 0
    seen: list[str] = []
    deadline = time.monotonic() + 180
    while not (main.done and all(r.done for r in late)):
        assert time.monotonic() < deadline, (len(main.lines), [len(r.lines) for r in late])
        got = 0
        for r in [main, *late]:
            if not r.done:
                got += r.step()
        if killed < kills and len(main.lines) >= (killed + 1) * n // (kills + 2):
            seen.append(client().batches.retrieve(batch_id).status)
            kill()
            killed += 1
            late.append(Reader(client, batch_id, limit=101))
        if not got:
            time.sleep(0.05)
    assert killed == kills, "the batch ended before every kill: make it slower"
    assert seen == ["in_progress"] * kills, f"killed when {seen}: make it slower"
    return main, late


def _check_end(client: OpenAI, batch: Batch, readers: list[Reader], n: int) -> None:
    assert batch.status == "completed", batch
    files = file_lines(client, batch)
    assert len(files) == n
    for r in readers:
        assert_same_lines(r.lines, files)
    assert_same_lines(read_to_end(client, batch.id, limit=10_000), files)


def test_one_machine_killed_twice_while_read(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    upstream.config.latency = 0.01
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "8",
                         "--backoff-base", "0.01")
    n = 1500
    f = upload(proc.client(), _lines(n))
    b = proc.client().batches.create(input_file_id=f.id, endpoint=CHAT,
                                     completion_window="24h")

    def kill() -> None:
        proc.kill()
        proc.restart()

    main, late = _read_through_kills(proc.client, b.id, n, kill, kills=2)
    client = proc.client()
    done = client.batches.retrieve(b.id)
    _check_end(client, done, [main, *late], n)


@pytest.mark.timeout(300)
def test_a_cluster_worker_and_api_node_killed_while_read(
    node: Node, upstream: UpstreamServer
) -> None:
    """Shared mode: an API node reads the rows PostgreSQL holds while a worker runs the
    batch, then the files in S3. The worker is killed once and the API node once."""
    upstream.config.latency = 0.01
    flags = ("--lease-seconds", "2", "--slice-lines", "100", "--upstream-concurrency", "8",
             "--backoff-base", "0.01")
    api = node(upstream.base_url, "--no-engine", *flags)
    worker = node(upstream.base_url, *flags, command="worker")
    n = 800
    f = upload(api.client(), _lines(n))
    b = api.client().batches.create(input_file_id=f.id, endpoint=CHAT,
                                    completion_window="24h")
    victims = [worker, api]

    def kill() -> None:
        victim = victims.pop(0)
        victim.kill()
        victim.restart()

    main, late = _read_through_kills(api.client, b.id, n, kill, kills=2)
    client = api.client()
    deadline = time.monotonic() + 60
    while (done := client.batches.retrieve(b.id)).status not in TERMINAL:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    _check_end(client, done, [main, *late], n)
