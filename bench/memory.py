"""Scenario 3 and 6, memory: peak RSS of the barge process (VmHWM) while it takes an
upload, validates and runs batches of growing size with ~4 KB lines (50,000 lines is
about 200 MB). Each size gets a fresh process so its peak is its own.

    python bench/memory.py --sizes 1000,10000,50000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import BargeProcess, append_results, chat_lines, upstream_process


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--line-bytes", type=int, default=4000)
    args = parser.parse_args()
    rows = []
    with upstream_process() as base:
        for n in (int(s) for s in args.sizes.split(",")):
            data = chat_lines(n, pad=args.line_bytes - 200)
            with tempfile.TemporaryDirectory() as tmp:
                proc = BargeProcess(Path(tmp) / "data", base, "--max-file-bytes",
                                    str(400 * 1024 * 1024))
                proc.start()
                assert proc.proc is not None
                pid = proc.proc.pid
                try:
                    idle = _kib(pid, "VmRSS")
                    client = proc.client(timeout=600)
                    t0 = time.perf_counter()
                    f = client.files.create(file=("big.jsonl", data), purpose="batch")
                    upload_s = time.perf_counter() - t0
                    after_upload = _kib(pid, "VmHWM")
                    b = client.batches.create(input_file_id=f.id,
                                              endpoint="/v1/chat/completions",
                                              completion_window="24h")
                    t1 = time.perf_counter()
                    validate_s = 0.0
                    while b.status not in ("completed", "failed", "expired", "cancelled"):
                        time.sleep(0.01)
                        b = client.batches.retrieve(b.id)
                        if not validate_s and b.status != "validating":
                            validate_s = time.perf_counter() - t1
                    run_s = time.perf_counter() - t1
                    assert b.status == "completed", b
                    peak = _kib(pid, "VmHWM")
                finally:
                    proc.terminate()
            mb = len(data) / 1e6
            rows.append([f"{n:,}", f"{mb:,.0f}", f"{idle / 1024:.0f}",
                         f"{after_upload / 1024:.0f}", f"**{peak / 1024:.0f}**",
                         f"{mb / upload_s:,.0f}", f"{mb / validate_s:,.0f}",
                         f"{n / run_s:,.0f}"])
    append_results(
        "Memory: peak RSS of the barge process",
        ["requests", "input MB", "RSS idle (MiB)", "peak after upload (MiB)",
         "peak after run (MiB)", "upload MB/s", "validation MB/s (create→in_progress)",
         "create→completed req/s"],
        rows,
        "Peak = VmHWM of the server process (API and engine in one process) against an "
        "instant loopback upstream; every answer echoes its ~4 KB prompt, so the output "
        "file is as large as the input.",
    )


if __name__ == "__main__":
    main()
