"""Waiting for a batch to end, showing how it goes: a rich progress bar on a terminal
(done/total, rate, ETA, failed), one plain line every few seconds elsewhere (CI, pipes).

Ctrl-C while waiting on a terminal asks whether to cancel the batch, then keeps waiting;
a second Ctrl-C, or the first without a terminal, stops waiting (``Detached``)."""

from __future__ import annotations

import time
from typing import Any, Protocol

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from barge.client.http import ApiError, Client
from barge.client.render import duration

TERMINAL = ("completed", "failed", "expired", "cancelled")
PATIENCE = 120.0  # seconds a server may stay unreachable (or 5xx) while we wait


def numbers(batch: dict[str, Any]) -> tuple[int, int, int]:
    """done (completed + failed), failed and total requests."""
    rc = batch.get("request_counts") or {}
    completed, failed, total = (int(rc.get(k) or 0) for k in ("completed", "failed", "total"))
    return completed + failed, failed, total


def eta_seconds(batch: dict[str, Any]) -> float | None:
    """Seconds to go by the server's ``barge_eta`` (None when it has none)."""
    eta = batch.get("barge_eta")
    if not isinstance(eta, int | float) or isinstance(eta, bool):
        return None
    return max(0.0, eta - time.time())


class View(Protocol):
    def update(self, batch: dict[str, Any]) -> None: ...
    def note(self, message: str) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def close(self) -> None: ...


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("" if speed is None else f"{speed:.1f}/s", style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        eta = task.fields.get("eta")
        if eta is None and task.total:
            eta = task.time_remaining
        shown = "-:--" if eta is None else duration(eta)
        return Text(f"ETA {shown}", style="progress.remaining")


class RichView:
    """A progress bar on stderr, redrawn a few times a second."""

    def __init__(self, batch: dict[str, Any], console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            _RateColumn(),
            _EtaColumn(),
            TimeElapsedColumn(),
            console=console, refresh_per_second=5, redirect_stdout=False,
        )
        self._task = self._progress.add_task(str(batch.get("status")), total=None,
                                             failed=0, eta=None)
        self._progress.start()
        self._shown = True
        self.update(batch)

    def update(self, batch: dict[str, Any]) -> None:
        done, failed, total = numbers(batch)
        self._progress.update(self._task, description=str(batch.get("status")),
                              completed=done, total=total or None, failed=failed,
                              eta=eta_seconds(batch))

    def note(self, message: str) -> None:
        self._progress.console.print(message, markup=False, highlight=False)

    def pause(self) -> None:
        if self._shown:
            self._progress.stop()
            self._shown = False

    def resume(self) -> None:
        if not self._shown:
            self._progress.start()
            self._shown = True

    def close(self) -> None:
        if self._shown:
            self._progress.refresh()
        self.pause()


class PlainView:
    """One line on stderr when the status changes, else every ``interval`` seconds."""

    def __init__(self, batch: dict[str, Any], interval: float) -> None:
        self._interval = interval
        self._last_at = float("-inf")
        self._last_status: str | None = None
        self._first: tuple[float, int] | None = None  # (when, done) at the first look in_progress
        self.update(batch)

    def _rate(self, now: float, done: int) -> float | None:
        if self._first is None or now - self._first[0] < 0.5:
            return None
        return (done - self._first[1]) / (now - self._first[0])

    def update(self, batch: dict[str, Any]) -> None:
        now = time.monotonic()
        status = str(batch.get("status"))
        done, failed, total = numbers(batch)
        if status == "in_progress" and self._first is None:
            self._first = (now, done)
        if status == self._last_status and now - self._last_at < self._interval:
            return
        self._last_at, self._last_status = now, status
        line = f"{batch.get('id')}: {status}, {done}/{total} done, {failed} failed"
        if status not in TERMINAL:
            rate = self._rate(now, done)
            if rate is not None:
                line += f", {rate:.1f}/s"
            eta = eta_seconds(batch)
            if eta is not None:
                line += f", ETA {duration(eta)}"
        click.echo(line, err=True)

    def note(self, message: str) -> None:
        click.echo(message, err=True)

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def close(self) -> None:
        pass


class Detached(Exception):
    """The user stopped waiting; the batch (as last seen) goes on, or is being cancelled."""

    def __init__(self, batch: dict[str, Any]) -> None:
        super().__init__(batch.get("id"))
        self.batch = batch


def _ask_to_cancel(client: Client, batch: dict[str, Any], view: View) -> dict[str, Any]:
    """After a first Ctrl-C: ask, cancel on yes; the batch as it now is. Ctrl-C or the end
    of input at the prompt stops waiting."""
    view.pause()
    try:
        if click.confirm(f"Cancel {batch['id']}?", default=False, err=True):
            batch = client.cancel_batch(batch["id"])
            view.note(f"cancelling {batch['id']}; waiting for it to end "
                      "(Ctrl-C again to stop waiting)")
        else:
            view.note(f"{batch['id']} goes on (Ctrl-C again to stop waiting)")
    except (click.Abort, KeyboardInterrupt):
        raise Detached(batch) from None
    view.resume()
    return batch


def wait(client: Client, batch: dict[str, Any], view: View, *, poll: float,
         ask: bool) -> dict[str, Any]:
    """Poll the batch every ``poll`` seconds until it ends; the last Batch object. ``ask``:
    on Ctrl-C, offer to cancel it (a terminal is at hand); else Ctrl-C stops waiting."""
    interrupted = False
    failing_since: float | None = None
    while batch["status"] not in TERMINAL:
        try:
            time.sleep(poll)
            try:
                batch = client.get_batch(batch["id"])
            except ApiError as e:
                now = time.monotonic()
                if not e.transient or (failing_since is not None
                                       and now - failing_since > PATIENCE):
                    raise
                if failing_since is None:
                    failing_since = now
                    view.note(f"barge: {e.message}; trying again")
                continue
            failing_since = None
            view.update(batch)
        except KeyboardInterrupt:
            if interrupted or not ask:
                raise Detached(batch) from None
            interrupted = True
            batch = _ask_to_cancel(client, batch, view)
            view.update(batch)
    return batch
