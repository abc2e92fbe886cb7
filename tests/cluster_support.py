"""A cluster of real Barge processes on PostgreSQL + S3: API nodes (``serve
--no-engine``) and workers (``barge worker``), sharing one private PostgreSQL (which a
test may stop and start) and the session's S3 server behind a proxy that can fail."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import httpx
import orjson
from barge_process import BargeProcess
from moto_s3 import MotoS3
from openai import OpenAI
from openai.types import Batch
from private_pg import PrivatePostgres
from s3_proxy import S3FaultProxy

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def requests_file(n: int, tag: str = "c") -> bytes:
    return b"".join(
        orjson.dumps({"custom_id": f"{tag}-{i}", "method": "POST",
                      "url": "/v1/chat/completions",
                      "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]}})
        + b"\n"
        for i in range(n)
    )


class Cluster:
    def __init__(
        self, root: Path, pg: PrivatePostgres, s3: MotoS3, proxy: S3FaultProxy, upstream: str,
        *, prefix: str, lease_seconds: float = 3.0, budget: int = 12, slice_lines: int = 100,
    ) -> None:
        self.root = root
        self.pg = pg
        self.env = s3.env(AWS_ENDPOINT_URL=proxy.url)
        self.common = [
            "--database-url", pg.url, "--blob-url", f"s3://{s3.bucket}/{prefix}",
            "--lease-seconds", str(lease_seconds), "--upstream-concurrency", str(budget),
            "--slice-lines", str(slice_lines), "--upstream-probe-interval", "0",
            "--shutdown-grace", "5", "--log-level", "info", "--completion-windows", "24h,4s",
        ]
        self.upstream = upstream
        self.nodes: dict[str, BargeProcess] = {}

    def add(self, name: str, command: str, *extra: str) -> BargeProcess:
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        args = [*self.common, "--node-name", name, *extra]
        if command == "serve":
            args.append("--no-engine")
        proc = BargeProcess(data, self.upstream, *args, env=self.env, command=command,
                            log_path=self.root / f"{name}.log")
        self.nodes[name] = proc
        return proc.start(timeout=60)

    def api(self) -> OpenAI:
        return self.nodes["api"].client(timeout=30)

    def logs(self) -> str:
        return "\n".join(f"== {n}\n{p.log()[-3000:]}" for n, p in self.nodes.items()) \
            + "\n== slices not done\n" + self._open_slices()

    def _open_slices(self) -> str:
        async def q() -> str:
            conn = await asyncpg.connect(self.pg.url, timeout=5)
            try:
                rows = await conn.fetch(
                    "SELECT batch_id, no, n_lines, completed, failed, lease_token,"
                    " lease_owner, lease_expires - extract(epoch FROM clock_timestamp())"
                    " AS expires_in FROM slices WHERE NOT done ORDER BY batch_id, no")
                return "\n".join(str(dict(r)) for r in rows)
            finally:
                await conn.close()
        try:
            return asyncio.run(q())
        except Exception as e:  # the database may be the thing that is down
            return f"(cannot read: {e})"

    def stop(self) -> None:
        for proc in self.nodes.values():
            proc.kill()

    def submit(self, n: int, tag: str, window: str = "24h") -> Batch:
        client = self.api()
        f = client.files.create(file=(f"{tag}.jsonl", requests_file(n, tag)), purpose="batch")
        return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                     completion_window=window)  # type: ignore[arg-type]

    def wait(self, batch_id: str, until: Callable[[Batch], bool] = lambda b: False,
             timeout: float = 120.0) -> Batch:
        deadline = time.monotonic() + timeout
        while True:
            try:
                b = self.api().batches.retrieve(batch_id)
            except Exception:  # the API node may be down for a moment (a restart)
                b = None
            if b is not None and (until(b) or b.status in TERMINAL):
                return b
            assert time.monotonic() < deadline, f"timed out; last state {b}\n{self.logs()}"
            time.sleep(0.05)

    def check_exactly_once(self, b: Batch, n: int, tag: str, status: str = "completed"
                           ) -> None:
        """Every custom_id once across the output and error files; counts equal lines."""
        assert b.status == status, (b, self.logs())
        assert b.request_counts is not None
        assert b.request_counts.total == n
        assert b.request_counts.completed + b.request_counts.failed == n, b
        ids: Counter[str] = Counter()
        client = self.api()
        for file_id in (b.output_file_id, b.error_file_id):
            if file_id is not None:
                for line in client.files.content(file_id).read().splitlines():
                    ids[orjson.loads(line)["custom_id"]] += 1
        assert set(ids) == {f"{tag}-{i}" for i in range(n)}, (len(ids), self.logs())
        assert max(ids.values()) == 1, [k for k, v in ids.items() if v > 1][:10]


def done(b: Batch) -> int:
    c = b.request_counts
    return 0 if c is None else c.completed + c.failed


def healthz(proc: BargeProcess) -> int:
    return httpx.get(f"http://127.0.0.1:{proc.port}/healthz", timeout=5).status_code
