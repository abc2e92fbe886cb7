"""``barge webhooks``: the endpoints a Barge server calls when batches end
(``/v1/admin/webhooks``)."""

from __future__ import annotations

import click

from barge.client import render
from barge.client.http import Client
from barge.client.options import client_command, json_option


def _events(_ctx: click.Context, _param: click.Parameter,
            value: str | None) -> list[str] | None:
    if value is None:
        return None
    events = [e.strip() for e in value.split(",") if e.strip()]
    if not events:
        raise click.BadParameter("name at least one event")
    return events


@click.group()
def webhooks() -> None:
    """Add, list and remove the webhook endpoints of a Barge server."""


@webhooks.command("add")
@click.argument("url")
@click.option("--events", callback=_events, default=None, metavar="EVENT,…",
              help="Comma-separated events to send, such as batch.completed,batch.failed "
                   "(default: the server's).")
@json_option
@client_command
def webhooks_add(client: Client, url: str, events: list[str] | None, as_json: bool) -> None:
    """Add a webhook endpoint; prints its id and its signing secret, shown only now."""
    hook = client.add_webhook(url, events)
    if as_json:
        render.print_json(hook)
        return
    shown = ", ".join(str(e) for e in hook.get("events") or [])
    click.echo(f"added {hook['id']} for {hook.get('url')} ({shown})", err=True)
    click.echo("its signing secret, shown only now (verify each delivery with it):", err=True)
    click.echo(hook.get("secret", ""))


@webhooks.command("list")
@json_option
@client_command
def webhooks_list(client: Client, as_json: bool) -> None:
    """List the webhook endpoints (never their secrets)."""
    page = client.list_webhooks()
    if as_json:
        render.print_json(page)
    else:
        render.show_webhooks(page.get("data") or [])


@webhooks.command("rm")
@click.argument("webhook_id")
@json_option
@client_command
def webhooks_rm(client: Client, webhook_id: str, as_json: bool) -> None:
    """Remove a webhook endpoint."""
    answer = client.delete_webhook(webhook_id)
    if as_json:
        render.print_json(answer)
    else:
        click.echo(f"removed {answer.get('id', webhook_id)}")
