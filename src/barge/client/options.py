"""What every client command shares: ``--base-url`` and ``--api-key`` (turned into the
Client it gets as first argument), and ``--json``."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from barge.client.http import Client

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
INTERRUPTED = 130  # the exit status of a command ended by Ctrl-C


def client_command(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds ``--base-url`` and ``--api-key``; ``f`` gets the open Client first. Ctrl-C
    ends the command with exit 130 rather than click's "Aborted!" and 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, base_url: str, api_key: str | None, **kwargs: Any) -> Any:
        try:
            with Client(base_url, api_key) as client:
                return f(client, *args, **kwargs)
        except KeyboardInterrupt:
            click.echo("barge: interrupted", err=True)
            sys.exit(INTERRUPTED)

    options = [
        click.option("--base-url", default=DEFAULT_BASE_URL, show_default=True,
                     envvar="BARGE_BASE_URL", show_envvar=True,
                     help="The Barge server, with or without its /v1."),
        click.option("--api-key", default=None, envvar="BARGE_API_KEY", show_envvar=True,
                     help="The API key to send (Authorization: Bearer)."),
    ]
    command: Callable[..., Any] = wrapper
    for option in reversed(options):
        command = option(command)
    return command


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the server's JSON answer as it is.")(f)
