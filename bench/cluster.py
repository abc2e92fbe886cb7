"""Many machines: PostgreSQL + S3 against SQLite + local disk, and 1, 2, 3 workers.

1. The same batch, same instant upstream, one node: SQLite + local disk vs PostgreSQL
   (the local server) + S3 (``moto_server`` on loopback); create→completed throughput.
2. A capacity-limited upstream (K slots, fixed latency; beyond K it answers 429) and a
   cluster budget of K: one API node and 1, 2, 3 workers; throughput and the most
   requests the upstream saw at once (never above the budget).

    python bench/cluster.py --requests 20000 --k 32 --latency 0.05
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import (
    BargeProcess,
    append_results,
    barge_seconds,
    chat_lines,
    scratch_database,
    upstream_process,
)
from moto_s3 import MotoS3


def _max_in_flight(base: str) -> int:
    import httpx

    stats = httpx.get(base.removesuffix("/v1") + "/stats", timeout=5).json()
    return int(stats["max_in_flight"])


def _reset(base: str) -> None:
    import httpx

    httpx.post(base.removesuffix("/v1") + "/stats/reset", timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--limited-requests", type=int, default=3000)
    args = parser.parse_args()
    with scratch_database() as url:
        s3 = MotoS3().start()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                _one_node(args, root, url, s3)
                _workers(args, root, url, s3)
        finally:
            s3.stop()


def _shared_args(url: str, s3: MotoS3, prefix: str) -> list[str]:
    return ["--database-url", url, "--database-schema", prefix,
            "--blob-url", f"s3://{s3.bucket}/{prefix}"]


def _one_node(args: argparse.Namespace, root: Path, url: str, s3: MotoS3) -> None:
    n = args.requests
    data = chat_lines(n)
    with upstream_process() as base:
        local = BargeProcess(root / "local", base, "--upstream-concurrency", "128")
        shared = BargeProcess(root / "shared", base, "--upstream-concurrency", "128",
                              *_shared_args(url, s3, "one"), env=s3.env())
        local.start()
        shared.start(timeout=60)
        try:
            runs: dict[str, list[float]] = {"local": [], "shared": []}
            for _ in range(args.rounds):
                runs["local"].append(barge_seconds(local, data)[1])
                runs["shared"].append(barge_seconds(shared, data)[1])
        finally:
            local.terminate()
            shared.terminate()
    lo, sh = statistics.median(runs["local"]), statistics.median(runs["shared"])
    append_results(
        "PostgreSQL + S3 vs SQLite + local disk, one node",
        ["requests", "SQLite + disk req/s", "PostgreSQL + S3 req/s", "PostgreSQL+S3 / SQLite"],
        [[f"{n:,}", f"{n / lo:,.0f}", f"{n / sh:,.0f}", f"**{lo / sh:.2f}**"]],
        f"Medians of {args.rounds} alternating rounds, create→completed, instant loopback "
        "upstream, --upstream-concurrency 128. PostgreSQL is the local server (one "
        "database for the run); S3 is moto_server on loopback. Both processes, the "
        "upstream, PostgreSQL and moto share the machine's cores.",
    )


def _workers(args: argparse.Namespace, root: Path, url: str, s3: MotoS3) -> None:
    k, latency, n = args.k, args.latency, args.limited_requests
    data = chat_lines(n)
    rows = []
    with upstream_process("--max-concurrency", str(k), "--latency", str(latency)) as base:
        for workers in (1, 2, 3):
            prefix = f"w{workers}"
            common = [*_shared_args(url, s3, prefix), "--upstream-concurrency", str(k),
                      "--slice-lines", "200", "--lease-seconds", "10"]
            api = BargeProcess(root / f"{prefix}-api", base, *common, "--no-engine",
                               env=s3.env())
            nodes = [BargeProcess(root / f"{prefix}-{i}", base, *common, env=s3.env(),
                                  command="worker") for i in range(workers)]
            api.start(timeout=60)
            for node in nodes:
                node.start(timeout=60)
            time.sleep(3)  # every worker has its share of the budget
            try:
                _reset(base)
                seconds = barge_seconds(api, data)[1]
                peak = _max_in_flight(base)
            finally:
                for node in (api, *nodes):
                    node.terminate()
            theory = n / k * latency
            rows.append([str(workers), f"{n:,}", str(k), f"{latency * 1000:.0f} ms",
                         f"{n / seconds:,.0f}", f"{theory / seconds:.2f}", f"{peak} / {k}"])
    append_results(
        "Workers sharing one upstream budget",
        ["workers", "requests", "K = budget", "latency", "req/s",
         "share of the upstream's capacity", "most in flight at the upstream / budget"],
        rows,
        "One API node (serve --no-engine) and 1-3 workers (barge worker) on PostgreSQL + "
        "S3 (moto); the upstream serves K at a time and answers 429 beyond. The cluster's "
        "--upstream-concurrency is K in total, shared through the database. The capacity "
        "share is (N/K x latency) / measured time, create→completed (validation and "
        "writing the result files included). On a 2-core machine one worker already "
        "fills the upstream, so more workers cannot add throughput here; what the rows "
        "show is that the shared budget holds (the peak never exceeds K) and costs "
        "little as workers join.",
    )


if __name__ == "__main__":
    main()
