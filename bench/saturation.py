"""Scenario 2, saturating a capacity-limited upstream. The upstream serves K requests at
a time with a fixed latency; beyond K it either answers 429 (``reject``: Barge must find
K by itself) or queues (``queue``). Barge runs with --upstream-concurrency 128, not told
K; the ideal is a direct client at exactly K, measured in the same run, and N/K x latency.

    python bench/saturation.py --k 32 --latency 0.05 --requests 2000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import (
    BargeProcess,
    append_results,
    barge_seconds,
    chat_lines,
    ideal_seconds,
    upstream_process,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n, k, latency = args.requests, args.k, args.latency
    data = chat_lines(n)
    rows = []
    for mode, flag in (("reject (429 beyond K)", "--max-concurrency"), ("queue", "--capacity")):
        with upstream_process(flag, str(k), "--latency", str(latency)) as base, \
                tempfile.TemporaryDirectory() as tmp:
            proc = BargeProcess(Path(tmp) / "data", base, "--upstream-concurrency", "128",
                                "--backoff-base", "0.05")
            proc.start()
            try:
                ideals, runs = [], []
                for _ in range(args.rounds):
                    ideals.append(ideal_seconds(base, data, k))
                    runs.append(barge_seconds(proc, data)[1])
            finally:
                proc.terminate()
        theory = n / k * latency
        ideal, run = statistics.median(ideals), statistics.median(runs)
        rows.append([mode, f"{n:,}", str(k), f"{latency * 1000:.0f} ms", f"{theory:.2f}",
                     f"{ideal:.2f}", f"{run:.2f}", f"**{run / ideal:.2f}**",
                     f"{run / theory:.2f}"])
    append_results(
        "Saturation of a capacity-limited upstream",
        ["upstream beyond K", "requests", "K", "latency", "N/K x latency (s)",
         "direct client at K (s)", "Barge, create→completed (s)", "Barge / direct",
         "Barge / N/K x latency"],
        rows,
        f"Medians of {args.rounds} alternating rounds. Barge is not told K: it runs with "
        "--upstream-concurrency 128 and adapts (AIMD). Its time includes validation and "
        "writing the output file.",
    )


if __name__ == "__main__":
    main()
