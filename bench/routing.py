"""The cost of routing: one batch through Barge with one ``--upstream``, and through
Barge with ``--config`` listing three upstreams — two replicas serving the batch's model
(both on the same loopback upstream, so the capacity is the same) and one serving
another model — so every request is routed among replicas. Same file, same upstream,
alternating rounds; the ratio is the routed throughput over the single upstream's.

    python bench/routing.py --requests 20000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import BargeProcess, append_results, barge_seconds, chat_lines, upstream_process

CONFIG = """
[[upstream]]
name = "replica-a"
url = "{base}"
models = ["bench"]
concurrency = 64

[[upstream]]
name = "replica-b"
url = "{base}"
models = ["bench*"]
concurrency = 64

[[upstream]]
name = "other"
url = "{base}"
models = ["other-*"]
concurrency = 16
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.requests
    data = chat_lines(n)
    with upstream_process() as base, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "barge.toml"
        config.write_text(CONFIG.format(base=base))
        single = BargeProcess(Path(tmp) / "single", base, "--upstream-concurrency", "128")
        routed = BargeProcess(Path(tmp) / "routed", base, "--config", str(config))
        single.start()
        routed.start()
        runs: dict[str, list[float]] = {"single": [], "routed": []}
        try:
            for _ in range(args.rounds):
                runs["single"].append(barge_seconds(single, data)[1])
                runs["routed"].append(barge_seconds(routed, data)[1])
        finally:
            single.terminate()
            routed.terminate()
    one, many = statistics.median(runs["single"]), statistics.median(runs["routed"])
    append_results(
        "The cost of routing",
        ["requests", "one --upstream req/s", "--config, 2 replicas + 1 other req/s",
         "routed / one upstream"],
        [[f"{n:,}", f"{n / one:,.0f}", f"{n / many:,.0f}", f"**{one / many:.2f}**"]],
        f"Medians of {args.rounds} alternating rounds, create→completed, instant loopback "
        "upstream, 128 requests in flight at most in both (64 + 64 on the two replicas). "
        "Every routed request picks the replica with the least outstanding work for its "
        "limit; both replicas are the same loopback upstream, so only the routing differs.",
    )


if __name__ == "__main__":
    main()
