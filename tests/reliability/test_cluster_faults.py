"""One API node and three workers on PostgreSQL + S3, each process real: a worker killed,
a worker frozen past its lease, PostgreSQL restarted, the object store answering 503,
the API node killed during an upload. Every batch ends with each custom_id exactly once
across its output and error files, and the upstream never sees more requests at once
than the cluster's one budget."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import httpx
import pytest
from barge_process import ADMIN_KEY
from cluster_support import Cluster, done, healthz, requests_file
from moto_s3 import MotoS3
from private_pg import PrivatePostgres
from s3_proxy import S3FaultProxy
from upstream import UpstreamConfig, UpstreamServer

BUDGET = 12
LEASE = 3.0
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer.in_thread(UpstreamConfig(latency=0.04, record_bodies=False)) as up:
        yield up


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, moto_s3: MotoS3,
            upstream: UpstreamServer) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    pg = PrivatePostgres().init()
    pg.start()
    proxy = S3FaultProxy(moto_s3.url).start()
    c = Cluster(root, pg, moto_s3, proxy, upstream.base_url, prefix=f"cluster-{os.getpid()}",
                lease_seconds=LEASE, budget=BUDGET)
    c.proxy = proxy  # type: ignore[attr-defined]
    try:
        c.add("api", "serve")
        for name in ("w1", "w2", "w3"):
            c.add(name, "worker")
        yield c
    finally:
        c.stop()
        proxy.stop()
        pg.remove()


def _proxy(c: Cluster) -> S3FaultProxy:
    proxy: S3FaultProxy = c.proxy  # type: ignore[attr-defined]
    return proxy


def _live_nodes(url: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM nodes WHERE expires_at >"
                                           " extract(epoch FROM clock_timestamp())"))
        finally:
            await conn.close()
    return asyncio.run(count())


def _fresh_upstream(up: UpstreamServer) -> None:
    up.stats.reset()


def test_three_workers_share_the_work_and_one_budget(cluster: Cluster,
                                                     upstream: UpstreamServer) -> None:
    _fresh_upstream(upstream)
    b = cluster.submit(1500, "share")
    cluster.wait(b.id, lambda x: done(x) > 100)
    assert _live_nodes(cluster.pg.url) == 3
    final = cluster.wait(b.id)
    cluster.check_exactly_once(final, 1500, "share")
    assert upstream.stats.max_in_flight <= BUDGET, upstream.stats.max_in_flight
    # Every worker sent some of it: the budget is shared, not held by one.
    assert upstream.stats.max_in_flight > BUDGET // 3


def test_a_killed_worker_s_slices_are_taken_over(cluster: Cluster,
                                                upstream: UpstreamServer) -> None:
    _fresh_upstream(upstream)
    b = cluster.submit(2000, "kill")
    cluster.wait(b.id, lambda x: done(x) >= 400)
    cluster.nodes["w1"].kill()
    final = cluster.wait(b.id)
    cluster.check_exactly_once(final, 2000, "kill")
    assert upstream.stats.max_in_flight <= BUDGET
    cluster.nodes["w1"].restart()


def test_a_worker_frozen_past_its_lease_commits_nothing_late(cluster: Cluster,
                                                            upstream: UpstreamServer) -> None:
    _fresh_upstream(upstream)
    b = cluster.submit(2500, "stop")
    cluster.wait(b.id, lambda x: done(x) >= 300)
    w2 = cluster.nodes["w2"]
    assert w2.proc is not None
    w2.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(LEASE * 2 + 1)  # its leases and its share of the budget run out
    finally:
        w2.proc.send_signal(signal.SIGCONT)
    final = cluster.wait(b.id)
    cluster.check_exactly_once(final, 2500, "stop")
    assert upstream.stats.max_in_flight <= BUDGET
    assert healthz(w2) == 200  # it woke up and works on


def test_postgres_restarted_mid_batch(cluster: Cluster, upstream: UpstreamServer) -> None:
    _fresh_upstream(upstream)
    b = cluster.submit(2000, "pg")
    cluster.wait(b.id, lambda x: done(x) >= 300)
    cluster.pg.stop("fast")
    time.sleep(3)
    cluster.pg.start()
    final = cluster.wait(b.id)
    cluster.check_exactly_once(final, 2000, "pg")
    for name, proc in cluster.nodes.items():
        assert proc.proc is not None and proc.proc.poll() is None, f"{name} died"
    # The workers said, in one line, that they wait for the database to come back.
    assert any("waiting for storage to come back" in cluster.nodes[w].log()
               for w in ("w1", "w2", "w3"))


def test_object_store_503s_and_slowness(cluster: Cluster, upstream: UpstreamServer) -> None:
    _fresh_upstream(upstream)
    proxy = _proxy(cluster)
    b = cluster.submit(1200, "s3")
    cluster.wait(b.id, lambda x: done(x) >= 900)
    proxy.fail_for(4)  # as the batch ends: its result files go to a failing store
    final = cluster.wait(b.id)
    cluster.check_exactly_once(final, 1200, "s3")
    assert proxy.stats["503"] > 0
    proxy.delay = 0.2  # a slow store: uploads and downloads still work, only slower
    try:
        b = cluster.submit(300, "slow")
        cluster.check_exactly_once(cluster.wait(b.id), 300, "slow")
    finally:
        proxy.delay = 0.0


def test_api_node_killed_while_a_client_uploads(cluster: Cluster) -> None:
    api = cluster.nodes["api"]
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        boundary = b"--x\r\n"
        yield boundary + b'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        yield (boundary + b'Content-Disposition: form-data; name="file"; filename="a.jsonl"'
               b"\r\nContent-Type: application/jsonl\r\n\r\n")
        data = requests_file(2000, "up")
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]
            if i > len(data) // 2:
                sent.set()
                time.sleep(0.05)

    outcome: list[object] = []

    def upload() -> None:
        try:
            outcome.append(httpx.post(
                f"{api.base_url}/files", content=slow_body(), timeout=30,
                headers={"Authorization": f"Bearer {ADMIN_KEY}",
                         "Content-Type": "multipart/form-data; boundary=x"}))
        except httpx.HTTPError as e:
            outcome.append(e)

    before = {f.id for f in cluster.api().files.list()}
    thread = threading.Thread(target=upload)
    thread.start()
    assert sent.wait(20)
    api.kill()
    thread.join(30)
    assert outcome and isinstance(outcome[0], httpx.HTTPError), outcome
    api.restart()
    assert {f.id for f in cluster.api().files.list()} == before  # nothing half-made
    b = cluster.submit(500, "after")
    cluster.check_exactly_once(cluster.wait(b.id), 500, "after")


def test_cancel_reaches_work_on_every_node(cluster: Cluster) -> None:
    b = cluster.submit(3000, "cancel")
    cluster.wait(b.id, lambda x: done(x) >= 300)
    cluster.api().batches.cancel(b.id)
    final = cluster.wait(b.id, timeout=60)
    assert final.status == "cancelled", final
    c = final.request_counts
    assert c is not None and 300 <= c.completed + c.failed < 3000
    lines = 0
    seen: set[str] = set()
    for file_id in (final.output_file_id, final.error_file_id):
        if file_id is not None:
            for line in cluster.api().files.content(file_id).read().splitlines():
                lines += 1
                seen.add(line.split(b'"custom_id":"', 1)[1].split(b'"', 1)[0].decode())
    assert lines == len(seen) == c.completed + c.failed


def test_a_window_that_ends_expires_the_batch_on_every_node(cluster: Cluster) -> None:
    b = cluster.submit(3000, "exp", window="4s")
    final = cluster.wait(b.id, timeout=60)
    cluster.check_exactly_once(final, 3000, "exp", status="expired")
    c = final.request_counts
    assert c is not None and 0 < c.completed < 3000  # some ran, the rest expired
    assert final.error_file_id is not None
    errors = cluster.api().files.content(final.error_file_id).read()
    assert errors.count(b'"batch_expired"') == 3000 - c.completed


def test_a_finished_batch_deleted_through_the_api_node(cluster: Cluster) -> None:
    b = cluster.submit(200, "del")
    final = cluster.wait(b.id)
    cluster.check_exactly_once(final, 200, "del")
    client = cluster.api()
    r = httpx.delete(f"{cluster.nodes['api'].base_url}/batches/{b.id}", timeout=30,
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200 and r.json()["deleted"] is True, r.text
    with pytest.raises(Exception, match=r"404|No such"):
        client.files.content(final.output_file_id or "")
    with pytest.raises(Exception, match=r"404|No such"):
        client.batches.retrieve(b.id)
