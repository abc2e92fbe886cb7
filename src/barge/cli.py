"""``barge``: serve, worker, keys, db, demo. Every flag can also come from a ``BARGE_*``
variable."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from barge.client import WithClientCommands
from barge.exceptions import BargeError
from barge.keys import create_key
from barge.logs import LOG_FORMATS, LogFormat, setup_logging, tell
from barge.settings import DEFAULT_ENDPOINTS, Settings
from barge.store.protocol import Store
from barge.store.sqlite import SQLiteStore

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def data_dir_option(f: F) -> F:
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path),
        default=Path("./barge-data"), show_default=True, envvar="BARGE_DATA_DIR",
        show_envvar=True, help="Where the database, files and work in progress live.",
    )(f)


def server_options(f: F) -> F:
    d = Settings()
    options = [
        click.option("--host", default=d.host, show_default=True, envvar="BARGE_HOST",
                     show_envvar=True, help="Address to listen on."),
        click.option("--port", type=click.IntRange(1, 65535), default=d.port, show_default=True,
                     envvar="BARGE_PORT", show_envvar=True, help="Port to listen on."),
        data_dir_option,
        click.option("--upstream", default=d.upstream, show_default=True,
                     envvar="BARGE_UPSTREAM", show_envvar=True,
                     help="Base URL of the OpenAI-compatible upstream, ending in /v1."),
        click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, envvar="BARGE_CONFIG", show_envvar=True,
                     help="A TOML file listing the upstreams, one [[upstream]] table each "
                          "(name, url, models, api_key_env, concurrency, ...); it replaces "
                          "--upstream, --upstream-api-key and --upstream-concurrency."),
        click.option("--upstream-probe-interval", type=click.FloatRange(0.0),
                     default=d.upstream_probe_interval, show_default=True,
                     envvar="BARGE_UPSTREAM_PROBE_INTERVAL", show_envvar=True,
                     help="Seconds between checks that the upstream answers (GET /models, "
                          "shown in /healthz); 0 turns them off."),
        click.option("--upstream-api-key", default=None, envvar="BARGE_UPSTREAM_API_KEY",
                     show_envvar=True, help="Bearer key sent to the upstream, if it needs one."),
        click.option("--upstream-concurrency", type=click.IntRange(1, 100_000),
                     default=d.upstream_concurrency, show_default=True,
                     envvar="BARGE_UPSTREAM_CONCURRENCY", show_envvar=True,
                     help="Most requests in flight to the upstream at once."),
        click.option("--upstream-timeout", type=click.FloatRange(0.1), default=d.upstream_timeout,
                     show_default=True, envvar="BARGE_UPSTREAM_TIMEOUT", show_envvar=True,
                     help="Seconds one upstream attempt may take."),
        click.option("--max-attempts", type=click.IntRange(1, 100), default=d.max_attempts,
                     show_default=True, envvar="BARGE_MAX_ATTEMPTS", show_envvar=True,
                     help="Attempts per request, the first included."),
        click.option("--backoff-base", type=click.FloatRange(0.0), default=d.backoff_base,
                     show_default=True, envvar="BARGE_BACKOFF_BASE", show_envvar=True,
                     help="Seconds; retry n waits up to base * 2**(n-1), with full jitter."),
        click.option("--max-response-bytes", type=click.IntRange(1),
                     default=d.max_response_bytes, show_default=True,
                     envvar="BARGE_MAX_RESPONSE_BYTES", show_envvar=True,
                     help="Largest upstream answer, in bytes after decompression; a larger "
                          "one fails its request (upstream_response_too_large)."),
        click.option("--dispatch-processes", type=click.IntRange(0, 64),
                     default=d.dispatch_processes, show_default=True,
                     envvar="BARGE_DISPATCH_PROCESSES", show_envvar=True,
                     help="Helper processes that make the upstream requests, so the HTTP "
                          "work runs on more cores than the engine's one; 0: the engine "
                          "makes them itself."),
        click.option("--endpoints", default=",".join(DEFAULT_ENDPOINTS), show_default=True,
                     envvar="BARGE_ENDPOINTS", show_envvar=True,
                     help="Comma-separated endpoints a batch may target."),
        click.option("--completion-windows", default="24h", show_default=True,
                     envvar="BARGE_COMPLETION_WINDOWS", show_envvar=True,
                     help="Comma-separated completion windows accepted (e.g. 24h,1h,90s)."),
        click.option("--max-requests", type=click.IntRange(1), default=d.max_requests,
                     show_default=True, envvar="BARGE_MAX_REQUESTS", show_envvar=True,
                     help="Most requests in one input file."),
        click.option("--max-file-bytes", type=click.IntRange(1), default=d.max_file_bytes,
                     show_default=True, envvar="BARGE_MAX_FILE_BYTES", show_envvar=True,
                     help="Largest upload, in bytes."),
        click.option("--max-active-batches", type=click.IntRange(1),
                     default=d.max_active_batches, show_default=True,
                     envvar="BARGE_MAX_ACTIVE_BATCHES", show_envvar=True,
                     help="Most batches validating or sending requests at once; the rest "
                          "wait, slots going to the account with the fewest running (an "
                          "account with none running always gets one)."),
        click.option("--max-active-batches-per-account", type=click.IntRange(1),
                     default=d.max_active_batches_per_account, show_default=True,
                     envvar="BARGE_MAX_ACTIVE_BATCHES_PER_ACCOUNT", show_envvar=True,
                     help="Most of one account's batches running at once; its others wait "
                          "in creation order."),
        click.option("--shutdown-grace", type=click.FloatRange(0.0), default=d.shutdown_grace,
                     show_default=True, envvar="BARGE_SHUTDOWN_GRACE", show_envvar=True,
                     help="Seconds in-flight requests get to finish on SIGTERM."),
        click.option("--download-url-ttl", type=click.IntRange(1, 7 * 86400),
                     default=d.download_url_ttl, show_default=True,
                     envvar="BARGE_DOWNLOAD_URL_TTL", show_envvar=True,
                     help="Seconds a batch's temporary download link stays valid."),
        click.option("--signing-secret", default=None, envvar="BARGE_SIGNING_SECRET",
                     show_envvar=True,
                     help="Secret that signs download links (default: kept in "
                          "DATA_DIR/signing.key, made on first start)."),
        click.option("--metrics-key", default=None, envvar="BARGE_METRICS_KEY",
                     show_envvar=True,
                     help="A key GET /metrics then requires as 'Authorization: Bearer "
                          "<key>' (default: it needs none)."),
        click.option("--public-url", default=None, envvar="BARGE_PUBLIC_URL", show_envvar=True,
                     help="Base URL clients reach this server at, for the links it hands "
                          "out (default: the host each request came to)."),
        click.option("--max-json-bytes", type=click.IntRange(1), default=d.max_json_bytes,
                     show_default=True, envvar="BARGE_MAX_JSON_BYTES", show_envvar=True,
                     help="Largest JSON request body, in bytes (a larger one gets 413)."),
        click.option("--max-header-bytes", type=click.IntRange(256),
                     default=d.max_header_bytes, show_default=True,
                     envvar="BARGE_MAX_HEADER_BYTES", show_envvar=True,
                     help="Largest request line and headers, in bytes (431 beyond)."),
        click.option("--max-connections", type=click.IntRange(1), default=d.max_connections,
                     show_default=True, envvar="BARGE_MAX_CONNECTIONS", show_envvar=True,
                     help="Most open client connections; past it the oldest idle one is "
                          "closed, or the new one refused when none is idle."),
        click.option("--header-timeout", type=click.FloatRange(0.01),
                     default=d.header_timeout, show_default=True,
                     envvar="BARGE_HEADER_TIMEOUT", show_envvar=True,
                     help="Seconds a connection gets to send a request's headers, from its "
                          "start or from the first byte of a later request."),
        click.option("--keep-alive-timeout", type=click.IntRange(1),
                     default=d.keep_alive_timeout, show_default=True,
                     envvar="BARGE_KEEP_ALIVE_TIMEOUT", show_envvar=True,
                     help="Seconds an idle keep-alive connection stays open."),
        click.option("--log-level", default="info", show_default=True,
                     envvar="BARGE_LOG_LEVEL", show_envvar=True,
                     type=click.Choice(["debug", "info", "warning", "error"])),
        click.option("--log-format", default="text", show_default=True,
                     envvar="BARGE_LOG_FORMAT", show_envvar=True,
                     type=click.Choice(LOG_FORMATS),
                     help="text: lines for people; json: one JSON object per line (ts, "
                          "level, logger, message, and event, batch_id, account when "
                          "the line has them), uvicorn's lines too."),
        *webhook_options(d),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def webhook_options(d: Settings) -> list[Callable[[F], F]]:
    """How batch events reach the webhook endpoints accounts register."""
    return [
        click.option("--webhook-allow-private", is_flag=True,
                     envvar="BARGE_WEBHOOK_ALLOW_PRIVATE", show_envvar=True,
                     help="Let webhook endpoints be on private, loopback, link-local and "
                          "other non-public addresses (refused by default, at registration "
                          "and at every delivery)."),
        click.option("--webhook-timeout", type=click.FloatRange(0.1, 300.0),
                     default=d.webhook_timeout, show_default=True,
                     envvar="BARGE_WEBHOOK_TIMEOUT", show_envvar=True,
                     help="Seconds one webhook delivery attempt may take."),
        click.option("--webhook-concurrency", type=click.IntRange(1, 1000),
                     default=d.webhook_concurrency, show_default=True,
                     envvar="BARGE_WEBHOOK_CONCURRENCY", show_envvar=True,
                     help="Webhook deliveries in flight at once, on each node."),
        click.option("--webhook-retry-hours", type=click.FloatRange(24.0, 720.0),
                     default=d.webhook_retry_hours, show_default=True,
                     envvar="BARGE_WEBHOOK_RETRY_HOURS", show_envvar=True,
                     help="Hours a failing webhook delivery is tried again (1, 2, 4 ... "
                          "seconds apart, at most an hour) before it is given up."),
        click.option("--webhook-backoff-base", type=click.FloatRange(0.001, 60.0),
                     default=d.webhook_backoff_base, envvar="BARGE_WEBHOOK_BACKOFF_BASE",
                     hidden=True,
                     help="Seconds before a failed webhook delivery's first retry (tests)."),
    ]


def shared_options(f: F) -> F:
    """Where many nodes keep what they share: the database and the blob store."""
    d = Settings()
    options = [
        click.option("--database-url", default=None, envvar="BARGE_DATABASE_URL",
                     show_envvar=True,
                     help="Keep state in this shared PostgreSQL database "
                          "(postgresql://user:password@host:port/name) instead of "
                          "DATA_DIR/barge.db; needs --blob-url."),
        click.option("--database-schema", default=None, envvar="BARGE_DATABASE_SCHEMA",
                     show_envvar=True,
                     help="Keep Barge's tables in this PostgreSQL schema (made if missing)."),
        click.option("--blob-url", default=None, envvar="BARGE_BLOB_URL", show_envvar=True,
                     help="Keep file bytes in this S3 bucket (s3://bucket/prefix; endpoint "
                          "and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                          "AWS_SECRET_ACCESS_KEY, AWS_REGION); needs --database-url."),
        click.option("--blob-part-concurrency", type=click.IntRange(1, 64),
                     default=d.blob_part_concurrency, show_default=True,
                     envvar="BARGE_BLOB_PART_CONCURRENCY", show_envvar=True,
                     help="Parts of one S3 upload in flight at once; each "
                          "holds about 10 MiB of memory while it goes."),
        click.option("--lease-seconds", type=click.FloatRange(0.0, min_open=True),
                     default=d.lease_seconds, show_default=True,
                     envvar="BARGE_LEASE_SECONDS", show_envvar=True,
                     help="Seconds a node's claim on work lasts unless renewed; the work "
                          "of a node gone silent this long passes to another."),
        click.option("--slice-lines", type=click.IntRange(1, 1_000_000),
                     default=d.slice_lines, show_default=True, envvar="BARGE_SLICE_LINES",
                     show_envvar=True,
                     help="Input lines per unit of work: what one node claims at a time, "
                          "and resumes from after a crash."),
        click.option("--node-name", default=None, envvar="BARGE_NODE_NAME", show_envvar=True,
                     help="This node's name among those sharing the database (default: "
                          "hostname-pid-<4 random hex>)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _upstream_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The Settings fields about upstreams: from ``--config`` when given (a file that
    cannot be used is a BargeError), else from the ``--upstream*`` flags."""
    config: Path | None = options.get("config")
    if config is None:
        return {"upstream": options["upstream"],
                "upstream_api_key": options["upstream_api_key"],
                "upstream_concurrency": options["upstream_concurrency"]}
    from barge.upstreams.config import load_config

    specs = load_config(config)
    ctx = click.get_current_context(silent=True)
    explicit = [
        f"--{name.replace('_', '-')}"
        for name in ("upstream", "upstream_api_key", "upstream_concurrency")
        if ctx is not None and ctx.get_parameter_source(name) in (
            ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    ]
    if explicit:
        logging.getLogger("barge").warning(
            "--config %s lists the upstreams: %s ignored", config, ", ".join(explicit))
    return {"upstreams": specs,
            "upstream": specs[0].url,
            "upstream_api_key": specs[0].api_key,
            "upstream_concurrency": sum(spec.concurrency for spec in specs)}


def settings_from(options: dict[str, Any], admin_key: str | None) -> Settings:
    return Settings(
        data_dir=options["data_dir"],
        host=options["host"],
        port=options["port"],
        **_upstream_settings(options),
        upstream_probe_interval=options["upstream_probe_interval"],
        upstream_timeout=options["upstream_timeout"],
        max_attempts=options["max_attempts"],
        backoff_base=options["backoff_base"],
        max_response_bytes=options["max_response_bytes"],
        dispatch_processes=options["dispatch_processes"],
        endpoints=_csv(options["endpoints"]),
        completion_windows=_csv(options["completion_windows"]),
        max_requests=options["max_requests"],
        max_file_bytes=options["max_file_bytes"],
        shutdown_grace=options["shutdown_grace"],
        max_active_batches=options["max_active_batches"],
        max_active_batches_per_account=options["max_active_batches_per_account"],
        admin_key=admin_key,
        signing_secret=options["signing_secret"],
        metrics_key=options["metrics_key"] or None,
        download_url_ttl=options["download_url_ttl"],
        public_url=options["public_url"],
        max_json_bytes=options["max_json_bytes"],
        max_header_bytes=options["max_header_bytes"],
        max_connections=options["max_connections"],
        header_timeout=options["header_timeout"],
        keep_alive_timeout=options["keep_alive_timeout"],
        engine=not options.get("no_engine", False),
        database_url=options["database_url"] or None,
        database_schema=options["database_schema"] or None,
        blob_url=options["blob_url"] or None,
        blob_part_concurrency=options["blob_part_concurrency"],
        lease_seconds=options["lease_seconds"],
        slice_lines=options["slice_lines"],
        node_name=options["node_name"] or None,
        webhook_allow_private=options["webhook_allow_private"],
        webhook_timeout=options["webhook_timeout"],
        webhook_concurrency=options["webhook_concurrency"],
        webhook_retry_hours=options["webhook_retry_hours"],
        webhook_backoff_base=options["webhook_backoff_base"],
    )


def key_store_options(f: F) -> F:
    """Which store ``barge keys`` works on: the data directory's SQLite file, or a
    cluster's shared PostgreSQL database."""
    options = [
        data_dir_option,
        click.option("--database-url", default=None, envvar="BARGE_DATABASE_URL",
                     show_envvar=True,
                     help="Work on the keys of this shared PostgreSQL database "
                          "(postgresql://user:password@host:port/name), the one the "
                          "cluster's nodes run with, instead of DATA_DIR/barge.db."),
        click.option("--database-schema", default=None, envvar="BARGE_DATABASE_SCHEMA",
                     show_envvar=True,
                     help="The PostgreSQL schema the cluster keeps Barge's tables in."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _run_with_store(data_dir: Path, database_url: str | None, database_schema: str | None,
                    work: Callable[[Store], Awaitable[R]]) -> R:
    """Run ``work`` on the store ``key_store_options`` name: PostgreSQL with a database
    URL (brought up to date, like ``barge db upgrade``), else the data directory's
    SQLite file. A database that does not answer ends the command at once."""
    store: Store
    if database_url:
        from barge.startup import check_database_url
        from barge.store.postgres import PostgresStore

        check_database_url(database_url)
        store = PostgresStore(database_url, schema=database_schema or None, max_size=1)
    else:
        store = SQLiteStore(data_dir / "barge.db")

    async def main() -> R:
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _setup_logging(level: str, log_format: LogFormat = "text") -> None:
    setup_logging(level, log_format)


@click.group(cls=WithClientCommands)  # barge submit / batches / files / webhooks
@click.version_option(package_name="barge")
def cli() -> None:
    """Barge: a self-hosted batch API server that speaks the OpenAI Files and Batch APIs."""


def main() -> None:
    """The entry point: Barge's own errors end the command with their message, exit 1.
    Everything Barge writes is private to its user (files 0600, directories 0700),
    whatever the umask it was started with."""
    os.umask(0o077)
    try:
        cli()
    except BargeError as e:
        cause = e.__cause__
        tell(f"barge: {e.message}" + (f" ({cause})" if cause else ""), level=logging.ERROR)
        sys.exit(1)


@cli.command()
@server_options
@shared_options
@click.option("--no-engine", is_flag=True, envvar="BARGE_NO_ENGINE", show_envvar=True,
              help="Answer the API only; the batches run on other nodes (barge worker, or "
                   "barge serve without this flag) sharing --database-url.")
@click.option("--admin-key", default=None, envvar="BARGE_ADMIN_KEY", show_envvar=True,
              help="A key with every permission (never stored).")
def serve(admin_key: str | None, **options: Any) -> None:
    """Run the API server and the batch engine."""
    from barge.memory import tune_allocator
    from barge.runserver import run

    tune_allocator()
    _setup_logging(options["log_level"], options["log_format"])
    settings = settings_from(options, admin_key)
    sock = _checked_start(settings, first_key=admin_key is None)
    run(settings, log_level=options["log_level"], sock=sock)


@cli.command()
@server_options
@shared_options
def worker(**options: Any) -> None:
    """Run the batch engine only, on the shared database and blob store; GET /healthz
    answers on --host/--port."""
    from barge.memory import tune_allocator
    from barge.runserver import run
    from barge.worker import create_worker_app

    tune_allocator()
    _setup_logging(options["log_level"], options["log_format"])
    settings = settings_from(options, None)
    if not settings.shared:
        raise BargeError(
            "barge worker needs --database-url / BARGE_DATABASE_URL and --blob-url / "
            "BARGE_BLOB_URL: a worker runs the engine on the shared database and blob store."
        )
    sock = _checked_start(settings, first_key=False)
    run(settings, log_level=options["log_level"], sock=sock, web=create_worker_app(settings))


def _checked_start(settings: Settings, *, first_key: bool) -> socket.socket:
    """Everything that can stop the start is checked before anything starts, each ending
    the command with one clear line (a BargeError) rather than a traceback; returns the
    socket to serve on. ``first_key``: make an admin key when there is none."""
    from barge.app import claim_engine_lock, prepare_data_dir
    from barge.signing_key import load_signing_secret
    from barge.startup import check_settings, listen_socket

    check_settings(settings)
    prepare_data_dir(settings.data_dir)
    if settings.engine:
        claim_engine_lock(settings.data_dir)
    if not settings.shared or settings.signing_secret is not None:
        load_signing_secret(settings.data_dir, settings.signing_secret)
    sock = listen_socket(settings.host, settings.port)
    try:
        _ensure_first_key(settings, make=first_key)
    except BaseException:
        sock.close()
        raise
    return sock


# The ``use_once`` key that the node making the first admin key holds, and for how many
# seconds: nodes starting at once on an empty database make one key between them. Should
# its holder die before making it, a node starting some minutes later makes one.
FIRST_KEY = "first-admin-key"
FIRST_KEY_CLAIM_SECONDS = 60
FIRST_KEY_WAIT = 10.0  # seconds a node that lost the claim waits to see the key


def _ensure_first_key(settings: Settings, *, make: bool = True) -> None:
    """Open the store (bringing its schema up to date; a shared database that does not
    answer yet is waited for) and, shared, check the blob store; with no admin key and
    no stored key (``make``), make one admin key and print it once. Of nodes starting
    at once on one database, only the one that claims ``FIRST_KEY`` makes it; the others
    say that it exists (or is being made)."""
    from barge.app import make_blobs, make_store, open_blobs, open_store

    async def made_elsewhere(store: Store) -> bool:
        """Whether the key another node claimed to make shows up in FIRST_KEY_WAIT."""
        deadline = time.monotonic() + FIRST_KEY_WAIT
        while not await store.list_keys():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def main() -> str | bool | None:
        """The new key's secret; False/True: another node claimed the making of it, and
        it did not (yet) / did show up; None: nothing to do."""
        store = make_store(settings)
        await open_store(store)
        try:
            if settings.shared:
                await open_blobs(make_blobs(settings))
            if not make or await store.list_keys():
                return None
            if not await store.use_once(
                FIRST_KEY, expires_at=int(time.time()) + FIRST_KEY_CLAIM_SECONDS
            ):
                return await made_elsewhere(store)
            _, secret = await create_key(store, name="first-admin", role="admin",
                                         account="default")
            return secret
        finally:
            await store.close()

    outcome = asyncio.run(main())
    if isinstance(outcome, str):
        tell(
            "No keys yet: created an admin key of account 'default' (shown only now):\n"
            f"  {outcome}\n"
            "Use it as OPENAI_API_KEY with the openai SDK, and as $ADMIN in the README's "
            "admin examples.",
        )
    elif outcome is True:
        tell(
            "An admin key already exists: another node starting at the same time made it "
            "and printed it; none made here.",
        )
    elif outcome is False:
        where = ("this node's --database-url and --database-schema" if settings.shared
                 else "this node's --data-dir")
        tell(
            "No keys yet, and another node is making the first admin key: it prints it. "
            f"If none does, make one with `barge keys create --name admin` (with {where}).",
        )


@cli.command()
@click.option("--url", "--base-url", "url", default="http://127.0.0.1:8080",
              show_default=True, envvar=["BARGE_URL", "BARGE_BASE_URL"], show_envvar=True,
              help="The server to ask (with or without /v1).")
@click.option("--timeout", type=click.FloatRange(0.1), default=5.0, show_default=True,
              help="Seconds to wait for the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the /healthz JSON as it came.")
def check(url: str, timeout: float, as_json: bool) -> None:
    """Ask the server's GET /healthz and print one line per component (store, blob store,
    each upstream): ok, or unreachable and why. Exit 0 when every one can be reached, 1
    when any cannot or the server does not answer."""
    import orjson

    from barge.check import Unanswered, fetch_health, healthz_url, judge

    target = healthz_url(url)
    try:
        health = fetch_health(target, timeout)
    except Unanswered as e:
        click.echo(f"barge: {target} is not healthy: {e}", err=True)
        sys.exit(1)
    verdict = judge(health)
    if as_json:
        click.echo(orjson.dumps(health, option=orjson.OPT_INDENT_2).decode())
    else:
        who = " ".join(str(health[k]) for k in ("role", "node") if health.get(k))
        state = "healthy" if verdict.healthy else "unhealthy"
        click.echo(f"{target}{f' ({who})' if who else ''}: {state}")
        for line in verdict.lines:
            click.echo(f"  {line}")
    sys.exit(0 if verdict.healthy else 1)


@cli.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@key_store_options
@click.option("--name", required=True, help="A label for the key.")
@click.option("--role", default="admin", show_default=True, help="The key's role.")
@click.option("--account", default="default", show_default=True,
              help="The account the key acts for.")
def keys_create(data_dir: Path, database_url: str | None, database_schema: str | None,
                name: str, role: str, account: str) -> None:
    """Create a key; the key itself is the last line printed."""

    async def work(store: Store) -> tuple[str, str]:
        record, secret = await create_key(store, name=name, role=role, account=account)
        return record.id, secret

    key_id, secret = _run_with_store(data_dir, database_url, database_schema, work)
    click.echo(f"created key {key_id} ({name}, role {role}, account {account})")
    click.echo(secret)


@keys.command("list")
@key_store_options
def keys_list(data_dir: Path, database_url: str | None, database_schema: str | None) -> None:
    """List keys (never the secrets)."""
    for k in _run_with_store(data_dir, database_url, database_schema,
                             lambda store: store.list_keys()):
        state = "revoked" if k.revoked_at else "live"
        click.echo(f"{k.id}\t{k.name}\t{k.role}\t{k.account}\t{state}")


@keys.command("revoke")
@key_store_options
@click.argument("key_id")
def keys_revoke(data_dir: Path, database_url: str | None, database_schema: str | None,
                key_id: str) -> None:
    """Revoke a key by its id."""
    _run_with_store(data_dir, database_url, database_schema,
                    lambda store: store.revoke_key(key_id))
    click.echo(f"revoked {key_id}")


@cli.group()
def db() -> None:
    """Manage a PostgreSQL database shared by many nodes."""


@db.command("upgrade")
@click.option("--database-url", required=True, envvar="BARGE_DATABASE_URL", show_envvar=True,
              help="The PostgreSQL database, as postgresql://user:password@host:port/name.")
@click.option("--schema", default=None, envvar="BARGE_DATABASE_SCHEMA", show_envvar=True,
              help="Keep Barge's tables in this PostgreSQL schema (made if missing) rather "
                   "than the connection's default.")
def db_upgrade(database_url: str, schema: str | None) -> None:
    """Apply the migrations the database lacks and print its schema version. Safe to run
    again, and while other nodes start: they wait for one another."""
    from barge.store.postgres import PostgresStore

    async def main() -> PostgresStore:
        store = PostgresStore(database_url, schema=schema, max_size=1)
        await store.open()
        await store.close()
        return store

    store = asyncio.run(main())
    done = (f"applied {', '.join(f'{v:04d}' for v in store.applied)}" if store.applied
            else "already up to date")
    click.echo(f"{store.where}: schema version {store.schema_version} ({done})")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              help="Port to listen on.")
@click.option("--max-delay", type=click.FloatRange(0.0), default=0.05, show_default=True,
              help="Each answer waits a random time up to this many seconds.")
def simulate(host: str, port: int, max_delay: float) -> None:
    """Run a simulated OpenAI-compatible upstream (answers every endpoint at
    http://HOST:PORT/v1), to try Barge without a model server."""
    from aiohttp import web

    from barge.simulator import simulator_app

    click.echo(f"simulated upstream on http://{host}:{port}/v1", err=True)
    web.run_app(simulator_app(max_delay), host=host, port=port, print=None,
                access_log=None)


@cli.command()
@click.option("--requests", "n", type=click.IntRange(1, 50_000), default=200, show_default=True,
              help="How many requests the example batch holds.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the demo's data here (default: a temporary folder).")
@click.option("--keep-running", is_flag=True,
              help="Afterwards leave Barge and the simulated upstream running, and print "
                   "how to use them from another terminal, until Ctrl-C or SIGTERM.")
def demo(n: int, data_dir: Path | None, keep_running: bool) -> None:
    """Run a server and a simulated upstream, submit an example batch, show the results."""
    from barge.demo import run_demo

    run_demo(n, data_dir, keep_running)


if __name__ == "__main__":
    main()
