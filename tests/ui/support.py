"""What the dashboard tests share: the server under test, and what a page did."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from barge_process import BargeProcess
from openai import OpenAI


@dataclass
class Dashboard:
    """The server under test: its root URL and an SDK client with the admin key."""

    barge: BargeProcess
    client: OpenAI

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.barge.port}"


@dataclass
class Watch:
    """What a page did: every request's URL, and the errors on its console."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def outside(self) -> list[str]:
        """Requests to anywhere but this machine's loopback server (Blob URLs are local)."""
        return [u for u in self.requests
                if urlsplit(u).scheme not in ("blob", "data")
                and urlsplit(u).hostname != "127.0.0.1"]

    def unexpected_errors(self) -> list[str]:
        # Chromium logs every non-2xx fetch as "Failed to load resource": a 401 for a wrong
        # key, a 404 for a missing optional route, are expected answers, not page errors.
        return [e for e in self.console_errors if not e.startswith("Failed to load resource")]
