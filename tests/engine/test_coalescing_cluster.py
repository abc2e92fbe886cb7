"""Coalescing on leases: an API node and two workers on PostgreSQL + S3, each a real
process. Lines of the slices a worker holds share calls, each result is committed with
its own slice, and every custom_id ends exactly once with its own call's answer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from cluster_support import Cluster
from moto_s3 import MotoS3
from private_pg import PrivatePostgres
from s3_proxy import S3FaultProxy
from upstream import UpstreamConfig, UpstreamServer, hash_embeddings

DIMS = 4
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer.in_thread(UpstreamConfig(embedding_dims=DIMS, latency=0.02,
                                                 record_bodies=False)) as up:
        yield up


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, moto_s3: MotoS3,
            upstream: UpstreamServer) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    pg = PrivatePostgres().init()
    pg.start()
    proxy = S3FaultProxy(moto_s3.url).start()
    c = Cluster(root, pg, moto_s3, proxy, upstream.base_url,
                prefix=f"coalesce-{os.getpid()}", slice_lines=25)
    try:
        c.add("api", "serve")
        for name in ("w1", "w2"):
            c.add(name, "worker")
        yield c
    finally:
        c.stop()
        proxy.stop()
        pg.remove()


def test_lines_of_leased_slices_share_calls_and_land_in_their_own_slices(
    cluster: Cluster, upstream: UpstreamServer,
) -> None:
    bodies: dict[str, dict[str, Any]] = {
        f"e-{i}": {"model": "emb", "input": f"leased {i}" if i % 3 else [f"a {i}", f"b {i}"]}
        for i in range(300)}
    data = b"".join(orjson.dumps({"custom_id": k, "method": "POST", "url": "/v1/embeddings",
                                  "body": v}) + b"\n" for k, v in bodies.items())
    upstream.stats.reset()
    client = cluster.api()
    f = client.files.create(file=("emb.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                              completion_window="24h")
    final = cluster.wait(b.id)
    assert final.status == "completed", (final, cluster.logs())
    assert final.request_counts is not None
    assert (final.request_counts.completed, final.request_counts.failed) == (300, 0)
    assert final.output_file_id is not None and final.error_file_id is None
    rows = client.files.content(final.output_file_id).read().splitlines()
    seen = [orjson.loads(r) for r in rows]
    assert sorted(r["custom_id"] for r in seen) == sorted(bodies)
    for row in seen:
        expected = hash_embeddings(bodies[row["custom_id"]], DIMS)["data"]
        assert row["response"]["body"]["data"] == orjson.loads(orjson.dumps(expected))
    calls = upstream.stats.embedding_inputs
    assert sum(calls) == 400 and len(calls) <= 300 // 10, calls
