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
    cpu_seconds,
    ideal_seconds,
    own_cpu,
    upstream_process,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating ideal/Barge runs per size; medians are reported")
    parser.add_argument("--dispatch-processes", default="0,2",
                        help="Barge's --dispatch-processes, one Barge for each")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with upstream_process() as base, tempfile.TemporaryDirectory() as tmp:
        for senders in [int(p) for p in args.dispatch_processes.split(",")]:
            rows += run_sizes(base, Path(tmp) / f"data-{senders}", sizes, senders, args)
    append_results(
        "Dispatch overhead (instant loopback upstream)",
        ["requests", "concurrency", "dispatch processes", "direct aiohttp req/s (median)",
         "Barge req/s, create→completed (median)", "ratio of medians (each round)",
         "direct CPU µs/request", "Barge CPU µs/request", "of which its main process",
         "CPU ratio direct/Barge (each round)", "upload MB/s"],
        rows,
        f"{args.rounds} alternating rounds per size. Barge's time includes validation, "
        "dispatch, durable result commits and writing the output file; the direct client only "
        "sends. Upstream, client and Barge share the machine's cores. CPU: user + system "
        "seconds of the direct client's process, and of Barge's from upload to completed "
        "(all its threads, and its sender processes with --dispatch-processes; the main "
        "process alone in its own column); their ratio moves less than the rates when the "
        "machine's speed does.",
    )


def run_sizes(base: str, data_dir: Path, sizes: list[int], senders: int,
              args: argparse.Namespace) -> list[list[str]]:
    rows = []
    proc = BargeProcess(data_dir, base, "--upstream-concurrency", str(args.concurrency),
                        "--dispatch-processes", str(senders), "--log-level", "warning")
    proc.start()
    assert proc.proc is not None
    pid = proc.proc.pid
    try:
        for n in sizes:
            data = chat_lines(n)
            ideals, runs, uploads, cpu_direct, cpu_barge, cpu_engine = [], [], [], [], [], []
            for _ in range(args.rounds):
                before = own_cpu()
                ideals.append(ideal_seconds(base, data, args.concurrency))
                cpu_direct.append(own_cpu() - before)
                before, engine = cpu_seconds(pid), cpu_seconds(pid, children=False)
                upload, run, done = barge_seconds(proc, data)
                cpu_barge.append(cpu_seconds(pid) - before)
                cpu_engine.append(cpu_seconds(pid, children=False) - engine)
                assert done == n
                runs.append(run)
                uploads.append(upload)
            ideal, run = statistics.median(ideals), statistics.median(runs)
            spread = ", ".join(f"{i / r:.2f}" for i, r in zip(ideals, runs, strict=True))
            cpu_spread = ", ".join(f"{d / b:.2f}"
                                   for d, b in zip(cpu_direct, cpu_barge, strict=True))
            rows.append([
                f"{n:,}", str(args.concurrency), str(senders), f"{n / ideal:,.0f}",
                f"{n / run:,.0f}",
                f"**{ideal / run:.2f}** ({spread})",
                f"{statistics.median(cpu_direct) / n * 1e6:.0f}",
                f"{statistics.median(cpu_barge) / n * 1e6:.0f}",
                f"{statistics.median(cpu_engine) / n * 1e6:.0f}",
                f"{statistics.median(cpu_direct) / statistics.median(cpu_barge):.2f}"
                f" ({cpu_spread})",
                f"{len(data) / statistics.median(uploads) / 1e6:,.0f}",
            ])
    finally:
        proc.terminate()
    return rows


if __name__ == "__main__":
    main()
