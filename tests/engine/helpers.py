"""Helpers to drive a real in-process Barge App (SQLite store, local disk, real upstream
client) without HTTP: write an input blob, create a batch, poke the engine, wait."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from barge.app import App
from barge.domain.ids import new_batch_id, new_file_id
from barge.domain.models import BatchRecord, FileRecord
from barge.domain.status import TERMINAL, Status
from barge.settings import Settings

CHAT = "/v1/chat/completions"
ACCOUNT = "acct_test"


def fast_settings(data_dir: Path, upstream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "upstream": upstream,
        "upstream_timeout": 10.0,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "flush_interval": 0.02,
        "poll_interval": 0.05,
        "shutdown_grace": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


def request_line(custom_id: str, content: str | None = None, url: str = CHAT,
                 **mock: Any) -> bytes:
    body: dict[str, Any] = {"model": "gpt-test",
                            "messages": [{"role": "user", "content": content or custom_id}]}
    mock.setdefault("key", custom_id)
    body["x_mock"] = mock
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def jsonl(lines: list[bytes]) -> bytes:
    return b"".join(raw + b"\n" for raw in lines)


def ids(prefix: str, n: int) -> set[str]:
    return {f"{prefix}-{i}" for i in range(n)}


def simple_input(n: int, prefix: str = "req", **mock: Any) -> bytes:
    return jsonl([request_line(f"{prefix}-{i}", **mock) for i in range(n)])


async def submit(app: App, data: bytes, *, endpoint: str = CHAT,
                 expires_at: int | None = None, poke: bool = True,
                 account: str = ACCOUNT, window: str = "24h") -> str:
    """Store ``data`` as a batch input file, create a batch on it, poke the engine."""
    file_id = new_file_id()
    writer = app.blobs.writer(file_id, max_bytes=app.settings.max_file_bytes)
    writer.write(data)
    info = await writer.commit()
    now = time.time()
    await app.store.create_file(FileRecord(
        id=file_id, account=account, filename="input.jsonl", purpose="batch",
        bytes=info.bytes, sha256=info.sha256, created_at=int(now), expires_at=None,
        lines=info.lines,
    ))
    batch_id = new_batch_id()
    await app.store.create_batch(BatchRecord(
        id=batch_id, account=account, endpoint=endpoint, completion_window=window,
        input_file_id=file_id, status=Status.NEW, created_at=int(now), updated_at=now,
        expires_at=expires_at if expires_at is not None else int(now) + 86400,
    ))
    if poke and app.engine is not None:
        app.engine.poke(batch_id)
    return batch_id


async def wait_for_batch(app: App, batch_id: str, *, timeout: float = 20.0,
                         until: Any = None) -> BatchRecord:
    """Poll the store until the batch is terminal (or ``until(batch)`` is true)."""
    deadline = time.monotonic() + timeout
    while True:
        b = await app.store.get_batch(None, batch_id)
        if (until(b) if until is not None else b.status in TERMINAL):
            return b
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {b.status.value} after {timeout}s: "
                                 f"{b.completed} ok, {b.failed} failed of {b.total}")
        await asyncio.sleep(0.02)


def read_lines(app: App, file_id: str | None) -> list[dict[str, Any]]:
    """The parsed lines of a result file ([] for no file)."""
    if file_id is None:
        return []
    raw = (app.settings.files_dir / file_id).read_bytes()  # local disk blobs
    assert raw == b"" or raw.endswith(b"\n")
    return [orjson.loads(x) for x in raw.splitlines()]


def results(app: App, b: BatchRecord) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return read_lines(app, b.output_file_id), read_lines(app, b.error_file_id)


def assert_each_once(out: list[dict[str, Any]], err: list[dict[str, Any]],
                     expected: set[str]) -> None:
    counts = Counter(x["custom_id"] for x in out + err)
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not dupes, f"custom_ids with several results: {sorted(dupes.items())[:10]}"
    missing = expected - set(counts)
    extra = set(counts) - expected
    assert not missing, f"{len(missing)} custom_ids without a result, e.g. {sorted(missing)[:5]}"
    assert not extra, f"unexpected custom_ids {sorted(extra)[:5]}"


async def assert_file_records(app: App, b: BatchRecord, out: list[Any], err: list[Any]) -> None:
    """Published result files are in the store with the right line counts and sizes."""
    for file_id, lines in ((b.output_file_id, out), (b.error_file_id, err)):
        if not lines:
            assert file_id is None
            continue
        assert file_id is not None
        rec = await app.store.get_file(b.account, file_id)
        assert rec.purpose == "batch_output"
        assert rec.lines == len(lines)
        assert rec.bytes == (await app.blobs.local_path(file_id)).stat().st_size
