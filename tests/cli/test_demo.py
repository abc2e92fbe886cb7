"""``barge demo --keep-running``: after the example batch, Barge and the simulated
upstream stay up and the demo prints the exact commands to use them from another
terminal; the base URL and key it prints work with the openai SDK, and Ctrl-C or SIGTERM
stops both cleanly (exit 0)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from api.support import chat_line, run_batch
from barge_process import clean_env
from openai import OpenAI


class Demo:
    """``barge demo`` as a subprocess whose stdout is read line by line, with deadlines."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "barge.cli", "demo", *args],
            env=clean_env() | {"PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            m = re.search(pattern, line)
            if m is not None:
                return m
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))

    def rest(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._pump_thread.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def demo() -> Iterator[Demo]:
    running = Demo("--requests", "5", "--keep-running")
    yield running
    running.stop()


def _refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.ConnectError:
        return True
    return False


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT],
                         ids=["sigterm", "ctrl-c"])
def test_keep_running_prints_commands_that_work_and_stops_cleanly(
    demo: Demo, stop_with: signal.Signals
) -> None:
    base = demo.wait_for_line(r"^\s*export OPENAI_BASE_URL=(\S+)$").group(1)
    key = demo.wait_for_line(r"^\s*export OPENAI_API_KEY=(\S+)$").group(1)
    upstream = demo.wait_for_line(r"simulated upstream alone: (\S+)").group(1)
    printed = "\n".join(demo.lines)
    assert "3. completed" in printed, printed
    assert re.search(rf"curl -s {re.escape(base)}/batches -H 'Authorization: Bearer "
                     rf"{re.escape(key)}'", printed), printed
    assert re.match(r"^http://127\.0\.0\.1:\d+/v1$", base), base
    assert demo.proc.poll() is None, "the demo should keep running"

    # What an SDK user in another terminal does: OPENAI_BASE_URL / OPENAI_API_KEY.
    with OpenAI(base_url=base, api_key=key, max_retries=0) as client:
        listed = client.batches.list().data
        assert [b.status for b in listed] == ["completed"], listed
        done = run_batch(client, [chat_line("from-another-terminal")])
        assert done.status == "completed", done
        assert done.request_counts is not None and done.request_counts.completed == 1
        content = client.files.content(done.output_file_id or "").text
        assert "from-another-terminal" in content
    assert httpx.get(f"{upstream}/models", timeout=5).status_code == 200
    health = httpx.get(base.removesuffix("/v1") + "/healthz", timeout=5).json()
    assert health["upstream"]["url"] == upstream and health["upstream"]["reachable"] is True

    os.kill(demo.proc.pid, stop_with)
    assert demo.proc.wait(30) == 0
    output = demo.rest()
    assert "Traceback" not in output, output
    assert "Stopped" in output, output
    assert _refused(base.removesuffix("/v1") + "/healthz")
    assert _refused(f"{upstream}/models")


def test_without_keep_running_the_demo_ends_by_itself() -> None:
    done = subprocess.run([sys.executable, "-m", "barge.cli", "demo", "--requests", "3"],
                          env=clean_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3. completed" in done.stdout
    assert "--keep-running" in done.stdout
