"""How the client commands show what the server answered: rich tables for people, the
raw JSON (``--json``) for scripts."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from rich import box
from rich.console import Console
from rich.table import Table

# The Batch fields ``batches get`` shows first, in this order; the others follow.
BATCH_FIELDS = (
    "id", "status", "barge_status", "endpoint", "model", "completion_window",
    "request_counts", "barge_eta", "input_file_id", "output_file_id", "error_file_id",
    "created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
    "expired_at", "cancelling_at", "cancelled_at", "expires_at", "updated_at",
    "metadata", "usage", "errors",
)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout."""
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def stdout() -> Console:
    """The console tables go to: on a terminal, its width; else (a pipe, a file) wide
    enough that no row wraps, unless COLUMNS says otherwise."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 1000
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def when(ts: Any, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A Unix time as local date and time; empty for none."""
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return ""
    return time.strftime(fmt, time.localtime(ts))


def duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def counts(batch: dict[str, Any], *, short: bool = False) -> str:
    """``98/100 done, 2 failed`` (``short``: ``98/100 (2 failed)``): done counts
    completed and failed requests alike."""
    rc = batch.get("request_counts") or {}
    completed, failed, total = (int(rc.get(k) or 0) for k in ("completed", "failed", "total"))
    if short:
        return f"{completed + failed}/{total}" + (f" ({failed} failed)" if failed else "")
    return f"{completed + failed}/{total} done, {failed} failed"


GAP = 3  # columns between two of a table's columns


def _show_table(columns: tuple[str, ...], rows: Sequence[Sequence[str]], *,
                wrap: str) -> None:
    """A table on stdout. Every column gets its widest cell but the ``wrap`` one, which
    folds into what the console's width leaves, and is left out when that is under 8."""
    console = stdout()
    widths = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(columns)]
    w = columns.index(wrap)
    room = console.width - sum(widths) + widths[w] - GAP * (len(columns) - 1)
    keep = [i for i in range(len(columns)) if i != w or room >= 8]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i in keep:
        if i == w:
            table.add_column(columns[i], overflow="fold", max_width=min(widths[i], room))
        else:
            table.add_column(columns[i], no_wrap=True, min_width=widths[i])
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    console.print(table)


def _created(ts: Any) -> str:
    """Month, day and time this year; the date alone for other years."""
    if isinstance(ts, int | float) and time.localtime(ts).tm_year == time.localtime().tm_year:
        return when(ts, "%m-%d %H:%M")
    return when(ts, "%Y-%m-%d")


def show_batches(items: Iterable[dict[str, Any]]) -> None:
    rows = [(str(b.get("id")), str(b.get("status")), _created(b.get("created_at")),
             counts(b, short=True), str(b.get("endpoint") or "")) for b in items]
    _show_table(("id", "status", "created", "counts", "endpoint"), rows, wrap="endpoint")


def show_files(items: Iterable[dict[str, Any]]) -> None:
    rows = [(str(f.get("id")), str(f.get("filename") or ""), str(f.get("purpose")),
             f"{f.get('bytes', 0):,}", _created(f.get("created_at"))) for f in items]
    _show_table(("id", "filename", "purpose", "bytes", "created"), rows, wrap="filename")


def show_webhooks(items: Iterable[dict[str, Any]]) -> None:
    rows = [(str(w.get("id")), str(w.get("url")),
             ", ".join(str(e) for e in w.get("events") or []),
             _created(w.get("created_at"))) for w in items]
    _show_table(("id", "url", "events", "created"), rows, wrap="url")


def _value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key.endswith("_at") or key == "barge_eta":
        shown = when(value)
        if key == "barge_eta" and isinstance(value, int | float):
            shown += f" (in {duration(value - time.time())})"
        return shown
    if key == "request_counts" and isinstance(value, dict):
        return ", ".join(f"{k} {value.get(k, 0)}" for k in ("completed", "failed", "total"))
    if key == "usage" and isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if not isinstance(v, dict))
    if key == "metadata" and isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if key == "errors" and isinstance(value, dict):
        return "\n".join(
            f"line {e.get('line')}: {e.get('code')}: {e.get('message')}"
            if e.get("line") is not None else f"{e.get('code')}: {e.get('message')}"
            for e in value.get("data") or [] if isinstance(e, dict)
        )
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def show_object(obj: dict[str, Any], first: Iterable[str] = ()) -> None:
    """One object as key / value rows: ``first`` keys in that order, then the rest;
    keys without a value are left out."""
    table = Table(box=box.SIMPLE, show_header=False, show_edge=False, pad_edge=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    keys = [k for k in first if k in obj] + [k for k in obj if k not in set(first)]
    for key in keys:
        if obj[key] is not None:
            table.add_row(key, _value(key, obj[key]))
    stdout().print(table)
