"""``barge batches …`` and ``barge files …`` against a real server: ``--json`` prints the
server's own JSON, and without it a table names the objects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api.support import wait_terminal
from barge_process import BargeProcess
from cli.client_support import chat_file, cli, read_jsonl, served


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BargeProcess]:
    with served(tmp_path_factory.mktemp("client-cmds"), "--upstream-concurrency", "2") as proc:
        yield proc


def ok(done: Any) -> str:
    assert done.returncode == 0, done.stderr
    return str(done.stdout)


def finished_batch(server: BargeProcess, tmp_path: Path, n: int = 4) -> str:
    """A completed batch of ``n`` requests, the second failing."""
    src = chat_file(tmp_path / "in.jsonl", n, failing=(1,))
    batch_id = ok(cli(server, "submit", str(src))).strip()
    with server.client() as client:
        assert wait_terminal(client, batch_id).status == "completed"
    return batch_id


def test_batches_list_get_and_download(server: BargeProcess, tmp_path: Path) -> None:
    batch_id = finished_batch(server, tmp_path)

    listed = json.loads(ok(cli(server, "batches", "list", "--json")))
    assert listed["object"] == "list"
    assert batch_id in [b["id"] for b in listed["data"]]
    table = ok(cli(server, "batches", "list", "--limit", "5"))
    row = next(line for line in table.splitlines() if batch_id in line)
    assert "completed" in row and "4/4 (1 failed)" in row and "/v1/chat/completions" in row
    assert table.splitlines()[0].split() == ["id", "status", "created", "counts", "endpoint"]

    got = json.loads(ok(cli(server, "batches", "get", batch_id, "--json")))
    assert got["id"] == batch_id and got["status"] == "completed"
    assert got["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    shown = ok(cli(server, "batches", "get", batch_id))
    assert batch_id in shown
    assert "completed 3, failed 1, total 4" in shown
    assert got["output_file_id"] in shown

    ok(cli(server, "batches", "download", batch_id, cwd=tmp_path))
    output = read_jsonl(tmp_path / f"{batch_id}.output.jsonl")
    errors = read_jsonl(tmp_path / f"{batch_id}.errors.jsonl")
    assert sorted(r["custom_id"] for r in output) == ["r0", "r2", "r3"]
    assert [r["custom_id"] for r in errors] == ["r1"]

    out = tmp_path / "elsewhere.jsonl"
    ok(cli(server, "batches", "download", batch_id, "--output", str(out),
           "--errors", str(tmp_path / "e.jsonl"), cwd=tmp_path))
    assert out.read_bytes() == (tmp_path / f"{batch_id}.output.jsonl").read_bytes()


def test_batches_list_pages(server: BargeProcess, tmp_path: Path) -> None:
    finished_batch(server, tmp_path, n=1)
    finished_batch(server, tmp_path, n=1)
    first = json.loads(ok(cli(server, "batches", "list", "--limit", "1", "--json")))
    assert len(first["data"]) == 1 and first["has_more"] is True
    after = first["data"][0]["id"]
    second = json.loads(ok(cli(server, "batches", "list", "--limit", "1", "--after", after,
                               "--json")))
    assert len(second["data"]) == 1 and second["data"][0]["id"] != after
    table = cli(server, "batches", "list", "--limit", "1")
    assert f"more: --after {after}" in table.stderr


def test_batches_cancel_and_delete(server: BargeProcess, tmp_path: Path) -> None:
    src = chat_file(tmp_path / "slow.jsonl", 20, delay=1.0)
    batch_id = ok(cli(server, "submit", str(src))).strip()
    refused = cli(server, "batches", "delete", batch_id)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"barge: Batch {batch_id} is ")  # unfinished: 409

    cancelled = json.loads(ok(cli(server, "batches", "cancel", batch_id, "--json")))
    assert cancelled["id"] == batch_id
    assert cancelled["status"] in ("cancelling", "cancelled")
    with server.client() as client:
        assert wait_terminal(client, batch_id).status == "cancelled"

    deleted = json.loads(ok(cli(server, "batches", "delete", batch_id, "--json")))
    assert deleted == {"id": batch_id, "object": "batch.deleted", "deleted": True}
    gone = cli(server, "batches", "get", batch_id)
    assert gone.returncode == 1 and gone.stderr.startswith("barge: ")

    other = finished_batch(server, tmp_path)
    assert ok(cli(server, "batches", "delete", other)).strip() == f"deleted {other}"
    nothing = cli(server, "batches", "download", "batch_nope")
    assert nothing.returncode == 1


def test_files_upload_list_download_delete(server: BargeProcess, tmp_path: Path) -> None:
    src = chat_file(tmp_path / "mine.jsonl", 3)
    file_id = ok(cli(server, "files", "upload", str(src))).strip()
    assert file_id.startswith("file-")
    as_json = json.loads(ok(cli(server, "files", "upload", str(src), "--purpose", "batch",
                                "--json")))
    assert as_json["object"] == "file" and as_json["filename"] == "mine.jsonl"
    assert as_json["bytes"] == src.stat().st_size

    listed = json.loads(ok(cli(server, "files", "list", "--json")))
    assert {file_id, as_json["id"]} <= {f["id"] for f in listed["data"]}
    table = ok(cli(server, "files", "list", "--purpose", "batch"))
    row = next(line for line in table.splitlines() if file_id in line)
    assert "mine.jsonl" in row and "batch" in row

    shown = ok(cli(server, "files", "get", file_id))
    assert file_id in shown and "mine.jsonl" in shown

    to_stdout = cli(server, "files", "download", file_id)
    assert ok(to_stdout) == src.read_text()
    dest = tmp_path / "copy" / "back.jsonl"
    done = cli(server, "files", "download", file_id, "-o", str(dest))
    assert ok(done) == ""
    assert dest.read_bytes() == src.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["back.jsonl"]  # no temp file left

    deleted = json.loads(ok(cli(server, "files", "delete", as_json["id"], "--json")))
    assert deleted == {"id": as_json["id"], "object": "file", "deleted": True}
    assert ok(cli(server, "files", "delete", file_id)).strip() == f"deleted {file_id}"
    missing = cli(server, "files", "download", file_id, "-o", str(tmp_path / "never.jsonl"))
    assert missing.returncode == 1 and missing.stderr.startswith("barge: ")
    assert not (tmp_path / "never.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "mine.jsonl"]


def test_base_url_with_v1_and_usage_errors(server: BargeProcess, tmp_path: Path) -> None:
    listed = cli(server, "files", "list", "--json", "--base-url", server.base_url + "/")
    assert json.loads(ok(listed))["object"] == "list"
    assert cli(server, "files", "upload", str(tmp_path / "nope")).returncode == 2
    assert cli(server, "batches", "list", "--limit", "0").returncode == 2
    assert cli(server, "batches", "frobnicate").returncode == 2
