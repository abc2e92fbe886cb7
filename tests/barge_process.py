"""Starts the real ``barge serve`` as a subprocess for acceptance tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

ADMIN_KEY = "sk-test-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """The environment without any BARGE_* variable of the machine."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BARGE_")}


class BargeProcess:
    """``barge serve`` (or ``command``, such as ``worker``) on a free loopback port;
    restartable on the same data dir."""

    def __init__(
        self,
        data_dir: Path,
        upstream: str,
        *args: str,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        preexec: Callable[[], None] | None = None,
        command: str = "serve",
    ) -> None:
        self.data_dir = data_dir
        self.upstream = upstream
        self.args = list(args)
        self.extra_env = env or {}
        self.port = free_port()
        self.log_path = log_path or data_dir.parent / f"barge-{self.port}.log"
        self.preexec = preexec
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, api_key: str = ADMIN_KEY, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, **kwargs)

    def start(self, timeout: float = 30.0,
              stop_when: Callable[[], bool] | None = None) -> BargeProcess:
        """Start and wait until /healthz answers 200; RuntimeError (the process killed)
        when it exits, ``timeout`` passes, or ``stop_when`` (checked while waiting) says
        the test has seen what it waited for."""
        env = clean_env() | {"BARGE_ADMIN_KEY": ADMIN_KEY} | self.extra_env
        cmd = [
            sys.executable, "-m", "barge.cli", self.command,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--upstream", self.upstream,
            "--log-level", "warning", *self.args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=self.preexec)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"barge exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if stop_when is not None and stop_when():
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"barge did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the crash a test wants to survive."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self) -> BargeProcess:
        return self.start()
