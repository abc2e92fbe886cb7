"""Many machines, once per cluster: an upload link takes one upload whichever nodes its
uploads go through, nodes starting at once on an empty database make one admin key
between them, and ``barge keys`` manages the keys of the cluster's PostgreSQL database.
Real processes on a real PostgreSQL (one schema per test) and a moto_server S3, as in
test_shared.py, whose fixtures these tests use."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import httpx
from api.support import assert_error_shape, chat_line, to_jsonl
from barge_process import ADMIN_KEY, BargeProcess, clean_env
from cli.test_shared import Node, node, shared
from pg_support import database_url, pg_database, schema_for
from upstream import UpstreamServer

from barge.store.postgres import PostgresStore

__all__ = ["node", "pg_database", "shared"]

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
Shared = tuple[list[str], dict[str, str]]


def _link(api: BargeProcess) -> dict[str, str]:
    r = httpx.post(f"http://127.0.0.1:{api.port}/batches/upload_url", headers=HEADERS,
                   timeout=5)
    assert r.status_code == 200, r.text
    made: dict[str, str] = r.json()
    return made


def _via(url: str, made_on: BargeProcess, to: BargeProcess) -> str:
    """The link ``made_on`` handed out, pointed at node ``to``."""
    return url.replace(f":{made_on.port}/", f":{to.port}/")


def _content(tag: str) -> bytes:
    """Distinct bytes, big enough to arrive in several chunks."""
    return to_jsonl([chat_line(f"{tag}-{i}", content="x" * 200) for i in range(200)])


def _slow(data: bytes, start: threading.Barrier, pieces: int = 8) -> Iterator[bytes]:
    """The body in pieces with pauses, so that the uploads through one link overlap."""
    start.wait(timeout=30)
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        yield data[i:i + step]
        time.sleep(0.03)


# -- upload links ------------------------------------------------------------------------


def test_an_upload_link_used_on_one_node_is_refused_on_another(
    node: Node, upstream: UpstreamServer
) -> None:
    a = node(upstream.base_url, "--no-engine")
    b = node(upstream.base_url, "--no-engine")
    made = _link(a)
    data = to_jsonl([chat_line("first")])
    assert httpx.put(made["url"], content=data, timeout=10).status_code == 200
    late = httpx.put(_via(made["url"], a, b), content=b'{"late": 1}\n', timeout=10)
    assert late.status_code == 409, late.text
    assert_error_shape(late.json(), code="upload_link_used")
    with b.client() as client:
        assert client.files.content(made["handler"]).content == data


def test_uploads_through_one_link_on_two_nodes_at_once_store_one(
    node: Node, upstream: UpstreamServer
) -> None:
    """Uploads overlapping on two nodes all pass the check made before the body is read;
    the store's use_once lets exactly one of them have the link."""
    a = node(upstream.base_url, "--no-engine")
    b = node(upstream.base_url, "--no-engine")
    links = [_link(a) for _ in range(3)]
    puts = [(i, target, n) for i in range(len(links)) for target in (a, b) for n in range(2)]
    bodies = {key: _content(f"l{key[0]}-{key[1].port}-{key[2]}") for key in puts}
    start = threading.Barrier(len(puts))

    def put(key: tuple[int, BargeProcess, int]) -> tuple[int, bytes, httpx.Response]:
        i, target, _ = key
        url = _via(links[i]["url"], a, target)
        with httpx.Client(timeout=60) as anonymous:
            return i, bodies[key], anonymous.put(url, content=_slow(bodies[key], start))

    with ThreadPoolExecutor(len(puts)) as pool:
        outcomes = list(pool.map(put, puts))

    for i, link in enumerate(links):
        mine = [(data, r) for j, data, r in outcomes if j == i]
        won = [(data, r) for data, r in mine if r.status_code == 200]
        assert len(won) == 1, [r.status_code for _, r in mine]
        (data, r), = won
        assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
        for _, lost in mine:
            if lost.status_code != 200:
                assert lost.status_code == 409, lost.text
                assert_error_shape(lost.json(), code="upload_link_used")
        for reader in (a, b):
            with reader.client() as client:
                assert client.files.content(link["handler"]).content == data


# -- barge keys on the cluster's database ------------------------------------------------


def _keys(tmp_path: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "barge.cli", "keys", *args,
           "--data-dir", str(tmp_path / "keys-data")]
    return subprocess.run(cmd, env=clean_env() | (env or {}), capture_output=True, text=True,
                          timeout=60, check=False)


