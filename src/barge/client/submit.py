"""``barge submit FILE``: upload, create the batch, print its id; with ``--wait``, follow
it to its end and download its results."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from barge.client.http import Client
from barge.client.options import INTERRUPTED, client_command
from barge.client.progress import Detached, PlainView, RichView, View, wait
from barge.client.render import counts, stderr
from barge.client.results import download_results

DEFAULT_ENDPOINT = "/v1/chat/completions"


def _metadata(_ctx: click.Context, _param: click.Parameter,
              values: tuple[str, ...]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def _endpoint_of(path: Path) -> str:
    """The ``url`` of the file's first request, when it has one to read."""
    try:
        with path.open("rb") as f:
            for raw in f:
                if raw.strip():
                    url = orjson.loads(raw).get("url")
                    return url if isinstance(url, str) and url else DEFAULT_ENDPOINT
    except (OSError, ValueError, AttributeError):
        pass
    return DEFAULT_ENDPOINT


def _finish(client: Client, batch: dict[str, Any], output: Path | None,
            errors: Path | None) -> int:
    """Download what the finished batch has, say how it ended; its exit status."""
    download_results(client, batch, output, errors)
    status = batch["status"]
    if status == "completed":
        click.echo(f"{batch['id']} completed: {counts(batch)}", err=True)
        return 0
    click.echo(f"barge: {batch['id']} {status}: {counts(batch)}", err=True)
    for e in ((batch.get("errors") or {}).get("data") or [])[:20]:
        where = f"line {e.get('line')}: " if e.get("line") is not None else ""
        click.echo(f"  {where}{e.get('code')}: {e.get('message')}", err=True)
    return 1


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True,
                                        path_type=Path))
@click.option("--endpoint", default=None,
              help="The endpoint every request targets (default: the url of the file's "
                   f"first line, else {DEFAULT_ENDPOINT}).")
@click.option("--window", "completion_window", default="24h", show_default=True,
              help="The completion window: the batch expires after it.")
@click.option("--metadata", multiple=True, callback=_metadata, metavar="KEY=VALUE",
              help="A metadata pair for the batch; repeat for more.")
@click.option("--wait", "wait_", is_flag=True,
              help="Show progress until the batch ends, then download its results; exit 0 "
                   "when it completed, 1 when it failed, expired or was cancelled.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where --wait puts the output file (default: BATCH_ID.output.jsonl); "
                   "implies --wait.")
@click.option("--errors", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where --wait puts the error file (default: BATCH_ID.errors.jsonl); "
                   "implies --wait.")
@click.option("--interval", type=click.FloatRange(0.1), default=5.0, show_default=True,
              help="Seconds between progress lines when stderr is not a terminal.")
@client_command
def submit(client: Client, file: Path, endpoint: str | None, completion_window: str,
           metadata: dict[str, str], wait_: bool, output: Path | None, errors: Path | None,
           interval: float) -> None:
    """Upload FILE (JSONL requests), create a batch of it and print the batch's id (alone
    on stdout: ID=$(barge submit requests.jsonl))."""
    uploaded = client.upload(file, "batch")
    click.echo(f"uploaded {file.name}: {uploaded['id']} ({uploaded.get('bytes', 0):,} bytes)",
               err=True)
    try:
        batch = client.create_batch(uploaded["id"], endpoint or _endpoint_of(file),
                                    completion_window, metadata)
    except BaseException:
        with contextlib.suppress(Exception):  # no batch: the upload would be an orphan
            client.delete_file(uploaded["id"])
        raise
    click.echo(batch["id"])
    sys.stdout.flush()
    if not (wait_ or output or errors):
        return
    console = stderr()
    tty = console.is_terminal
    view: View = RichView(batch, console) if tty else PlainView(batch, interval)
    try:
        batch = wait(client, batch, view, poll=min(interval, 0.5 if tty else 1.0),
                     ask=tty and sys.stdin.isatty())
    except Detached as stop:
        view.close()
        bid = stop.batch["id"]
        if stop.batch.get("status") in ("cancelling", "cancelled"):
            click.echo(f"barge: stopped waiting; {bid} is being cancelled", err=True)
        else:
            click.echo(f"barge: stopped waiting; {bid} keeps running (`barge batches get "
                       f"{bid}` to follow it, `barge batches cancel {bid}` to cancel it)",
                       err=True)
        sys.exit(INTERRUPTED)
    except BaseException:
        view.close()
        raise
    view.close()
    sys.exit(_finish(client, batch, output, errors))
