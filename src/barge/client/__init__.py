"""``barge submit``, ``barge batches``, ``barge files``, ``barge webhooks``: commands that
drive any Barge server over HTTP, through the OpenAI Files and Batch APIs it serves.

    http.py      Client: one aiohttp session behind plain (blocking) methods; ApiError
    results.py   downloading a batch's output and error files
    progress.py  waiting for a batch: a rich progress bar on a terminal, plain lines else
    render.py    rich tables, and the raw JSON for --json
    options.py   --base-url / --api-key, and the client each command gets
    submit.py    barge submit
    commands.py  barge batches / barge files
    webhooks.py  barge webhooks
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute"; imported when the command runs (or help lists it).
COMMANDS = {
    "submit": "barge.client.submit:submit",
    "batches": "barge.client.commands:batches",
    "files": "barge.client.commands:files",
    "webhooks": "barge.client.webhooks:webhooks",
}


class WithClientCommands(click.Group):
    """A group that also has the client commands, loaded only when one is asked for, so
    that ``barge serve`` and ``barge worker`` never import the client and rich (~2.5 MiB
    of a server's resident memory)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, attribute = COMMANDS[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)
