"""Pacing accuracy: one batch through Barge against an upstream with a
``tokens_per_minute`` budget, measured where the requests arrive. Each request's tokens
are those the upstream reports in its answer's usage; Barge charges an estimate before
sending and corrects it by that usage. Reported: tokens a minute over the whole run
against the budget, the busiest 10-second window scaled to a minute, and the busiest
1-second window against its proportional share (a provider enforcing the budget over
seconds would answer 429 above it).

    python bench/pacing.py --tokens-per-minute 60000 --seconds 60
"""

from __future__ import annotations

import argparse
import tempfile
import time
from bisect import bisect_left
from pathlib import Path

import orjson
from common import BargeProcess, append_results
from upstream import UpstreamConfig, UpstreamServer

CONFIG = """
[[upstream]]
name = "paced"
url = "{base}"
tokens_per_minute = {tpm}
concurrency = 64
"""

PAD = 180  # characters of filler a prompt: ~100 tokens a request, prompt and answer


def lines(n: int) -> bytes:
    filler = "x" * PAD
    return b"".join(
        orjson.dumps({
            "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "bench", "max_tokens": 64, "x_mock": {"key": f"req-{i}"},
                     "messages": [{"role": "user", "content": f"question {i} {filler}"}]},
        }) + b"\n"
        for i in range(n)
    )


def busiest(times: list[float], tokens: list[float], window: float) -> float:
    """The most tokens in any [t, t + window) of the arrival ``times``."""
    order = sorted(range(len(times)), key=times.__getitem__)
    ts = [times[i] for i in order]
    prefix = [0.0]
    for i in order:
        prefix.append(prefix[-1] + tokens[i])
    return max(prefix[bisect_left(ts, t + window)] - prefix[i] for i, t in enumerate(ts))


def run_batch(proc: BargeProcess, data: bytes) -> dict[str, int]:
    """custom_id → the total_tokens the upstream reported, for one batch."""
    client = proc.client(timeout=600)
    f = client.files.create(file=("pacing.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.2)
        b = client.batches.retrieve(b.id)
    assert b.status == "completed", b
    assert b.output_file_id is not None
    used = {}
    for row in client.files.content(b.output_file_id).read().splitlines():
        out = orjson.loads(row)
        used[out["custom_id"]] = out["response"]["body"]["usage"]["total_tokens"]
    return used


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens-per-minute", type=int, default=60_000)
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long the batch should take at the budget")
    args = parser.parse_args()
    tpm = args.tokens_per_minute
    per_request = 2 * (len("question 1000 ") + PAD) // 4  # ~ what the upstream reports
    n = max(10, round(tpm / 60 * args.seconds / per_request))
    data = lines(n)
    with UpstreamServer.in_thread(UpstreamConfig(record_bodies=False)) as up, \
            tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "barge.toml"
        config.write_text(CONFIG.format(base=up.base_url, tpm=tpm))
        proc = BargeProcess(Path(tmp) / "data", up.base_url, "--config", str(config))
        proc.start()
        try:
            used = run_batch(proc, data)
        finally:
            proc.terminate()
        keys, arrivals = list(up.stats.keys), list(up.stats.arrivals)
    assert len(used) == n and len(keys) == len(arrivals) == n, (len(used), len(keys), n)
    tokens = [float(used[k]) for k in keys]
    total = sum(tokens)
    spread = max(arrivals) - min(arrivals)
    share = tpm / 60
    per_minute = total / spread * 60
    ten = busiest(arrivals, tokens, 10.0) * 6
    one = busiest(arrivals, tokens, 1.0)
    append_results(
        "Pacing accuracy (tokens_per_minute, usage-corrected)",
        ["budget tok/min", "requests", "tokens sent", "seconds", "tok/min sent (÷ budget)",
         "busiest 10 s x 6 (÷ budget)", "busiest 1 s (÷ its share)"],
        [[f"{tpm:,}", f"{n:,}", f"{total:,.0f}", f"{spread:.1f}",
          f"{per_minute:,.0f} (**{per_minute / tpm:.3f}**)",
          f"{ten:,.0f} (**{ten / tpm:.3f}**)",
          f"{one:,.0f} (**{one / share:.3f}**)"]],
        f"Tokens as the loopback upstream reports them (~{per_request} a request; Barge "
        f"estimates ~{-(-(len('question 1000 ') + PAD) // 4) + 64} from the prompt and "
        "max_tokens, then corrects by the usage), counted at their arrival there. "
        "Seconds: first to last arrival. A bucket per budget holding 0.1 s of it: any "
        "second may see its share, the burst and one request.",
    )


if __name__ == "__main__":
    main()
