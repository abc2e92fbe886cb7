"""Scenario 4, many small batches: B batches of R requests created at once against an
instant upstream; batches per second to completion and the p50/p99 time from create to
completed. The ideal here is zero: the target is p99 under 2 s.

    python bench/small_batches.py --batches 200 --requests 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import BargeProcess, append_results, chat_lines, upstream_process


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()
    with upstream_process() as base, tempfile.TemporaryDirectory() as tmp:
        proc = BargeProcess(Path(tmp) / "data", base)
        proc.start()
        try:
            client = proc.client(timeout=120)
            f = client.files.create(file=("small.jsonl", chat_lines(args.requests)),
                                    purpose="batch")

            def create(_: int) -> tuple[str, float]:
                b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
                return b.id, time.perf_counter()

            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                created = dict(pool.map(create, range(args.batches)))
            done: dict[str, float] = {}
            while len(done) < len(created):
                for b in client.batches.list(limit=100):
                    if b.id in created and b.id not in done and b.status == "completed":
                        done[b.id] = time.perf_counter()
                time.sleep(0.02)
            elapsed = time.perf_counter() - t0
        finally:
            proc.terminate()
    latencies = [done[i] - created[i] for i in created]
    append_results(
        "Many small batches created at once",
        ["batches x requests", "batches/s to completion", "p50 create→completed (s)",
         "p99 create→completed (s)", "max (s)"],
        [[f"{args.batches} x {args.requests}", f"{args.batches / elapsed:,.1f}",
          f"{statistics.median(latencies):.2f}", f"**{_pct(latencies, 0.99):.2f}**",
          f"{max(latencies):.2f}"]],
        "Created from 8 client threads as fast as the API takes them; completion seen by "
        "listing every 20 ms (so times carry up to ~20 ms of polling).",
    )


if __name__ == "__main__":
    main()
