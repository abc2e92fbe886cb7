"""``barge batches results`` and ``barge batches retry`` against a real server: results
printed as they come (``--follow`` until the end), each once, and a retry's new batch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from api.support import wait_terminal
from barge_process import BargeProcess
from cli.client_support import chat_file, cli, client_env, served
from results_support import file_lines


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BargeProcess]:
    with served(tmp_path_factory.mktemp("client-results"), "--upstream-concurrency",
                "4") as proc:
        yield proc


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_follow_prints_every_result_once_as_it_comes(server: BargeProcess,
                                                     tmp_path: Path) -> None:
    src = chat_file(tmp_path / "in.jsonl", 120, delay=0.2, failing=(5, 50, 100))
    # 120 requests of 0.2 s, 4 at once: ~6 s, longer than a client command takes to start
    batch_id = ok(cli(server, "submit", str(src))).strip()
    with subprocess.Popen(
        [sys.executable, "-m", "barge.cli", "batches", "results", batch_id, "--follow",
         "--limit", "9", "--interval", "0.05"],
        env=client_env(server), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    ) as follow, server.client() as client:
        assert follow.stdout is not None
        first = follow.stdout.readline()  # a result printed before the batch ends
        assert client.batches.retrieve(batch_id).status == "in_progress"
        out = follow.stdout.read()  # through the buffer readline filled
        assert follow.wait(60) == 0
        done = wait_terminal(client, batch_id)
        files = file_lines(client, done)
    printed = (first + out).splitlines(keepends=True)
    assert Counter(printed) == Counter(files) and len(printed) == 120
    # without --follow: what there is, then where to go on from (on stderr)
    head = cli(server, "batches", "results", batch_id, "--limit", "50")
    assert head.returncode == 0 and head.stdout.encode().splitlines(keepends=True) == printed
    assert head.stderr == ""  # the batch has ended and everything was printed


def test_results_of_a_running_batch_say_where_to_go_on(server: BargeProcess,
                                                       tmp_path: Path) -> None:
    src = chat_file(tmp_path / "in.jsonl", 1, delay=30)  # running throughout
    batch_id = ok(cli(server, "submit", str(src))).strip()
    done = cli(server, "batches", "results", batch_id)
    assert done.returncode == 0 and done.stdout == ""
    assert done.stderr.strip() == "next: --after 0.0.0"
    again = cli(server, "batches", "results", batch_id, "--after", "0.0.0")
    assert again.stderr.strip() == "next: --after 0.0.0"
    # from now on: nothing yet, and the cursor past every commit so far
    now = cli(server, "batches", "results", batch_id, "--after", "latest")
    assert now.returncode == 0 and now.stdout == ""
    assert re.fullmatch(r"next: --after [1-9]\d*\.0\.0", now.stderr.strip()), now.stderr
    bad = cli(server, "batches", "results", batch_id, "--after", "nope")
    assert bad.returncode == 1 and "cursor" in bad.stderr and "Traceback" not in bad.stderr
    ok(cli(server, "batches", "cancel", batch_id))


def test_retry_prints_the_new_batch(server: BargeProcess, tmp_path: Path) -> None:
    src = chat_file(tmp_path / "in.jsonl", 6, failing=(1, 4))
    batch_id = ok(cli(server, "submit", str(src))).strip()
    with server.client() as client:
        wait_terminal(client, batch_id)
        new_id = ok(cli(server, "batches", "retry", batch_id)).strip()
        assert new_id.startswith("batch_") and new_id != batch_id
        new = client.batches.retrieve(new_id)
        assert new.metadata == {"retry_of": batch_id}
        lines = src.read_bytes().splitlines(keepends=True)
        assert client.files.content(new.input_file_id).read() == lines[1] + lines[4]
        as_json = json.loads(ok(cli(server, "batches", "retry", batch_id, "--json")))
        assert as_json["object"] == "batch" and as_json["metadata"]["retry_of"] == batch_id
    ok_batch = ok(cli(server, "submit", str(chat_file(tmp_path / "ok.jsonl", 2)))).strip()
    with server.client() as client:
        wait_terminal(client, ok_batch)
    refused = cli(server, "batches", "retry", ok_batch)
    assert refused.returncode == 1 and "nothing to retry" in refused.stderr