def _ok(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout.splitlines()


def _listed(tmp_path: Path, *where: str) -> list[list[str]]:
    return [ln.split("\t") for ln in _ok(_keys(tmp_path, "list", *where))]


def test_keys_commands_manage_the_keys_of_a_cluster(
    tmp_path: Path, node: Node, upstream: UpstreamServer
) -> None:
    where = ["--database-url", database_url(), "--database-schema", schema_for(tmp_path)]
    # Before any node started: the command makes the schema.
    made = _ok(_keys(tmp_path, "create", "--name", "ops", "--role", "admin",
                     "--account", "team", *where))
    key_id, secret = made[0].split()[2], made[-1]
    assert made[0].startswith("created key key_") and secret.startswith("sk-barge-")
    a = node(upstream.base_url)
    b = node(upstream.base_url, "--no-engine")
    for n in (a, b):
        r = httpx.get(f"{n.base_url}/files", timeout=5,
                      headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200, r.text
    # A key made through one node's API is listed too; the variables work as the flags.
    r = httpx.post(f"{a.base_url}/admin/keys", headers=HEADERS, timeout=5,
                   json={"name": "via-api", "role": "member"})
    assert r.status_code == 200, r.text
    env = {"BARGE_DATABASE_URL": database_url(), "BARGE_DATABASE_SCHEMA": schema_for(tmp_path)}
    listed = [ln.split("\t") for ln in _ok(_keys(tmp_path, "list", env=env))]
    assert listed == [[key_id, "ops", "admin", "team", "live"],
                      [r.json()["id"], "via-api", "member", "default", "live"]]
    # Revoked on the database: every node refuses the key.
    assert _ok(_keys(tmp_path, "revoke", key_id, *where)) == [f"revoked {key_id}"]
    assert [key_id, "ops", "admin", "team", "revoked"] in _listed(tmp_path, *where)
    for n in (a, b):
        r = httpx.get(f"{n.base_url}/files", timeout=5,
                      headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 401, r.text
    # None of it touched the local SQLite database.
    assert not (tmp_path / "keys-data").exists()
    assert _listed(tmp_path) == []


def test_keys_commands_refuse_a_database_in_one_line(tmp_path: Path) -> None:
    done = _keys(tmp_path, "list", "--database-url", "mysql://h/db")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "--database-url" in done.stderr and "PostgreSQL URL" in done.stderr
    url = database_url().rsplit("/", 1)[0] + "/barge_no_such_database"
    done = _keys(tmp_path, "revoke", "key_x", "--database-url", url)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "barge_no_such_database" in done.stderr.strip().splitlines()[-1], done.stderr
    done = _keys(tmp_path, "revoke", "key_nope", "--database-url", database_url(),
                 "--database-schema", schema_for(tmp_path))
    assert done.returncode == 1 and "No such live key: key_nope" in done.stderr, done.stderr


# -- the first admin key -----------------------------------------------------------------


def test_nodes_starting_at_once_on_an_empty_database_make_one_admin_key(
    tmp_path: Path, shared: Shared, upstream: UpstreamServer
) -> None:
    """Three nodes with no admin key given start on an empty database, and are made to
    look for keys at the same moment: the test holds a lock on the keys' table until all
    three wait on it. Exactly one makes and prints a key; the others make none."""
    args, env = shared
    schema = schema_for(tmp_path)
    no_key = env | {"BARGE_ADMIN_KEY": ""}  # empty: none given, so a node makes one
    nodes = [BargeProcess(tmp_path / f"node-{i}", upstream.base_url, *args, "--no-engine",
                          env=no_key) for i in range(3)]

    async def start_together() -> None:
        store = PostgresStore(database_url(), schema=schema, max_size=1)
        await store.open()  # the tables exist; no key yet
        await store.close()
        conn = await asyncpg.connect(database_url(), server_settings={"search_path": schema})
        try:
            lock = conn.transaction()
            await lock.start()
            await conn.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
            starts = [asyncio.ensure_future(asyncio.to_thread(n.start, 60)) for n in nodes]
            deadline = time.monotonic() + 60
            while await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                      " AND relation = 'api_keys'::regclass") < len(nodes):
                assert time.monotonic() < deadline, [n.log() for n in nodes]
                assert not any(t.done() for t in starts), [n.log() for n in nodes]
                await asyncio.sleep(0.05)
            await lock.rollback()  # all three read the keys now
            await asyncio.gather(*starts)
        finally:
            await conn.close()

    try:
        asyncio.run(start_together())
        where = ["--database-url", database_url(), "--database-schema", schema]
        listed = _listed(tmp_path, *where)
        assert [row[1:] for row in listed] == [["first-admin", "admin", "default", "live"]]
        logs = [n.log() for n in nodes]
        made = [log for log in logs if "created an admin key" in log]
        assert len(made) == 1, logs
        secret = re.search(r"^\s+(sk-barge-\S+)$", made[0], re.M)
        assert secret is not None, made[0]
        # The others say the key exists, or (when the maker committed before their read
        # ran: a statement's snapshot is taken after its lock wait) find it and say
        # nothing; none makes one or waits for a maker.
        others = [log for log in logs if log is not made[0]]
        assert all("An admin key already exists" in log or "key" not in log.lower()
                   for log in others), others
        # The one key works on every node.
        for n in nodes:
            r = httpx.get(f"{n.base_url}/files", timeout=5,
                          headers={"Authorization": f"Bearer {secret.group(1)}"})
            assert r.status_code == 200, r.text
        # A node started later says nothing of keys, and makes none.
        late = BargeProcess(tmp_path / "node-late", upstream.base_url, *args, "--no-engine",
                            env=no_key)
        nodes.append(late)
        late.start(timeout=60)
        assert "admin key" not in late.log(), late.log()
        assert len(_listed(tmp_path, *where)) == 1
    finally:
        for n in nodes:
            n.kill()
