"""Embeddings coalescing: one batch of embedding lines through Barge coalescing (the
default) and through Barge with ``coalesce = false``, against an upstream whose cost is
per call — every call takes ``--call-ms`` whatever its inputs, ``--upstream-slots`` at
once (more queue) — as a GPU server batching inputs is. Same file, same upstream
process, alternating rounds: upstream calls per line and lines per second.

    python bench/coalescing.py --lines 20000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx
import orjson
from common import BargeProcess, append_results, barge_seconds, upstream_process

EMB = "/v1/embeddings"
CONFIG = """
[[upstream]]
name = "plain"
url = "{base}"
concurrency = {concurrency}
coalesce = false
"""


def embedding_lines(n: int) -> bytes:
    return b"".join(
        orjson.dumps({
            "custom_id": f"e-{i}", "method": "POST", "url": EMB,
            "body": {"model": "bench-embed", "input": f"passage {i}: " + "lorem ipsum " * 8},
        }) + b"\n"
        for i in range(n)
    )


def stats(base: str) -> dict[str, int]:
    root = base.removesuffix("/v1")
    got: dict[str, int] = httpx.get(f"{root}/stats", timeout=10).json()
    httpx.post(f"{root}/stats/reset", timeout=10)
    return got


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--call-ms", type=float, default=5.0)
    parser.add_argument("--upstream-slots", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    n = args.lines
    data = embedding_lines(n)
    upstream_args = ("--latency", str(args.call_ms / 1000), "--capacity",
                     str(args.upstream_slots), "--embedding-dims", "16")
    with upstream_process(*upstream_args) as base, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "barge.toml"
        config.write_text(CONFIG.format(base=base, concurrency=args.concurrency))
        procs = {
            "coalesced": BargeProcess(Path(tmp) / "on", base, "--upstream-concurrency",
                                      str(args.concurrency)),
            "one call a line": BargeProcess(Path(tmp) / "off", base, "--config", str(config)),
        }
        for proc in procs.values():
            proc.start()
        runs: dict[str, list[float]] = {name: [] for name in procs}
        calls: dict[str, list[int]] = {name: [] for name in procs}
        biggest: dict[str, int] = dict.fromkeys(procs, 0)
        try:
            stats(base)
            for _ in range(args.rounds):
                for name, proc in procs.items():
                    _, seconds, done = barge_seconds(proc, data, endpoint=EMB)
                    assert done == n
                    seen = stats(base)
                    runs[name].append(seconds)
                    calls[name].append(seen["embedding_calls"])
                    biggest[name] = max(biggest[name], seen["max_embedding_inputs"])
        finally:
            for proc in procs.values():
                proc.terminate()
    rows = []
    medians = {name: statistics.median(r) for name, r in runs.items()}
    plain = medians["one call a line"]
    for name in procs:
        each = ", ".join(f"{n / s:,.0f}" for s in runs[name])
        rows.append([
            name, f"{n:,}", f"{statistics.median(calls[name]) / n:.4f}",
            str(biggest[name]), f"{n / medians[name]:,.0f} ({each})",
            f"**{plain / medians[name]:.2f}**",
        ])
    append_results(
        "Embeddings coalescing (per-call cost upstream)",
        ["Barge", "lines", "upstream calls per line", "most inputs in a call",
         "lines/s, create→completed (median; each round)", "speed-up"],
        rows,
        f"Medians of {args.rounds} alternating rounds. The loopback upstream takes "
        f"{args.call_ms:g} ms a call whatever its inputs, {args.upstream_slots} calls at "
        f"once (the rest queue); Barge sends at most {args.concurrency} at once. One model, "
        "one set of parameters, ~100-character inputs, 16-number embeddings with 29 "
        "decimals. Upstream, client and both Barge processes share the machine's cores.",
    )


if __name__ == "__main__":
    main()
