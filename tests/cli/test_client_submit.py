"""``barge submit`` without a terminal (pipes, as in CI): the batch id alone on stdout,
plain progress lines on stderr, the results downloaded, and an exit status that says how
the batch ended."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from api.support import chat_line, request_line, to_jsonl, wait_for
from barge_process import BargeProcess
from cli.client_support import chat_file, cli, client_env, read_jsonl, served, write_requests


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BargeProcess]:
    """One barge for the module: few requests at once, so that progress takes a while,
    and a 2-second completion window to let batches expire."""
    with served(tmp_path_factory.mktemp("client-submit"), "--upstream-concurrency", "4",
                "--completion-windows", "24h,2s") as proc:
        yield proc


def test_submit_wait_downloads_every_result_once(server: BargeProcess, tmp_path: Path) -> None:
    src = chat_file(tmp_path / "requests.jsonl", 60, delay=0.1, failing=(5, 17, 42))
    done = cli(server, "submit", str(src), "--endpoint", "/v1/chat/completions", "--wait",
               "--interval", "0.3", "--metadata", "job=nightly", "--metadata", "team=a=b",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.strip()
    assert batch_id.startswith("batch_") and done.stdout == batch_id + "\n"

    progress = [line for line in done.stderr.splitlines() if line.startswith(f"{batch_id}: ")]
    assert len(progress) >= 3, done.stderr  # a line every 0.3 s over a few seconds
    assert any("in_progress" in line for line in progress), done.stderr
    assert progress[-1] == f"{batch_id}: completed, 60/60 done, 3 failed"
    assert "\x1b[" not in done.stderr  # no terminal, no escape sequences

    output = read_jsonl(tmp_path / f"{batch_id}.output.jsonl")
    errors = read_jsonl(tmp_path / f"{batch_id}.errors.jsonl")
    ids = [row["custom_id"] for row in output + errors]
    assert sorted(ids) == sorted(f"r{i}" for i in range(60))  # every one, exactly once
    assert {row["custom_id"] for row in errors} == {"r5", "r17", "r42"}
    assert all(row["response"]["status_code"] == 400 for row in errors)
    assert f"wrote 57 results to {batch_id}.output.jsonl" in done.stderr
    assert done.stderr.endswith(f"{batch_id} completed: 60/60 done, 3 failed\n")

    got = cli(server, "batches", "get", batch_id, "--json")
    assert '"job": "nightly"' in got.stdout and '"team": "a=b"' in got.stdout


def test_submit_wait_writes_where_asked_and_no_errors_file_when_none(
    server: BargeProcess, tmp_path: Path
) -> None:
    src = chat_file(tmp_path / "in.jsonl", 5)
    out, err = tmp_path / "res" / "out.jsonl", tmp_path / "err.jsonl"
    done = cli(server, "submit", str(src), "--output", str(out), "--errors", str(err),
               cwd=tmp_path)  # --output implies --wait
    assert done.returncode == 0, done.stderr
    assert sorted(r["custom_id"] for r in read_jsonl(out)) == [f"r{i}" for i in range(5)]
    assert not err.exists()  # the batch has no error file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "res"]  # no temp files


def test_submit_without_wait_prints_the_id_only(server: BargeProcess, tmp_path: Path) -> None:
    src = chat_file(tmp_path / "in.jsonl", 3)
    done = cli(server, "submit", str(src), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.strip()
    assert done.stdout == batch_id + "\n" and batch_id.startswith("batch_")
    with server.client() as client:
        assert client.batches.retrieve(batch_id).endpoint == "/v1/chat/completions"
    assert list(tmp_path.iterdir()) == [src]


def test_endpoint_defaults_to_the_files_own(server: BargeProcess, tmp_path: Path) -> None:
    src = write_requests(tmp_path / "embed.jsonl", [
        request_line(f"e{i}", {"model": "m", "input": f"text {i}"}, url="/v1/embeddings")
        for i in range(3)
    ])
    done = cli(server, "submit", str(src), "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.strip()
    with server.client() as client:
        assert client.batches.retrieve(batch_id).endpoint == "/v1/embeddings"
    assert len(read_jsonl(tmp_path / f"{batch_id}.output.jsonl")) == 3


def test_invalid_file_fails_the_batch_and_says_why(server: BargeProcess,
                                                   tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_bytes(to_jsonl([chat_line("a"), "{not json", chat_line("a")]))
    done = cli(server, "submit", str(src), "--wait", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    batch_id = done.stdout.strip()
    assert f"barge: {batch_id} failed" in done.stderr
    assert "line 2: invalid_json_line" in done.stderr
    assert "line 3: duplicate_custom_id" in done.stderr


def test_expired_batch_exits_one_with_its_errors(server: BargeProcess, tmp_path: Path) -> None:
    src = chat_file(tmp_path / "in.jsonl", 12, delay=4.0)
    done = cli(server, "submit", str(src), "--window", "2s", "--wait", "--interval", "1",
               cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    batch_id = done.stdout.strip()
    assert f"barge: {batch_id} expired" in done.stderr
    errors = read_jsonl(tmp_path / f"{batch_id}.errors.jsonl")
    assert {e["error"]["code"] for e in errors if e["error"]} == {"batch_expired"}


def test_cancelled_batch_exits_one(server: BargeProcess, tmp_path: Path) -> None:
    src = chat_file(tmp_path / "in.jsonl", 40, delay=0.5)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "barge.cli", "submit", str(src), "--wait", "--interval", "0.5"],
        cwd=tmp_path, env=client_env(server), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert waiting.stdout is not None
        batch_id = waiting.stdout.readline().strip()
        assert batch_id.startswith("batch_")
        cancelled = cli(server, "batches", "cancel", batch_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.split() in ([batch_id, "cancelling"], [batch_id, "cancelled"])
        _, stderr = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, stderr
    assert f"barge: {batch_id} cancelled" in stderr


def test_ctrl_c_without_terminal_leaves_the_batch_running(server: BargeProcess,
                                                          tmp_path: Path) -> None:
    src = chat_file(tmp_path / "in.jsonl", 40, delay=0.5)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "barge.cli", "submit", str(src), "--wait", "--interval", "0.2"],
        cwd=tmp_path, env=client_env(server), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert waiting.stdout is not None and waiting.stderr is not None
        batch_id = waiting.stdout.readline().strip()
        for line in waiting.stderr:  # wait until it is following the batch
            if "in_progress" in line:
                break
        else:
            raise AssertionError(f"no progress line; exit {waiting.wait(10)}")
        waiting.send_signal(signal.SIGINT)
        _, stderr = waiting.communicate(timeout=15)
    finally:
        waiting.kill()
    assert waiting.returncode == 130, stderr
    assert f"{batch_id} keeps running" in stderr
    assert "Cancel" not in stderr  # nobody to ask
    with server.client() as client:
        assert client.batches.retrieve(batch_id).status == "in_progress"
        client.batches.cancel(batch_id)  # leave the server idle for the next test
        wait_for(lambda: client.batches.retrieve(batch_id).status == "cancelled",
                 timeout=20, what="the cancel")


def test_usage_errors_exit_two(server: BargeProcess, tmp_path: Path) -> None:
    src = chat_file(tmp_path / "in.jsonl", 1)
    missing = cli(server, "submit", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2, missing.stderr
    assert "does not exist" in missing.stderr
    bad_metadata = cli(server, "submit", str(src), "--metadata", "novalue")
    assert bad_metadata.returncode == 2
    assert "KEY=VALUE" in bad_metadata.stderr
    unknown = cli(server, "submit", str(src), "--no-such-flag")
    assert unknown.returncode == 2
    assert cli(server, "batches", "get").returncode == 2  # the id is missing
    assert missing.stdout == bad_metadata.stdout == ""


def test_server_errors_exit_one_with_the_servers_message(server: BargeProcess,
                                                         tmp_path: Path) -> None:
    src = chat_file(tmp_path / "in.jsonl", 1)
    wrong_key = cli(server, "submit", str(src), env=client_env(server, api_key="sk-wrong"))
    assert wrong_key.returncode == 1
    assert wrong_key.stderr.strip() == "barge: Incorrect API key provided."
    assert wrong_key.stdout == ""

    as_flag = cli(server, "batches", "list", "--api-key", "sk-wrong")
    assert as_flag.returncode == 1
    assert as_flag.stderr.strip() == "barge: Incorrect API key provided."

    orphan = chat_file(tmp_path / "orphan.jsonl", 1)
    window = cli(server, "submit", str(orphan), "--window", "5m")
    assert window.returncode == 1
    assert window.stderr.splitlines()[-1] == (
        "barge: Unsupported completion_window '5m'; this server accepts ['24h', '2s'].")
    with server.client() as client:  # no batch: its upload was deleted again
        assert "orphan.jsonl" not in {f.filename for f in client.files.list()}

    nobody = cli(server, "batches", "list", "--base-url", "http://127.0.0.1:1/v1")
    assert nobody.returncode == 1
    assert nobody.stderr.startswith("barge: cannot reach http://127.0.0.1:1/v1")
