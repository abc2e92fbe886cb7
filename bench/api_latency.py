"""Scenario 5, API latency under load: p50/p99 of batches.retrieve and batches.list while
a big batch runs flat out against an instant upstream, next to the same calls on an
idle server (the same process, before the batch starts).

    python bench/api_latency.py --requests 50000 --samples 300
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import BargeProcess, append_results, chat_lines, upstream_process


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _sample(call: Callable[[], object], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    rows = []
    with upstream_process() as base, tempfile.TemporaryDirectory() as tmp:
        proc = BargeProcess(Path(tmp) / "data", base)
        proc.start()
        try:
            client = proc.client(timeout=120)
            f = client.files.create(file=("big.jsonl", chat_lines(args.requests)),
                                    purpose="batch")
            small = client.files.create(file=("one.jsonl", chat_lines(1)), purpose="batch")
            probe = client.batches.create(input_file_id=small.id,
                                          endpoint="/v1/chat/completions",
                                          completion_window="24h")
            calls = {
                "retrieve": lambda: client.batches.retrieve(probe.id),
                "list (limit 20)": lambda: client.batches.list(limit=20),
            }
            idle = {name: _sample(call, args.samples) for name, call in calls.items()}
            big = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
            while client.batches.retrieve(big.id).status != "in_progress":
                time.sleep(0.01)
            busy: dict[str, list[float]] = {name: [] for name in calls}
            while len(busy["retrieve"]) < args.samples:
                for name, call in calls.items():
                    busy[name] += _sample(call, 10)
                if client.batches.retrieve(big.id).status != "in_progress":
                    break  # keep only samples taken while it ran
            assert len(busy["retrieve"]) >= 50, "the batch ended too soon to sample"
        finally:
            proc.terminate()
    for name in calls:
        rows.append([name, f"{statistics.median(idle[name]):.1f}",
                     f"{_pct(idle[name], 0.99):.1f}", f"{statistics.median(busy[name]):.1f}",
                     f"**{_pct(busy[name], 0.99):.1f}**"])
    append_results(
        f"API latency while a {args.requests:,}-request batch runs",
        ["call", "idle p50 (ms)", "idle p99 (ms)", "under load p50 (ms)",
         "under load p99 (ms)"],
        rows,
        f"Up to {args.samples} sequential calls each through the openai SDK (its own "
        "overhead included), alternating in tens, while the engine dispatches at full speed "
        "on the same cores.",
    )


if __name__ == "__main__":
    main()
