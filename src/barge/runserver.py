"""Runs the web app under uvicorn; SIGTERM/SIGINT shut it down gracefully."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from barge.api.protocol import protocol_class
from barge.api.server import create_app
from barge.settings import Settings

log = logging.getLogger("barge")

FD_MARGIN = 256  # descriptors beyond the client connections: files, the database, upstream


def run(settings: Settings, *, log_level: str = "info",
        sock: socket.socket | None = None, web: ASGIApp | None = None) -> None:
    """Serve ``web`` (default: the API) until SIGTERM/SIGINT; on ``sock`` when given
    (bound by the caller, so that a port in use was refused before anything started).
    Exits 1 if start-up failed."""
    _raise_fd_limit(settings.max_connections + settings.upstream_concurrency + FD_MARGIN)
    config = uvicorn.Config(
        create_app(settings) if web is None else web,
        host=settings.host,
        port=settings.port,
        loop="auto",  # uvloop where installed
        http=protocol_class(settings),  # httptools where installed, with Barge's limits
        ws="none",
        log_level=log_level,
        # uvicorn's loggers get no handlers of their own: their records go up to the
        # root logger, in the format ``barge.logs.setup_logging`` chose (text or JSON).
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace)),
        timeout_keep_alive=settings.keep_alive_timeout,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        lifespan="on",
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again
    # under the handlers it found at start; these make that a clean exit with status 0.
    signal.signal(signal.SIGTERM, _after_shutdown)
    signal.signal(signal.SIGINT, _after_shutdown)
    server = uvicorn.Server(config)
    server.run(sockets=None if sock is None else [sock])
    if not server.started:
        sys.exit(1)


def _raise_fd_limit(wanted: int) -> None:
    """Raise the soft limit on open files to the hard one, and say so when even that
    leaves too few for ``--max-connections``."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. macOS caps the soft limit lower
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("the open-file limit is %d, below the %d that --max-connections and "
                    "--upstream-concurrency may need; lower --max-connections or raise "
                    "the limit (ulimit -n)", soft, wanted)


def _after_shutdown(signum: int, frame: FrameType | None) -> None:
    """The re-raised signal arrives after shutdown has finished: nothing is left to do."""
