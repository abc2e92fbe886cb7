"""``barge submit --wait`` on a terminal (a pseudo-terminal): the rich progress bar, and
Ctrl-C asking whether to cancel the batch."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from barge_process import BargeProcess
from cli.client_support import PtyRun, chat_file, client_env, read_jsonl, served


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BargeProcess]:
    with served(tmp_path_factory.mktemp("client-tty"), "--upstream-concurrency", "4") as proc:
        yield proc


@pytest.fixture
def pty_runs() -> Iterator[list[PtyRun]]:
    runs: list[PtyRun] = []
    yield runs
    for run in runs:
        run.close()


def test_progress_bar_is_drawn_on_a_terminal(server: BargeProcess, tmp_path: Path,
                                             pty_runs: list[PtyRun]) -> None:
    src = chat_file(tmp_path / "in.jsonl", 100, delay=0.1, failing=(7, 70))
    run = PtyRun(["submit", str(src), "--wait"], env=client_env(server), cwd=tmp_path)
    pty_runs.append(run)
    batch_id = run.expect(r"(batch_[0-9a-f]{24})").group(1)
    assert run.wait(30) == 0, run.output

    screen = run.output
    done = {int(n) for n in re.findall(r"(\d+)/100\b", screen)}
    assert len(done - {0, 100}) >= 2, screen  # the bar moved through several counts
    assert 100 in done
    assert re.search(r"100/100 +2 failed", screen), screen
    assert re.search(r"\d+\.\d/s", screen), screen  # the rate
    assert "ETA" in screen
    assert "━" in screen  # rich's bar itself
    assert f"{batch_id} completed: 100/100 done, 2 failed" in screen
    output = read_jsonl(tmp_path / f"{batch_id}.output.jsonl")
    errors = read_jsonl(tmp_path / f"{batch_id}.errors.jsonl")
    assert sorted(r["custom_id"] for r in output + errors) == sorted(f"r{i}" for i in range(100))


def test_ctrl_c_asks_and_cancels_on_yes(server: BargeProcess, tmp_path: Path,
                                        pty_runs: list[PtyRun]) -> None:
    src = chat_file(tmp_path / "in.jsonl", 60, delay=0.5)
    run = PtyRun(["submit", str(src), "--wait"], env=client_env(server), cwd=tmp_path)
    pty_runs.append(run)
    batch_id = run.expect(r"(batch_[0-9a-f]{24})").group(1)
    run.expect(r"in_progress.*\d+/60")
    run.type(b"\x03")  # Ctrl-C, as typed: the terminal sends barge a SIGINT
    run.expect(rf"Cancel {batch_id}\? \[y/N\]")
    run.type(b"y\r")
    assert run.wait(30) == 1, run.output
    assert f"barge: {batch_id} cancelled" in run.output
    with server.client() as client:
        batch = client.batches.retrieve(batch_id)
    assert batch.status == "cancelled"
    assert batch.request_counts is not None and batch.request_counts.completed < 60


def test_ctrl_c_then_no_keeps_waiting_and_a_second_ctrl_c_leaves(
    server: BargeProcess, tmp_path: Path, pty_runs: list[PtyRun]
) -> None:
    src = chat_file(tmp_path / "in.jsonl", 60, delay=0.5)
    run = PtyRun(["submit", str(src), "--wait"], env=client_env(server), cwd=tmp_path)
    pty_runs.append(run)
    batch_id = run.expect(r"(batch_[0-9a-f]{24})").group(1)
    run.expect(r"in_progress.*\d+/60")
    run.type(b"\x03")
    run.expect(rf"Cancel {batch_id}\? \[y/N\]")
    run.type(b"n\r")
    run.expect("Ctrl-C again to stop waiting")
    run.type(b"\x03")
    assert run.wait(15) == 130, run.output
    assert f"{batch_id} keeps running" in run.output
    with server.client() as client:
        assert client.batches.retrieve(batch_id).status == "in_progress"
        client.batches.cancel(batch_id)


def test_ctrl_c_at_the_prompt_stops_waiting(server: BargeProcess, tmp_path: Path,
                                           pty_runs: list[PtyRun]) -> None:
    src = chat_file(tmp_path / "in.jsonl", 60, delay=0.5)
    run = PtyRun(["submit", str(src), "--wait"], env=client_env(server), cwd=tmp_path)
    pty_runs.append(run)
    batch_id = run.expect(r"(batch_[0-9a-f]{24})").group(1)
    run.expect(r"in_progress.*\d+/60")
    run.type(b"\x03")
    run.expect(rf"Cancel {batch_id}\? \[y/N\]")
    run.type(b"\x03")
    assert run.wait(15) == 130, run.output
    assert f"{batch_id} keeps running" in run.output
    with server.client() as client:
        assert client.batches.retrieve(batch_id).status == "in_progress"
        client.batches.cancel(batch_id)
