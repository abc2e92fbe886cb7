"""``barge_eta`` on Batch objects, against a real ``barge serve`` in front of a slow
loopback upstream: an in-progress batch with requests done shows when it should finish at
the pace it has kept; nothing done yet, or finished, shows null."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from api.support import CHAT, chat_line, upload, wait_terminal
from barge_process import ADMIN_KEY, BargeProcess
from openai import OpenAI
from upstream import UpstreamConfig, UpstreamServer

N = 40  # requests; two at a time, 0.25 s each: about 5 s in all
TEN_MINUTES = 600


@pytest.fixture
def slow_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer.in_thread(UpstreamConfig(latency=0.25, capacity=2)) as up:
        yield up


@pytest.fixture
def slow_barge(barge_factory: Callable[..., BargeProcess],
               slow_upstream: UpstreamServer) -> BargeProcess:
    return barge_factory(slow_upstream.base_url, "--backoff-base", "0.01")


@dataclass
class Seen:
    """One Batch object as fetched, with the clock just before and just after."""

    before: float
    after: float
    obj: dict[str, Any]

    @property
    def done(self) -> int:
        counts = self.obj["request_counts"]
        return int(counts["completed"] + counts["failed"])


def _fetch(http: httpx.Client, batch_id: str) -> Seen:
    before = time.time()
    r = http.get(f"/batches/{batch_id}")
    after = time.time()
    assert r.status_code == 200, r.text
    return Seen(before, after, r.json())


def _start(client: OpenAI, n: int = N) -> str:
    f = upload(client, [chat_line(f"eta-{i}") for i in range(n)])
    return client.batches.create(input_file_id=f.id, endpoint=CHAT,
                                 completion_window="24h").id


def _watch(http: httpx.Client, batch_id: str, *, timeout: float = 60) -> list[Seen]:
    """Every fetch of the batch until it is terminal."""
    seen: list[Seen] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(_fetch(http, batch_id))
        if seen[-1].obj["status"] in {"completed", "failed", "expired", "cancelled"}:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} not finished after {timeout}s: {seen[-1].obj}")


@pytest.fixture
def http(slow_barge: BargeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=slow_barge.base_url, timeout=10,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as h:
        yield h


def test_a_running_batch_shows_a_plausible_eta_and_null_once_done(
    slow_barge: BargeProcess, http: httpx.Client, connect: Callable[..., OpenAI]
) -> None:
    client = connect(slow_barge)
    batch_id = _start(client)
    seen = _watch(http, batch_id)

    running = [s for s in seen if s.obj["status"] == "in_progress" and 0 < s.done < N]
    assert len(running) >= 3, [(s.obj["status"], s.done) for s in seen]
    for s in running:
        eta = s.obj["barge_eta"]
        assert type(eta) is int, s.obj
        # In the future, and not far: the batch takes seconds.
        assert s.before - 1 <= eta <= s.after + TEN_MINUTES, (eta, s.before)
        # The formula, at some moment between the request and its answer.
        started, remaining = s.obj["in_progress_at"], N - s.done
        low = s.before + remaining * (s.before - started) / s.done
        high = s.after + remaining * (s.after - started) / s.done
        assert int(low) - 1 <= eta <= high + 1, (eta, low, high, s.obj["request_counts"])

    # Nothing done yet (validating, or in progress before the first result): null.
    for s in seen:
        if s.obj["status"] == "validating" or (s.obj["status"] == "in_progress"
                                               and s.done == 0):
            assert s.obj["barge_eta"] is None, s.obj
    # Finalizing: now.
    for s in seen:
        if s.obj["status"] == "finalizing":
            assert s.before - 1 <= s.obj["barge_eta"] <= s.after + 1, s.obj

    # The pace is steady (the upstream serves two at a time): once a quarter is done, the
    # estimate is close to when the batch did finish.
    final = seen[-1].obj
    assert final["status"] == "completed", final
    late = [s for s in running if s.done >= N // 4]
    assert late, [s.done for s in running]
    assert abs(late[0].obj["barge_eta"] - final["completed_at"]) <= 30, (
        late[0].obj, final["completed_at"])

    # Done: null, everywhere a Batch object is shown.
    assert final["barge_eta"] is None
    b = client.batches.retrieve(batch_id)
    assert b.status == "completed"
    assert b.model_extra is not None and b.model_extra["barge_eta"] is None
    listed = http.get("/batches").json()["data"]
    assert [x["barge_eta"] for x in listed if x["id"] == batch_id] == [None]


def test_the_sdk_and_the_listing_show_it_while_running(
    slow_barge: BargeProcess, http: httpx.Client, connect: Callable[..., OpenAI]
) -> None:
    client = connect(slow_barge)
    batch_id = _start(client)
    deadline = time.monotonic() + 30
    while True:
        before = time.time()
        b = client.batches.retrieve(batch_id)
        counts = b.request_counts
        if b.status == "in_progress" and counts is not None \
                and 0 < counts.completed + counts.failed < N:
            break
        assert time.monotonic() < deadline, b
        time.sleep(0.05)
    assert b.model_extra is not None
    eta = b.model_extra["barge_eta"]
    assert type(eta) is int and before - 1 <= eta <= time.time() + TEN_MINUTES, eta
    # The listing shows every batch's, from one reading of the clock.
    listed = {x["id"]: x for x in http.get("/batches").json()["data"]}
    shown = listed[batch_id]
    if shown["status"] == "in_progress":
        assert type(shown["barge_eta"]) is int
        assert before - 1 <= shown["barge_eta"] <= time.time() + TEN_MINUTES
    wait_terminal(client, batch_id)


def test_a_cancelled_batch_has_a_null_eta(
    slow_barge: BargeProcess, http: httpx.Client, connect: Callable[..., OpenAI]
) -> None:
    client = connect(slow_barge)
    batch_id = _start(client)
    deadline = time.monotonic() + 30
    while _fetch(http, batch_id).done == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = http.post(f"/batches/{batch_id}/cancel").json()
    assert cancelling["status"] == "cancelling" and cancelling["barge_eta"] is None, cancelling
    done = wait_terminal(client, batch_id)
    assert done.status == "cancelled"
    assert _fetch(http, batch_id).obj["barge_eta"] is None
