"""Runs the web app under uvicorn; SIGTERM/SIGINT shut it down gracefully."""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

from barge.api.server import create_app
from barge.settings import Settings


def run(settings: Settings, *, log_level: str = "info") -> None:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="auto",  # uvloop where installed
        http="auto",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace)),
        lifespan="on",
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again
    # under the handlers it found at start; these make that a clean exit with status 0.
    signal.signal(signal.SIGTERM, _after_shutdown)
    signal.signal(signal.SIGINT, _after_shutdown)
    uvicorn.Server(config).run()


def _after_shutdown(signum: int, frame: FrameType | None) -> None:
    """The re-raised signal arrives after shutdown has finished: nothing is left to do."""
