"""``barge check``: exit 0 for a healthy server, 1 for none."""

from __future__ import annotations

import subprocess
import sys

from barge_process import BargeProcess, free_port


def _check(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "barge.cli", "check", "--url", url,
                           "--timeout", "2"], capture_output=True, text=True, timeout=30)


def test_check_is_zero_for_a_running_server(barge: BargeProcess) -> None:
    done = _check(f"http://127.0.0.1:{barge.port}")
    assert done.returncode == 0, done.stderr
    assert "healthy" in done.stdout


def test_check_is_one_when_nothing_listens() -> None:
    done = _check(f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "not healthy" in done.stderr
