"""Scenario 7, million-line batches: one batch of 1,000,000 requests (or more) against an
instant loopback upstream, on SQLite + local disk and on PostgreSQL + S3 (moto_server).
For each: create→completed throughput against a direct aiohttp client sending the same
file in the same run, the time of each phase (from the server's JSON lifecycle log lines:
batch.validated, batch.started, batch.finished), and the peak RSS (VmHWM) of the server
process. The input is written to disk and streamed from it, the output streamed back and
checked (every custom_id exactly once), so the benchmark itself never holds the file.

    python bench/million.py --requests 1000000
    python bench/million.py --requests 10000000 --backends sqlite --no-direct
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from common import (
    BargeProcess,
    append_results,
    cpu_seconds,
    direct_client,
    own_cpu,
    scratch_database,
    upstream_process,
)
from moto_s3 import MotoS3

FINAL = ("completed", "failed", "expired", "cancelled")


def write_input(path: Path, n: int) -> int:
    """``n`` chat lines (custom_id ``req-<i>``, as bench/common.py's) into ``path``;
    returns its size."""
    with open(path, "wb") as fh:
        for start in range(0, n, 100_000):
            fh.write(b"".join(
                orjson.dumps({
                    "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "bench", "max_tokens": 16,
                             "messages": [{"role": "user", "content": f"question {i} "}]},
                }) + b"\n"
                for i in range(start, min(n, start + 100_000))
            ))
    return path.stat().st_size


def direct_seconds(base: str, path: Path, n: int, concurrency: int) -> tuple[float, float]:
    """(seconds, CPU seconds of this process) for the direct client."""
    before = own_cpu()
    with open(path, "rb") as fh:  # streamed: the client never holds the file
        elapsed, ok = asyncio.run(direct_client(base, fh, concurrency))
    assert ok == n, f"direct client: {ok}/{n} ok"
    return elapsed, own_cpu() - before


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _events(log: str) -> dict[str, dict[str, Any]]:
    """The lifecycle events of the (one) batch in a JSON log, by name."""
    found: dict[str, dict[str, Any]] = {}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        event = entry.get("event")
        if isinstance(event, str) and event.startswith("batch."):
            found[event] = entry
    return found


def check_output(proc: BargeProcess, file_id: str, n: int) -> None:
    """Stream the output file back: every custom_id ``req-<i>`` exactly once."""
    seen = bytearray(n)
    count = 0
    client = proc.client(timeout=3600)
    tail = b""
    with client.files.with_streaming_response.content(file_id) as r:
        for chunk in r.iter_bytes(1 << 20):
            rows = (tail + chunk).split(b"\n")
            tail = rows.pop()
            for row in rows:
                i = int(orjson.loads(row)["custom_id"][4:])
                assert not seen[i], f"req-{i} twice"
                seen[i] = 1
                count += 1
    assert not tail.strip()
    assert count == n, f"{count}/{n} custom_ids in the output"


def run_batch(proc: BargeProcess, path: Path, n: int) -> dict[str, float]:
    """Upload ``path``, run it as one batch, check its output; the figures."""
    assert proc.proc is not None
    pid = proc.proc.pid
    idle = _kib(pid, "VmRSS")
    client = proc.client(timeout=3600)
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        f = client.files.create(file=("million.jsonl", fh), purpose="batch")
    upload = time.perf_counter() - t0
    after_upload = _kib(pid, "VmHWM")
    t1 = time.perf_counter()
    cpu = cpu_seconds(pid)
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    while b.status not in FINAL:
        time.sleep(0.1)
        b = client.batches.retrieve(b.id)
    run = time.perf_counter() - t1
    cpu = cpu_seconds(pid) - cpu
    peak = _kib(pid, "VmHWM")
    assert b.status == "completed", b
    assert b.request_counts is not None and b.request_counts.completed == n, b
    assert b.output_file_id is not None
    check_output(proc, b.output_file_id, n)
    time.sleep(0.5)  # the log lines are written
    ev = _events(proc.log())
    validated = float(ev["batch.validated"]["seconds"])
    queued = float(ev["batch.started"]["queue_seconds"])
    duration = float(ev["batch.finished"]["duration"])
    writing = float(ev["batch.finished"]["writing_seconds"])
    return {
        "idle": idle / 1024, "after_upload": after_upload / 1024, "peak": peak / 1024,
        "peak_after_download": _kib(pid, "VmHWM") / 1024,
        "upload": upload, "validation": validated, "until_started": queued,
        "processing": duration - queued - writing, "writing": writing, "run": run,
        "cpu_us": cpu / n * 1e6,
    }


class Sampler:
    """The server's RSS every 0.5 s (for the record of how memory moves)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.5):
            try:
                self.samples.append((time.monotonic() - t0, _kib(self.pid, "VmRSS")))
            except (OSError, KeyError):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgres",
                        help="sqlite (SQLite + local disk), postgres (PostgreSQL + S3)")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--no-direct", action="store_true",
                        help="skip the direct client (for runs where only memory and time "
                             "matter, such as 10,000,000 lines)")
    args = parser.parse_args()
    n = args.requests
    rows = []
    with tempfile.TemporaryDirectory() as tmp, upstream_process() as base:
        root = Path(tmp)
        path = root / "input.jsonl"
        t = time.perf_counter()
        size = write_input(path, n)
        print(f"input: {n:,} lines, {size / 1e6:,.0f} MB, written in "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        for backend in args.backends.split(","):
            direct = direct_cpu = None
            if not args.no_direct:
                direct, direct_cpu = direct_seconds(base, path, n, args.concurrency)
                print(f"direct client: {n / direct:,.0f} req/s", flush=True)
            figures = _backend(backend, root, base, path, n, size, args.concurrency)
            print(backend, {k: round(v, 2) for k, v in figures.items()}, flush=True)
            ratio = "—" if direct is None else f"**{direct / figures['run']:.2f}**"
            rows.append([
                "SQLite + disk" if backend == "sqlite" else "PostgreSQL + S3",
                f"{n:,}", f"{size / 1e6:,.0f}",
                "—" if direct is None else f"{n / direct:,.0f}",
                f"{n / figures['run']:,.0f}", ratio,
                "—" if direct_cpu is None else f"{direct_cpu / n * 1e6:.0f}",
                f"{figures['cpu_us']:.0f}",
                f"{figures['upload']:.1f}", f"{figures['validation']:.1f}",
                f"{figures['processing']:.1f}", f"{figures['writing']:.1f}",
                f"{figures['idle']:.0f}", f"**{figures['peak']:.0f}**",
            ])
    append_results(
        "Million-line batches: throughput, phases, peak RSS",
        ["store", "requests", "input MB", "direct aiohttp req/s",
         "Barge req/s, create→completed", "ratio Barge/direct",
         "direct client CPU µs/request", "Barge CPU µs/request", "upload (s)",
         "validation (s)", "processing (s)", "writing results (s)", "RSS idle (MiB)",
         "peak RSS (MiB)"],
        rows,
        f"One batch each, --upstream-concurrency {args.concurrency}, instant loopback "
        "upstream; " + ("no direct client in this run. " if args.no_direct else
                        "the direct client ran just before each store, on the same upstream "
                        "and input file. ")
        + "Phases from the server's JSON lifecycle log: validation = "
        "batch.validated seconds; processing = batch.finished duration less the time to "
        "batch.started and the writing; writing results = batch.finished writing_seconds. "
        "Peak = VmHWM of the server process (API and engine in one process) up to "
        "completed. CPU per request: user + system time of the direct client's process, "
        "and of the server process (all its threads) from create to completed. "
        "PostgreSQL is the local server; S3 is moto_server on loopback. "
        "Upstream, client, Barge (and PostgreSQL, moto) share the machine's cores.",
    )


def _backend(backend: str, root: Path, base: str, path: Path, n: int, size: int,
             concurrency: int) -> dict[str, float]:
    limits = ["--max-requests", str(n), "--max-file-bytes", str(size + (1 << 20)),
              "--upstream-concurrency", str(concurrency),
              "--log-level", "info", "--log-format", "json"]
    folder = root / backend
    folder.mkdir()
    if backend == "sqlite":
        proc = BargeProcess(folder / "data", base, *limits)
        return _measure(proc, path, n)
    if backend != "postgres":
        raise SystemExit(f"unknown backend {backend!r}")
    with scratch_database() as url:
        s3 = MotoS3().start()
        try:
            proc = BargeProcess(folder / "data", base, *limits, "--database-url", url,
                                "--blob-url", f"s3://{s3.bucket}/million", env=s3.env())
            return _measure(proc, path, n)
        finally:
            s3.stop()


def _measure(proc: BargeProcess, path: Path, n: int) -> dict[str, float]:
    proc.start(timeout=60)
    assert proc.proc is not None
    try:
        with Sampler(proc.proc.pid) as sampler:
            figures = run_batch(proc, path, n)
        most = max((kib for _, kib in sampler.samples), default=0)
        print(f"  RSS samples: {len(sampler.samples)}, highest {most / 1024:.0f} MiB; "
              "every 10th: " + ", ".join(f"{t:.0f}s {kib / 1024:.0f}"
                                         for t, kib in sampler.samples[::10]), flush=True)
        return figures
    finally:
        proc.terminate()
        os.sync()


if __name__ == "__main__":
    main()
