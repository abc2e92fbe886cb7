"""What ``barge serve`` checks before it starts anything, so that a start that cannot
work ends with one clear line (a BargeError) instead of a traceback: settings that make
no sense, a data directory that cannot be used or is already in use, a port that is
taken."""

from __future__ import annotations

import errno
import logging
import socket
from urllib.parse import urlsplit

from barge.domain.validation import window_seconds
from barge.exceptions import BargeError
from barge.settings import Settings
from barge.signing_key import check_signing_secret
from barge.upstreams.client import join_url

log = logging.getLogger("barge")


def check_settings(settings: Settings) -> None:
    """Raise BargeError naming the first setting that cannot work; log the doubtful."""
    check_signing_secret(settings.signing_secret)
    if not settings.upstreams:  # a config file's upstreams were checked as it was read
        check_upstream(settings.upstream)
    check_shared(settings)
    bad = [w for w in settings.completion_windows if window_seconds(w) is None]
    if bad or not settings.completion_windows:
        raise BargeError(
            "--completion-windows / BARGE_COMPLETION_WINDOWS must be a comma-separated list "
            f"of windows such as 24h, 1h or 90s; got {bad[0] if bad else 'none'!r}."
        )
    bad = [e for e in settings.endpoints if not e.startswith("/v1/")]
    if bad or not settings.endpoints:
        raise BargeError(
            "--endpoints / BARGE_ENDPOINTS must be a comma-separated list of endpoints such "
            f"as /v1/chat/completions; got {bad[0] if bad else 'none'!r}."
        )


def check_shared(settings: Settings) -> None:
    """The database and the blob store are shared together or not at all: either alone
    would leave part of what every node needs on one node's disk."""
    if settings.blob_url is not None and settings.database_url is None:
        raise BargeError(
            "--blob-url / BARGE_BLOB_URL needs --database-url / BARGE_DATABASE_URL too: "
            "without a shared database the state would stay in one node's data directory."
        )
    if settings.database_url is not None and settings.blob_url is None:
        raise BargeError(
            "--database-url / BARGE_DATABASE_URL needs --blob-url / BARGE_BLOB_URL too: "
            "without a shared blob store the files would stay on one node's disk."
        )
    if settings.database_url is not None:
        check_database_url(settings.database_url)
    if settings.blob_url is not None:
        parts = urlsplit(settings.blob_url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise BargeError(
                "--blob-url / BARGE_BLOB_URL must be an S3 bucket, like s3://bucket/prefix "
                f"(endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID ...); got "
                f"{settings.blob_url!r}."
            )
    if not settings.lease_seconds > 0:
        raise BargeError(
            f"--lease-seconds / BARGE_LEASE_SECONDS must be above 0; got {settings.lease_seconds}."
        )


def check_database_url(url: str) -> None:
    """A postgresql:// (or postgres://) URL, else BargeError."""
    scheme = url.partition("://")[0].lower()
    if scheme not in ("postgresql", "postgres"):
        raise BargeError(
            "--database-url / BARGE_DATABASE_URL must be a PostgreSQL URL, like "
            "postgresql://user:password@host:5432/barge."
        )


def check_upstream(url: str, *, what: str = "--upstream / BARGE_UPSTREAM") -> None:
    """An http(s) URL with a host, else BargeError; a path not ending in /v1 is allowed
    (some servers mount the API elsewhere) but logged, since it is usually a mistake.
    ``what`` names where the URL came from, in both."""
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a port
    except ValueError as e:
        problem = str(e)
    else:
        if parts.scheme not in ("http", "https"):
            problem = "it must start with http:// or https://"
        elif not parts.hostname:
            problem = "it names no host"
    if problem is not None:
        raise BargeError(
            f"{what} must be an http:// or https:// URL with a host, "
            f"like http://127.0.0.1:8000/v1; got {url!r} ({problem})."
        )
    if not parts.path.rstrip("/").endswith("/v1"):
        log.warning(
            "%s %s does not end in /v1: a batch's /v1/chat/completions requests go "
            "to %s", what, url, join_url(url, "/v1/chat/completions"),
        )


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening), for the server to serve on;
    BargeError when the port is taken, out of range or not ours to use."""
    where = f"{host}:{port}"
    if not 1 <= port <= 65535:
        raise BargeError(f"--port / BARGE_PORT must be 1-65535; got {port}.")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise BargeError(f"Cannot listen on {where}: --host {host!r} is not an address "
                         f"of this machine ({e}).") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            reason = "the port is already in use (is another server running there?)"
        elif e.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges)"
        elif e.errno == errno.EADDRNOTAVAIL:
            reason = "the address is not one of this machine's"
        else:
            reason = e.strerror or str(e)
        raise BargeError(f"Cannot listen on {where}: {reason}; choose another with "
                         "--host/--port (BARGE_HOST/BARGE_PORT).") from None
    return sock
