"""Many machines: ``barge serve`` and ``barge worker`` with ``--database-url`` (a real
PostgreSQL, one schema per test) and ``--blob-url`` (a real moto_server S3). Nodes
start, store files in the bucket, share one signing secret, and refuse in one line a
start that cannot work; a PostgreSQL that does not answer yet is waited for."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from api.support import chat_line, run_batch, wait_for
from barge_process import ADMIN_KEY, BargeProcess, clean_env, free_port
from moto_s3 import MotoS3
from pg_support import database_url, pg_database, schema_for
from upstream import UpstreamServer

__all__ = ["pg_database"]

Node = Callable[..., BargeProcess]


@pytest.fixture
def shared(tmp_path: Path, pg_database: str, moto_s3: MotoS3) -> tuple[list[str], dict[str, str]]:
    """The flags and environment of a node of this test's cluster: its own schema, its
    own prefix in the bucket."""
    schema = schema_for(tmp_path)
    args = ["--database-url", database_url(), "--database-schema", schema,
            "--blob-url", f"s3://{moto_s3.bucket}/{schema}"]
    return args, moto_s3.env()


@pytest.fixture
def node(tmp_path: Path, shared: tuple[list[str], dict[str, str]]) -> Iterator[Node]:
    """Start nodes of the cluster, each with a data directory of its own (its scratch);
    every one is stopped at the end of the test."""
    started: list[BargeProcess] = []
    args, env = shared

    def start(upstream_url: str, *extra: str, command: str = "serve") -> BargeProcess:
        data_dir = tmp_path / f"node-{len(started)}"
        proc = BargeProcess(data_dir, upstream_url, *args, *extra, env=env, command=command)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


def _barge(tmp_path: Path, command: str, *args: str, env: dict[str, str] | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``barge <command>`` expected to refuse to start."""
    cmd = [sys.executable, "-m", "barge.cli", command, "--data-dir", str(tmp_path / "data"),
           "--port", str(free_port()), "--upstream", "http://127.0.0.1:9/v1", *args]
    return subprocess.run(cmd, env=clean_env() | {"BARGE_ADMIN_KEY": ADMIN_KEY} | (env or {}),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _refused(done: subprocess.CompletedProcess[str], *names: str) -> str:
    """The refusal's last line, which names every one of ``names``; no traceback."""
    assert done.returncode != 0, (done.stdout, done.stderr)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines, output
    for name in names:
        assert name in lines[-1], (name, output)
    return lines[-1]


def _objects(moto_s3: MotoS3, prefix: str) -> bytes:
    return moto_s3.request("GET", f"/{moto_s3.bucket}?list-type=2&prefix={prefix}/")


# -- refusals ----------------------------------------------------------------------------


def test_a_blob_url_without_a_database_url_is_refused(tmp_path: Path) -> None:
    done = _barge(tmp_path, "serve", "--blob-url", "s3://bucket/prefix")
    _refused(done, "--blob-url", "--database-url", "one node")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = _barge(tmp_path, "serve", env={"BARGE_DATABASE_URL": "postgresql://h/db"})
    _refused(done, "--database-url", "--blob-url", "one node")
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_a_worker_without_the_shared_database_is_refused(tmp_path: Path) -> None:
    done = _barge(tmp_path, "worker")
    _refused(done, "barge worker", "--database-url", "shared database")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_missing_bucket_is_one_line_naming_it(
    tmp_path: Path, shared: tuple[list[str], dict[str, str]]
) -> None:
    args, env = shared
    args = [*args[:-1], "s3://no-such-bucket-here/p"]
    for command in ("serve", "worker"):
        done = _barge(tmp_path, command, *args, env=env)
        last = _refused(done, "'no-such-bucket-here'", "does not exist")
        assert "never creates" in last


def test_wrong_s3_credentials_are_one_line(
    tmp_path: Path, shared: tuple[list[str], dict[str, str]], moto_s3: MotoS3
) -> None:
    args, env = shared
    moto_s3.check_credentials(True)
    try:
        done = _barge(tmp_path, "serve", *args,
                      env=env | {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000"})
    finally:
        moto_s3.check_credentials(False)
    _refused(done, "credentials", "AWS_ACCESS_KEY_ID")


def test_a_missing_database_is_one_line_at_once(
    tmp_path: Path, shared: tuple[list[str], dict[str, str]]
) -> None:
    args, env = shared
    url = database_url().rsplit("/", 1)[0] + "/barge_no_such_database"
    done = _barge(tmp_path, "serve", "--database-url", url, *args[2:], env=env, timeout=20)
    _refused(done, "PostgreSQL", "barge_no_such_database", "does not exist")


def test_a_database_that_does_not_answer_yet_is_waited_for(
    tmp_path: Path, shared: tuple[list[str], dict[str, str]]
) -> None:
    args, env = shared
    port = free_port()  # nothing listens there
    url = f"postgresql://postgres@127.0.0.1:{port}/barge"
    log_path = tmp_path / "waiting.log"
    proc = BargeProcess(tmp_path / "data", "http://127.0.0.1:9/v1", "--database-url", url,
                        *args[2:], env=env, log_path=log_path)
    with pytest.raises(RuntimeError, match="did not become healthy"):  # killed afterwards
        proc.start(timeout=30, stop_when=lambda: proc.log().count("waiting for PostgreSQL") >= 2)
    waiting = [ln for ln in proc.log().splitlines() if "waiting for PostgreSQL" in ln]
    assert len(waiting) >= 2, proc.log()  # it tried again, and said so each time
    assert f"127.0.0.1:{port}/barge" in waiting[0] and "refused" in waiting[0], waiting
    assert "Traceback" not in proc.log()


# -- nodes that work ---------------------------------------------------------------------


def test_serve_keeps_files_in_the_bucket_and_state_in_postgres(
    tmp_path: Path, node: Node, upstream: UpstreamServer, moto_s3: MotoS3
) -> None:
    barge = node(upstream.base_url)
    with barge.client() as client:
        f = client.files.create(file=("in.jsonl", b'{"a": 1}\n', "application/jsonl"),
                                purpose="batch")
        assert client.files.content(f.id).content == b'{"a": 1}\n'
        assert [x.id for x in client.files.list().data] == [f.id]
    assert f.id.encode() in _objects(moto_s3, schema_for(tmp_path))
    assert not (barge.data_dir / "barge.db").exists()
    assert not (barge.data_dir / "files").exists()
    assert not (barge.data_dir / "signing.key").exists()  # the secret is the database's


def test_a_worker_answers_healthz(node: Node, upstream: UpstreamServer) -> None:
    worker = node(upstream.base_url, "--node-name", "worker-7", command="worker")
    r = httpx.get(f"http://127.0.0.1:{worker.port}/healthz", timeout=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["node"] == "worker-7", body
    assert body["upstream"]["url"] == upstream.base_url
    # No API on a worker.
    assert httpx.get(f"{worker.base_url}/files", timeout=5).status_code == 404


HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_an_upload_link_made_on_one_node_works_on_another(
    node: Node, upstream: UpstreamServer
) -> None:
    # One signing secret, the database's, though neither node was given one.
    api = node(upstream.base_url, "--no-engine")
    other = node(upstream.base_url, "--no-engine")
    made = httpx.post(f"http://127.0.0.1:{api.port}/batches/upload_url", headers=HEADERS,
                      timeout=5).json()
    url = made["url"].replace(f":{api.port}/", f":{other.port}/")
    lines = b"".join(b'{"custom_id": "%d"}\n' % i for i in range(3))
    assert httpx.put(url, content=lines, timeout=10).status_code == 200
    with api.client() as client:
        assert client.files.content(made["handler"]).content == lines
    forged = url.replace("signature=", "signature=0")
    assert httpx.put(forged, content=lines, timeout=10).status_code == 403


def test_a_download_link_made_on_one_node_works_on_another(
    node: Node, upstream: UpstreamServer
) -> None:
    api = node(upstream.base_url, "--no-engine")
    other = node(upstream.base_url)  # runs the batch
    with api.client() as client:
        batch = run_batch(client, [chat_line(str(i)) for i in range(3)])
    assert batch.status == "completed", batch
    got = wait_for(lambda: httpx.get(f"{api.base_url}/batches/{batch.id}?download=true",
                                     headers=HEADERS, timeout=5).json(), timeout=5)
    link = got["download"]["url"].replace(f":{api.port}/", f":{other.port}/")
    r = httpx.get(link, timeout=10)
    assert r.status_code == 200, r.text
    assert len(r.content.splitlines()) == 3
    forged = link.replace("signature=", "signature=0")
    assert httpx.get(forged, timeout=10).status_code == 403


def test_serve_no_engine_runs_the_api_alone_on_sqlite(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer, tmp_path: Path
) -> None:
    barge = barge_factory(upstream.base_url, "--no-engine")
    with barge.client() as client:
        f = client.files.create(file=("in.jsonl", b"{}\n", "application/jsonl"),
                                purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        time.sleep(1)  # no engine: the batch waits
        assert client.batches.retrieve(b.id).status == "validating"
    assert not (barge.data_dir / "engine.lock").exists()
