"""Nothing Barge keeps on disk is readable by other users: the data directory and every
directory in it are 0700, every file (the database and its -wal/-shm, uploads, part
files, results, the signing key, the lock) 0600, whatever the umask Barge was started
with; what an older version left readable is made private at start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from api.support import chat_line, upload, wait_for, wait_terminal
from barge_process import BargeProcess, clean_env
from upstream import UpstreamServer

CHAT = "/v1/chat/completions"


def _modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (and ``root`` itself, as '.') with its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _assert_private(root: Path) -> dict[str, int]:
    modes = _modes(root)
    wrong = {}
    for name, mode in modes.items():
        is_dir = (root / name).is_dir()
        if mode != (0o700 if is_dir else 0o600):
            wrong[name] = oct(mode)
    assert not wrong, wrong
    return modes


def _umask(mask: int) -> Callable[[], None]:
    def set_it() -> None:
        os.umask(mask)

    return set_it


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_everything_in_the_data_dir_is_private(tmp_path: Path, upstream: UpstreamServer,
                                               mask: int) -> None:
    data = tmp_path / "data"
    # A data directory made by someone else's umask, holding what an older Barge left.
    data.mkdir(mode=0o777)
    os.chmod(data, 0o777)
    old_key = data / "signing.key"
    old_key.write_text("ab" * 32 + "\n")
    os.chmod(old_key, 0o644)

    proc = BargeProcess(data, upstream.base_url, "--backoff-base", "0.01",
                        log_path=tmp_path / "barge.log", preexec=_umask(mask))
    proc.start()
    try:
        client = proc.client()
        f = upload(client, [chat_line(f"r{i}", delay=0.3) for i in range(20)])
        batch = client.batches.create(input_file_id=f.id, endpoint=CHAT,
                                      completion_window="24h")
        # While it runs: the part files, and the database's -wal and -shm, exist.
        wait_for(lambda: any((data / "work").rglob("*.part*")) or None, timeout=30)
        during = _assert_private(data)
        assert {"barge.db", "barge.db-wal", "barge.db-shm", "signing.key",
                "engine.lock"} <= set(during), sorted(during)
        assert any(name.startswith("work/") for name in during), sorted(during)

        done = wait_terminal(client, batch.id)
        assert done.status == "completed", done
        assert client.files.content(done.output_file_id or "").content
        after = _assert_private(data)
        assert any(name.startswith("files/") for name in after), sorted(after)
        assert (data / "signing.key").read_text() == "ab" * 32 + "\n"  # kept, made private
    finally:
        proc.kill()
    _assert_private(data)
    assert "Traceback" not in proc.log()


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_the_keys_cli_makes_a_private_database(tmp_path: Path, mask: int) -> None:
    data = tmp_path / "cli-data"
    done = subprocess.run(
        [sys.executable, "-m", "barge.cli", "keys", "create", "--data-dir", str(data),
         "--name", "first", "--role", "admin"],
        env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=_umask(mask),
    )
    assert done.returncode == 0, done.stderr
    modes = _assert_private(data)
    assert "barge.db" in modes, modes
