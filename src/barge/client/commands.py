"""``barge batches`` and ``barge files``: the Batch and Files APIs from the shell. Tables
for people; ``--json`` prints the server's answer as it is, for scripts."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from barge.client import render
from barge.client.http import ApiError, Client
from barge.client.options import client_command, json_option
from barge.client.results import download_results

FOLLOW_RETRIES = 10  # failed looks in a row --follow rides out (a server restarting)


@click.group()
def batches() -> None:
    """List, inspect, cancel, delete, retry and download batches on a Barge server, and
    read their results as they come."""


def _print_page(page: dict[str, Any], show: Callable[[Iterable[dict[str, Any]]], None],
                as_json: bool) -> None:
    """A list page: the API's JSON, or its rows shown and where the next page starts."""
    if as_json:
        render.print_json(page)
        return
    items = page.get("data") or []
    show(items)
    if page.get("has_more") and items:
        click.echo(f"more: --after {items[-1]['id']}", err=True)


@batches.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True,
              help="Most batches to list (newest first).")
@click.option("--after", default=None, help="List those after this batch id (next page).")
@json_option
@client_command
def batches_list(client: Client, limit: int, after: str | None, as_json: bool) -> None:
    """List batches, newest first."""
    page = client.list_batches(limit=limit, after=after)
    _print_page(page, render.show_batches, as_json)


@batches.command("get")
@click.argument("batch_id")
@json_option
@client_command
def batches_get(client: Client, batch_id: str, as_json: bool) -> None:
    """Show one batch."""
    batch = client.get_batch(batch_id)
    if as_json:
        render.print_json(batch)
    else:
        render.show_object(batch, render.BATCH_FIELDS)


@batches.command("cancel")
@click.argument("batch_id")
@json_option
@client_command
def batches_cancel(client: Client, batch_id: str, as_json: bool) -> None:
    """Cancel a batch (the results it has are kept)."""
    batch = client.cancel_batch(batch_id)
    if as_json:
        render.print_json(batch)
    else:
        click.echo(f"{batch['id']} {batch['status']}")


@batches.command("delete")
@click.argument("batch_id")
@json_option
@client_command
def batches_delete(client: Client, batch_id: str, as_json: bool) -> None:
    """Delete a finished batch, with its output and error files."""
    answer = client.delete_batch(batch_id)
    if as_json:
        render.print_json(answer)
    else:
        click.echo(f"deleted {answer.get('id', batch_id)}")


@batches.command("results")
@click.argument("batch_id")
@click.option("--after", default=None,
              help="Start after this cursor (a 'next:' value printed before), or "
                   "'latest' for what is recorded from now on; default: from the first "
                   "result.")
@click.option("--follow", is_flag=True,
              help="Keep reading as results come, until the batch has ended and every "
                   "result is printed.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=None,
              help="Results asked for per request (the server's default: 1,000).")
@click.option("--interval", type=click.FloatRange(0.05, 3600), default=1.0,
              show_default=True, help="Seconds between looks for new results (--follow).")
@client_command
def batches_results(client: Client, batch_id: str, after: str | None, follow: bool,
                    limit: int | None, interval: float) -> None:
    """Print a batch's results so far as JSON Lines (the output and error files' lines,
    in the order they were recorded), even while it runs. Without --follow, prints what
    there is and the cursor to go on from (on stderr)."""
    out = sys.stdout.buffer
    cursor, failures = after, 0
    while True:
        try:
            body, next_after = client.results_page(batch_id, after=cursor, limit=limit)
        except ApiError as e:
            if not (follow and e.transient) or failures >= FOLLOW_RETRIES:
                raise
            failures += 1  # the server restarts, say: the cursor still holds
            time.sleep(min(interval * 2 ** failures, 30.0))
            continue
        failures = 0
        out.write(body)
        out.flush()
        if next_after == "":
            return
        if not body:
            if not follow:
                click.echo(f"next: --after {next_after}", err=True)
                return
            time.sleep(interval)
        cursor = next_after


@batches.command("retry")
@click.argument("batch_id")
@json_option
@client_command
def batches_retry(client: Client, batch_id: str, as_json: bool) -> None:
    """Create a new batch of an ended batch's requests that did not succeed (failed,
    expired or never run), and print its id."""
    batch = client.retry_batch(batch_id)
    if as_json:
        render.print_json(batch)
    else:
        click.echo(batch["id"])


@batches.command("download")
@click.argument("batch_id")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to put the output file (default: BATCH_ID.output.jsonl).")
@click.option("--errors", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to put the error file (default: BATCH_ID.errors.jsonl).")
@client_command
def batches_download(client: Client, batch_id: str, output: Path | None,
                     errors: Path | None) -> None:
    """Download a batch's output and error files (those it has); exit 1 when it has
    neither yet."""
    batch = client.get_batch(batch_id)
    if not download_results(client, batch, output, errors):
        click.echo(f"barge: {batch_id} has no output or error file ({batch['status']})",
                   err=True)
        sys.exit(1)


@click.group()
def files() -> None:
    """List, upload, download and delete files on a Barge server."""


@files.command("list")
@click.option("--purpose", default=None, help="Only files of this purpose.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=None,
              help="Most files to list (newest first).")
@click.option("--after", default=None, help="List those after this file id (next page).")
@json_option
@client_command
def files_list(client: Client, purpose: str | None, limit: int | None, after: str | None,
               as_json: bool) -> None:
    """List files, newest first."""
    page = client.list_files(purpose=purpose, limit=limit, after=after)
    _print_page(page, render.show_files, as_json)


@files.command("get")
@click.argument("file_id")
@json_option
@client_command
def files_get(client: Client, file_id: str, as_json: bool) -> None:
    """Show one file's details."""
    f = client.get_file(file_id)
    if as_json:
        render.print_json(f)
    else:
        render.show_object(f, ("id", "filename", "purpose", "bytes"))


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, readable=True,
                                        path_type=Path))
@click.option("--purpose", default="batch", show_default=True)
@json_option
@client_command
def files_upload(client: Client, path: Path, purpose: str, as_json: bool) -> None:
    """Upload a file and print its id."""
    f = client.upload(path, purpose)
    if as_json:
        render.print_json(f)
    else:
        click.echo(f["id"])


@files.command("download")
@click.argument("file_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write it here (complete, or not at all) rather than to stdout.")
@client_command
def files_download(client: Client, file_id: str, output: Path | None) -> None:
    """Download a file's content: to --output, else to stdout."""
    if output is None:
        out = sys.stdout.buffer
        client.download_to(file_id, out.write)
        out.flush()
        return
    got = client.download(file_id, output)
    click.echo(f"wrote {got.bytes:,} bytes to {output}", err=True)


@files.command("delete")
@click.argument("file_id")
@json_option
@client_command
def files_delete(client: Client, file_id: str, as_json: bool) -> None:
    """Delete a file."""
    answer = client.delete_file(file_id)
    if as_json:
        render.print_json(answer)
    else:
        click.echo(f"deleted {answer.get('id', file_id)}")
