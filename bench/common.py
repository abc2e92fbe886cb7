"""Shared pieces of the benchmarks: the loopback upstream process, input files, the
direct aiohttp client ("ideal"), a barge process, and the BENCHMARKS.md writer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from barge_process import BargeProcess  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/postgres"  # the local server, trust auth


@contextmanager
def upstream_process(*args: str) -> Iterator[str]:
    """The loopback upstream (tests/upstream.py) in its own process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "upstream.py"), "--port", "0",
         "--no-record-bodies", *args],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "LISTENING":
            raise RuntimeError("the upstream did not start")
        yield f"http://127.0.0.1:{line[1]}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def chat_lines(n: int, *, pad: int = 0) -> bytes:
    filler = "x" * pad
    return b"".join(
        orjson.dumps({
            "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "bench", "max_tokens": 16,
                     "messages": [{"role": "user", "content": f"question {i} {filler}"}]},
        }) + b"\n"
        for i in range(n)
    )


async def direct_client(base: str, lines: Iterable[bytes], concurrency: int
                        ) -> tuple[float, int]:
    """A direct asyncio client: every line's body POSTed at ``concurrency`` (each line
    parsed, its body sent, the answer read and parsed); (seconds, answers 200). ``lines``
    is consumed as it goes, so a file streams."""
    ok = 0
    todo: Iterator[bytes] = iter(lines)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def worker() -> None:
            nonlocal ok
            for raw in todo:
                line = orjson.loads(raw)
                url = base + line["url"][3:]
                async with http.post(url, data=orjson.dumps(line["body"]),
                                     headers={"Content-Type": "application/json"}) as r:
                    orjson.loads(await r.read())
                    ok += r.status == 200
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, ok


def ideal_seconds(base: str, data: bytes, concurrency: int) -> float:
    lines = data.splitlines()
    elapsed, ok = asyncio.run(direct_client(base, lines, concurrency))
    assert ok == len(lines), f"ideal client: {ok}/{len(lines)} ok"
    return elapsed


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new database on the local PostgreSQL for one run; yields its URL, then drops it."""
    db = f"barge_bench_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(f"CREATE DATABASE {db}"))
    try:
        yield PG.rsplit("/", 1)[0] + "/" + db
    finally:
        asyncio.run(_pg_admin(f"DROP DATABASE {db} WITH (FORCE)"))


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def own_cpu() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds so far of process ``pid`` (all its threads) and, unless
    ``children`` is False, of its running children (Barge's sender processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    for child in kids.read_text().split() if children and kids.exists() else ():
        with contextlib.suppress(OSError):
            total += cpu_seconds(int(child))
    return total


def barge_seconds(proc: BargeProcess, data: bytes, endpoint: str = "/v1/chat/completions",
                  poll: float = 0.02) -> tuple[float, float, int]:
    """(upload seconds, create→completed seconds, completed count) for one batch."""
    client = proc.client(timeout=600)
    t0 = time.perf_counter()
    f = client.files.create(file=("bench.jsonl", data), purpose="batch")
    t1 = time.perf_counter()
    b = client.batches.create(input_file_id=f.id, endpoint=endpoint,  # type: ignore[arg-type]
                              completion_window="24h")
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(poll)
        b = client.batches.retrieve(b.id)
    t2 = time.perf_counter()
    assert b.status == "completed", b
    assert b.request_counts is not None
    assert b.output_file_id is not None
    # Every custom_id exactly once in the output (checked after the clock stopped).
    rows = client.files.content(b.output_file_id).read().splitlines()
    ids = {orjson.loads(r)["custom_id"] for r in rows}
    assert len(ids) == len(rows) == b.request_counts.completed, "duplicate or missing ids"
    return t1 - t0, t2 - t1, b.request_counts.completed


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def append_results(title: str, header: list[str], rows: list[list[str]], notes: str = "") -> None:
    """Append a dated table to BENCHMARKS.md and print it."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n### {title} — {stamp}, commit {git_commit()}, {machine()}\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(ROOT / "BENCHMARKS.md", "a") as fh:
        fh.write(text)
