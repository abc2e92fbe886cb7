"""``--log-format``: a real ``barge serve`` whose log is JSON lines (every line, uvicorn's
included) or readable text, with one line per lifecycle event of a batch — created,
validated, started, finished, cancel_requested, deleted — carrying ``event``,
``batch_id`` and ``account``."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from api.support import chat_line, run_batch, upload, wait_for, wait_status, wait_terminal
from barge_process import ADMIN_KEY, BargeProcess, clean_env
from upstream import UpstreamConfig, UpstreamServer

from barge.logs import JSONFormatter, TextFormatter

LIFECYCLE = ("batch.created", "batch.validated", "batch.started", "batch.finished")


def json_lines(proc: BargeProcess) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be one JSON object."""
    entries = []
    for n, line in enumerate(proc.log().splitlines()):
        entry = orjson.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(entry, dict), (n, line)
        assert {"ts", "level", "logger", "message"} <= set(entry), (n, line)
        assert datetime.fromisoformat(entry["ts"]).utcoffset().total_seconds() == 0, line
        entries.append(entry)
    return entries


def events_of(entries: list[dict[str, Any]], batch_id: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e.get("batch_id") == batch_id and "event" in e:
            found.setdefault(e["event"], []).append(e)
    return found


def _start(barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer,
           *args: str, env: dict[str, str] | None = None) -> BargeProcess:
    # --log-level info comes after the harness's own --log-level warning: the last wins.
    return barge_factory(upstream.base_url, "--backoff-base", "0.01", "--log-level", "info",
                         *args, env=env)


def test_json_log_tells_a_batch_s_lifecycle(barge_factory: Callable[..., BargeProcess],
                                            upstream: UpstreamServer) -> None:
    proc = _start(barge_factory, upstream, "--log-format", "json")
    with proc.client() as client:
        lines = [chat_line(f"r{i}") for i in range(4)] + [chat_line("bad", status=400)]
        done = run_batch(client, lines)
        assert done.status == "completed"
        invalid = run_batch(client, [chat_line("ok"), {"custom_id": "x"}])
        assert invalid.status == "failed"
        r = httpx.delete(f"{proc.base_url}/batches/{done.id}", timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert r.status_code == 200, r.text

    def lifecycle_logged() -> dict[str, list[dict[str, Any]]] | None:
        found = events_of(json_lines(proc), done.id)
        return found if "batch.deleted" in found else None

    found = wait_for(lifecycle_logged, timeout=10, what="the batch's events in the log")
    for event in (*LIFECYCLE, "batch.deleted"):
        assert len(found.get(event, [])) == 1, (event, found)
        entry = found[event][0]
        assert entry["level"] == "INFO" and entry["account"] == "default", entry
        assert done.id in entry["message"], entry
    created = found["batch.created"][0]
    assert created["endpoint"] == "/v1/chat/completions", created
    assert created["completion_window"] == "24h" and created["input_file_id"], created
    assert created["logger"] == "barge.api", created
    validated = found["batch.validated"][0]
    assert validated["valid"] is True and validated["lines"] == 5, validated
    started = found["batch.started"][0]
    assert started["queue_seconds"] >= 0 and started["total"] == 5, started
    finished = found["batch.finished"][0]
    assert (finished["status"], finished["completed"], finished["failed"]) == \
        ("completed", 4, 1), finished
    assert 0 < finished["duration"] < 60, finished
    order = [e["event"] for e in json_lines(proc) if e.get("batch_id") == done.id
             and "event" in e]
    assert order == [*LIFECYCLE, "batch.deleted"], order

    # A file with a bad line: validation fails (with its count), and the batch ends.
    failed = events_of(json_lines(proc), invalid.id)
    assert "batch.started" not in failed, failed
    [v] = failed["batch.validated"]
    assert v["valid"] is False and v["errors"] == 1, v
    [f] = failed["batch.finished"]
    assert f["status"] == "failed" and f["barge_status"] == "validation_failed", f
    # uvicorn's own lines follow the format too.
    assert any(e["logger"].startswith("uvicorn") for e in json_lines(proc)), proc.log()


def test_a_cancel_is_logged_once(barge_factory: Callable[..., BargeProcess]) -> None:
    with UpstreamServer.in_thread(UpstreamConfig(latency=0.3, capacity=1)) as slow:
        proc = _start(barge_factory, slow, env={"BARGE_LOG_FORMAT": "json"})
        with proc.client() as client:
            f = upload(client, [chat_line(f"c{i}") for i in range(20)])
            b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
            wait_status(client, b.id, {"in_progress"})
            client.batches.cancel(b.id)
            client.batches.cancel(b.id)  # a repeat changes nothing, and says nothing
            assert wait_terminal(client, b.id).status == "cancelled"
    found = wait_for(lambda: (x := events_of(json_lines(proc), b.id)).get("batch.finished")
                     and x, timeout=10, what="the cancelled batch's end in the log")
    [cancel] = found["batch.cancel_requested"]
    assert cancel["account"] == "default" and cancel["was"] == "in_progress", cancel
    [end] = found["batch.finished"]
    assert end["status"] == "cancelled" and end["completed"] < 20, end


def test_text_log_stays_readable(barge_factory: Callable[..., BargeProcess],
                                 upstream: UpstreamServer) -> None:
    proc = _start(barge_factory, upstream)
    with proc.client() as client:
        done = run_batch(client, [chat_line("t1"), chat_line("t2")])
    line = wait_for(lambda: next((ln for ln in proc.log().splitlines()
                                  if "event=batch.finished" in ln), None),
                    timeout=10, what="the finished line")
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO barge\.engine: batch ", line), line
    assert f"batch_id={done.id}" in line and "account=default" in line, line
    assert "status=completed" in line and "completed=2" in line, line
    assert not proc.log().lstrip().startswith("{")


def test_json_log_holds_the_first_key_and_a_refusal(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer, tmp_path: Path
) -> None:
    # No admin key given and none stored: the one made is told in a JSON line too.
    proc = _start(barge_factory, upstream, "--log-format", "json",
                  env={"BARGE_ADMIN_KEY": ""})
    [told] = [e for e in json_lines(proc) if "No keys yet" in e["message"]]
    assert told["level"] == "WARNING" and "sk-" in told["message"], told
    # A start refused (its port in use) ends with one JSON line saying why.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "barge.cli", "serve", "--log-format", "json",
             "--data-dir", str(tmp_path / "refused"), "--port", str(port),
             "--upstream", upstream.base_url],
            capture_output=True, text=True, timeout=30, env=clean_env())
    assert done.returncode == 1, done.stderr
    entries = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert entries[-1]["level"] == "ERROR" and "in use" in entries[-1]["message"], entries


def test_json_formatter_carries_the_exception_and_the_fields() -> None:
    logger = logging.getLogger("barge.test")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logger.makeRecord("barge.test", logging.ERROR, __file__, 1, "failed %s",
                                   ("here",), sys.exc_info(),
                                   extra={"event": "x.y", "batch_id": "batch_1",
                                          "account": "a", "count": 3})
    line = JSONFormatter().format(record)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["message"] == "failed here" and entry["level"] == "ERROR", entry
    assert (entry["event"], entry["batch_id"], entry["account"], entry["count"]) == \
        ("x.y", "batch_1", "a", 3)
    assert "ValueError: boom" in entry["exc"] and "Traceback" in entry["exc"], entry
    text = TextFormatter().format(record)
    assert text.splitlines()[0].endswith(
        "ERROR barge.test: failed here event=x.y batch_id=batch_1 account=a count=3"), text
    assert "ValueError: boom" in text
