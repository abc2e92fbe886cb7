"""Scenario 1, dispatch overhead: an upstream that answers at once; Barge from
batches.create to completed against a direct aiohttp client at the same concurrency,
both in the same run on the same upstream process.

    python bench/dispatch.py --sizes 1000,20000 --concurrency 128
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
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating ideal/Barge runs per size; medians are reported")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with upstream_process() as base, tempfile.TemporaryDirectory() as tmp:
        proc = BargeProcess(Path(tmp) / "data", base, "--upstream-concurrency",
                            str(args.concurrency), "--log-level", "warning")
        proc.start()
        try:
            for n in sizes:
                data = chat_lines(n)
                ideals, runs, uploads = [], [], []
                for _ in range(args.rounds):
                    ideals.append(ideal_seconds(base, data, args.concurrency))
                    upload, run, done = barge_seconds(proc, data)
                    assert done == n
                    runs.append(run)
                    uploads.append(upload)
                ideal, run = statistics.median(ideals), statistics.median(runs)
                spread = ", ".join(f"{i / r:.2f}" for i, r in zip(ideals, runs, strict=True))
                rows.append([
                    f"{n:,}", str(args.concurrency), f"{n / ideal:,.0f}", f"{n / run:,.0f}",
                    f"**{ideal / run:.2f}** ({spread})",
                    f"{len(data) / statistics.median(uploads) / 1e6:,.0f}",
                ])
        finally:
            proc.terminate()
    append_results(
        "Dispatch overhead (instant loopback upstream)",
        ["requests", "concurrency", "direct aiohttp req/s (median)",
         "Barge req/s, create→completed (median)", "ratio of medians (each round)",
         "upload MB/s"],
        rows,
        f"{args.rounds} alternating rounds per size. Barge's time includes validation, "
        "dispatch, durable result commits and writing the output file; the direct client only "
        "sends. Upstream, client and Barge share the machine's cores.",
    )


if __name__ == "__main__":
    main()
