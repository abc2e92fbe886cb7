"""Helpers shared by the acceptance tests: building JSONL inputs, polling with deadlines,
reading result files, and checking the OpenAI error shape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from barge_process import BargeProcess
from openai import OpenAI
from openai.types import Batch, FileObject

T = TypeVar("T")

CHAT = "/v1/chat/completions"
MODEL = "gpt-test"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
DEADLINE = 30.0


def chat_body(content: str = "hi", model: str = MODEL, **mock: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if mock:
        body["x_mock"] = mock
    return body


def request_line(custom_id: str, body: dict[str, Any], url: str = CHAT) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def chat_line(custom_id: str, content: str | None = None, **mock: Any) -> dict[str, Any]:
    return request_line(custom_id, chat_body(content or f"prompt {custom_id}", **mock))


def to_jsonl(lines: Iterable[dict[str, Any] | bytes | str]) -> bytes:
    out = bytearray()
    for line in lines:
        if isinstance(line, dict):
            out += orjson.dumps(line)
        elif isinstance(line, str):
            out += line.encode()
        else:
            out += line
        out += b"\n"
    return bytes(out)


def upload(client: OpenAI, data: bytes | list[dict[str, Any]], filename: str = "input.jsonl",
           purpose: str = "batch") -> FileObject:
    raw = data if isinstance(data, bytes) else to_jsonl(data)
    return client.files.create(file=(filename, raw, "application/jsonl"), purpose=purpose)  # type: ignore[arg-type]


def wait_for(check: Callable[[], T | None], *, timeout: float = DEADLINE,
             interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def wait_status(client: OpenAI, batch_id: str, statuses: Iterable[str], *,
                timeout: float = DEADLINE) -> Batch:
    wanted = frozenset(statuses)
    holder: dict[str, Batch] = {}

    def check() -> Batch | None:
        b = client.batches.retrieve(batch_id)
        holder["last"] = b
        return b if b.status in wanted else None

    try:
        return wait_for(check, timeout=timeout, what=f"batch {batch_id} in {sorted(wanted)}")
    except AssertionError as e:
        last = holder.get("last")
        raise AssertionError(f"{e}; status {last.status if last else None}") from None


def wait_terminal(client: OpenAI, batch_id: str, *, timeout: float = DEADLINE) -> Batch:
    return wait_status(client, batch_id, TERMINAL, timeout=timeout)


def run_batch(client: OpenAI, lines: list[dict[str, Any]], endpoint: str = CHAT,
              **create: Any) -> Batch:
    f = upload(client, lines)
    b = client.batches.create(input_file_id=f.id, endpoint=endpoint,  # type: ignore[arg-type]
                              completion_window=create.pop("completion_window", "24h"),
                              **create)
    return wait_terminal(client, b.id)


def read_jsonl(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    data = client.files.content(file_id).content
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def results(client: OpenAI, batch: Batch) -> tuple[dict[str, Any], dict[str, Any]]:
    """Output and error lines by custom_id; fails if any custom_id appears twice."""
    out_lines = read_jsonl(client, batch.output_file_id)
    err_lines = read_jsonl(client, batch.error_file_id)
    ids = [r["custom_id"] for r in out_lines + err_lines]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"custom_ids written more than once: {dupes}"
    return {r["custom_id"]: r for r in out_lines}, {r["custom_id"]: r for r in err_lines}


def assert_error_shape(body: Any, *, param: str | type[Any] | None = Any,
                       code: str | type[Any] | None = Any) -> dict[str, Any]:
    """``body`` is the whole JSON response; checks the OpenAI error envelope."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    if param is not Any:
        assert err["param"] == param, err
    if code is not Any:
        assert err["code"] == code, err
    return err


def error_of(exc: Any, *, status: int, param: str | type[Any] | None = Any,
             code: str | type[Any] | None = Any) -> dict[str, Any]:
    """The error dict of an ``openai.APIStatusError``, its status and shape checked."""
    assert exc.status_code == status, (exc.status_code, exc.response.text)
    return assert_error_shape(exc.response.json(), param=param, code=code)


def root_url(barge: BargeProcess) -> str:
    return f"http://127.0.0.1:{barge.port}"


def healthy(barge: BargeProcess) -> bool:
    return httpx.get(f"{root_url(barge)}/healthz", timeout=5).status_code == 200


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def stored_blobs(data_dir: Path) -> dict[str, list[str]]:
    """Names of everything under the data dir's files/ and tmp/ folders."""
    return {
        sub: sorted(p.name for p in (data_dir / sub).iterdir()) if (data_dir / sub).exists()
        else []
        for sub in ("files", "tmp")
    }


def all_file_ids(client: OpenAI) -> set[str]:
    return {f.id for f in client.files.list()}


def all_batch_ids(client: OpenAI) -> set[str]:
    return {b.id for b in client.batches.list(limit=100)}
