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

import click


def register(cli: click.Group) -> None:
    """Add the client commands to ``cli``."""
    from barge.client.commands import batches, files
    from barge.client.submit import submit
    from barge.client.webhooks import webhooks

    for command in (submit, batches, files, webhooks):
        cli.add_command(command)
