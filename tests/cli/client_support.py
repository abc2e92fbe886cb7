"""Helpers of the client command tests (``barge submit``, ``barge batches``, ...): run
``python -m barge.cli`` as a real process against a real ``barge serve``, through pipes
or on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from api.support import chat_line, to_jsonl
from barge_process import ADMIN_KEY, BargeProcess, clean_env
from upstream import UpstreamConfig, UpstreamServer


@contextmanager
def served(folder: Path, *args: str) -> Iterator[BargeProcess]:
    """A ``barge serve`` in ``folder`` in front of a loopback upstream of its own (quick
    retries), for a test module's client commands; ``args`` are its further flags."""
    with UpstreamServer.in_thread(UpstreamConfig()) as up:
        proc = BargeProcess(folder / "data", up.base_url, "--backoff-base", "0.01", *args)
        proc.start()
        try:
            yield proc
        finally:
            proc.kill()


ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def client_env(barge: BargeProcess, *, api_key: str = ADMIN_KEY, **extra: str) -> dict[str, str]:
    """The environment of a client command: BARGE_BASE_URL (without /v1, as a user
    would write it) and BARGE_API_KEY. Not the test run's COLUMNS/LINES (a test runner may
    set them): piped tables are as wide as their rows unless a test asks for a width."""
    env = {k: v for k, v in clean_env().items() if k not in ("COLUMNS", "LINES")}
    return env | {"BARGE_BASE_URL": f"http://127.0.0.1:{barge.port}",
                          "BARGE_API_KEY": api_key} | extra


def cli(barge: BargeProcess, *args: str, cwd: Path | None = None, timeout: float = 30,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``barge ARGS`` to completion, stdin closed, stdout and stderr captured."""
    return subprocess.run([sys.executable, "-m", "barge.cli", *args], cwd=cwd,
                          env=env or client_env(barge), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def write_requests(path: Path, lines: Iterable[dict[str, Any]]) -> Path:
    path.write_bytes(to_jsonl(lines))
    return path


def chat_file(path: Path, n: int, *, delay: float = 0.0, failing: Iterable[int] = (),
              prefix: str = "r") -> Path:
    """``n`` chat requests ``r0``…; each takes ``delay`` seconds upstream, and those in
    ``failing`` get a final 400."""
    bad = set(failing)
    return write_requests(path, [
        chat_line(f"{prefix}{i}", delay=delay, **({"status": 400} if i in bad else {}))
        for i in range(n)
    ])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class PtyRun:
    """``barge ARGS`` with stdin, stdout and stderr on a pseudo-terminal that is its
    controlling terminal (so a typed Ctrl-C is a SIGINT), of ``rows`` x ``columns``;
    everything it writes is collected in ``output``."""

    def __init__(self, args: list[str], *, env: dict[str, str], cwd: Path,
                 columns: int = 120, rows: int = 30) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        # A new session (start_new_session) whose controlling terminal the pty becomes
        # (TIOCSCTTY) before barge starts; no preexec_fn, which threads make unsafe.
        boot = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                "os.execv(sys.executable, [sys.executable, '-m', 'barge.cli', *sys.argv[1:]])")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", boot, *args], stdin=slave, stdout=slave, stderr=slave,
            cwd=cwd, start_new_session=True,
            env=env | {"TERM": "xterm", "COLUMNS": str(columns), "LINES": str(rows)},
        )
        os.close(slave)
        self._master = master
        self._lock = threading.Lock()
        self._raw = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every end of the slave is closed
                return
            if not chunk:
                return
            with self._lock:
                self._raw += chunk

    @property
    def output(self) -> str:
        """What it wrote so far, escape sequences and carriage returns taken out."""
        with self._lock:
            raw = bytes(self._raw)
        return ANSI.sub(b"", raw).decode(errors="replace")

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output)
            if found:
                return found
            if self.proc.poll() is not None:
                self._reader.join(2)
                found = re.search(pattern, self.output)
                if found:
                    return found
                break
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not seen (exit {self.proc.poll()}):\n{self.output}")

    def type(self, data: bytes) -> None:
        os.write(self._master, data)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self._reader.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(5)
        os.close(self._master)
