"""Runs the web app under uvicorn; SIGTERM/SIGINT shut it down gracefully."""

from __future__ import annotations

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
    uvicorn.Server(config).run()
