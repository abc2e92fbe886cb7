"""The composition root: ``App(settings)`` opens the store, blobs, upstream client and
engine, and closes them in reverse. The web app's lifespan owns one."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import socket
import stat
from pathlib import Path
from types import TracebackType
from typing import TextIO

from barge.api.auth import Authenticator
from barge.blobs.local import LocalBlobs
from barge.blobs.protocol import Blobs
from barge.engine.dispatch import Dispatcher, RetryPolicy
from barge.engine.router import Route, Router
from barge.engine.runner import Engine
from barge.engine.webhooks import WebhookSender
from barge.exceptions import BargeError, BlobsUnavailable, StoreUnavailable
from barge.health import ComponentHealth
from barge.metrics import Metrics
from barge.settings import Settings
from barge.signing_key import load_signing_secret
from barge.startup import check_shared
from barge.store.protocol import Store
from barge.store.sqlite import SQLiteStore
from barge.upstreams.health import UpstreamHealth, UpstreamProbe, WatchedUpstreamClient
from barge.upstreams.senders import SenderPool

log = logging.getLogger("barge")


LOCK_FILE = "engine.lock"
SIGNING_SECRET_NAME = "signing"  # the shared secret that signs links, in shared mode
DATABASE_RETRY_SECONDS = 3.0  # between tries to reach a PostgreSQL that does not answer
PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700
_claimed: dict[Path, TextIO] = {}  # locks taken before their App was made, by data dir


def hold_engine_lock(data_dir: Path) -> TextIO:
    """One engine per data directory: two would send every request twice. The lock
    dies with the process, so a crashed engine never blocks its successor. The lock
    file holds the holder's pid, which the refusal names."""
    claimed = _claimed.pop(data_dir.resolve(), None)
    if claimed is not None:
        return claimed
    try:
        handle = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held until close
    except OSError as e:
        raise BargeError(f"Cannot open {data_dir / LOCK_FILE}: {e.strerror}.") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read(32).strip()
        handle.close()
        holder = f" (pid {pid})" if pid.isdigit() else ""
        raise BargeError(
            f"Another barge process runs the engine on {data_dir}{holder}; stop it first."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def claim_engine_lock(data_dir: Path) -> None:
    """Take the data directory's lock now, before anything else starts (``barge serve``
    refuses at once, with one clear line); the App made later in this process takes it
    over."""
    key = data_dir.resolve()
    if key not in _claimed:
        _claimed[key] = hold_engine_lock(data_dir)


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data directory, private to its owner (0700), and make sure it can be
    written; what an older version left readable to others is made private too. Every
    file Barge creates is private as well: ``barge`` runs under umask 077."""
    try:
        data_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    except OSError as e:
        raise BargeError(
            f"Cannot create the data directory {data_dir}: {e.strerror or e}."
        ) from None
    if not data_dir.is_dir():
        raise BargeError(f"The data directory {data_dir} is not a directory.")
    probe = data_dir / f".write-test-{os.getpid()}"
    try:
        probe.touch(mode=PRIVATE_FILE)
        probe.unlink()
    except OSError as e:
        raise BargeError(
            f"The data directory {data_dir} is not writable: {e.strerror or e}."
        ) from None
    make_private(data_dir)


def make_private(root: Path) -> None:
    """Take group and other permissions off ``root`` and everything under it that this
    user owns (directories 0700, files 0600); symbolic links are left alone."""
    uid = os.geteuid()
    for path in (root, *root.rglob("*")):
        try:
            st = path.lstat()
            if st.st_uid != uid or not st.st_mode & 0o077 or stat.S_ISLNK(st.st_mode):
                continue
            os.chmod(path, PRIVATE_DIR if stat.S_ISDIR(st.st_mode) else PRIVATE_FILE)
        except OSError as e:
            log.warning("could not make %s private: %s", path, e.strerror or e)


def node_name(settings: Settings) -> str:
    """This node's name among those sharing the database: ``--node-name``, else
    ``hostname-pid-<4 random hex>``, unique even when a pid is reused."""
    if settings.node_name:
        return settings.node_name
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def make_store(settings: Settings) -> Store:
    """The shared PostgreSQL database with ``--database-url``, else the data directory's
    SQLite file."""
    if settings.database_url is not None:
        from barge.store.postgres import PostgresStore

        # While the database is down, the pool retries its idle connection in the
        # background and would log a traceback each time; the engine already says, once
        # every few seconds, that it waits.
        logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
        return PostgresStore(settings.database_url, schema=settings.database_schema)
    return SQLiteStore(settings.db_path)


def make_blobs(settings: Settings) -> Blobs:
    """The S3 bucket with ``--blob-url`` (node-local spool and cache in the data
    directory), else the data directory's files."""
    if settings.blob_url is not None:
        from barge.blobs.s3 import S3Blobs

        return S3Blobs.from_url(settings.blob_url, tmp=settings.tmp_dir,
                                cache=settings.data_dir / "cache",
                                max_concurrency=settings.blob_part_concurrency)
    return LocalBlobs(settings.files_dir, settings.tmp_dir)


def _unreachable(e: BaseException | None) -> bool:
    """Whether a failure to open PostgreSQL is one that waiting may cure (refused, timed
    out, reset, starting up, too many connections), not a refusal of who we are (wrong
    password, no such database or role)."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    return isinstance(e, OSError | asyncpg.PostgresConnectionError
                      | asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError)


async def open_store(store: Store, *, retry_every: float = DATABASE_RETRY_SECONDS) -> None:
    """Open ``store``. A PostgreSQL that cannot be reached yet is waited for, saying so
    in the log at each try (a node started before its database does not crash-loop);
    one that refuses Barge (credentials, database) is a StoreUnavailable at once, whose
    message is the whole story."""
    where = getattr(store, "where", None)
    if where is None:  # not PostgreSQL
        await store.open()
        return
    while True:
        try:
            await store.open()
            return
        except StoreUnavailable as e:
            if not _unreachable(e.__cause__):
                raise StoreUnavailable(e.message) from None
            reason = e.message.partition(f"{where}: ")[2] or e.message
            log.warning("waiting for PostgreSQL at %s: %s", where, reason)
        await asyncio.sleep(retry_every)


async def open_blobs(blobs: Blobs) -> None:
    """Open ``blobs`` (for S3, a check that the bucket is there and may be written);
    a failure is one line saying what is wrong."""
    try:
        await blobs.open()
    except BlobsUnavailable as e:
        raise BlobsUnavailable(e.message) from None


class App:
    def __init__(self, settings: Settings) -> None:
        check_shared(settings)
        self.settings = settings
        prepare_data_dir(settings.data_dir)
        self.node = node_name(settings)
        self.store = make_store(settings)
        self.blobs = make_blobs(settings)
        self.store_health = ComponentHealth("store", self.store.ping)
        self.blobs_health = ComponentHealth("blob store", self.blobs.ping)
        routes: list[Route] = []
        self.senders = (SenderPool(settings.dispatch_processes,
                                   request_timeout=settings.upstream_timeout)
                        if settings.dispatch_processes and settings.engine else None)
        self.upstream_healths: list[UpstreamHealth] = []
        self._probes: list[UpstreamProbe] = []
        for spec in settings.upstream_specs:
            health = UpstreamHealth(spec.url)
            client = WatchedUpstreamClient(
                health,
                spec.url,
                api_key=spec.api_key,
                timeout=settings.upstream_timeout,
                max_connections=spec.concurrency,
                max_response_bytes=settings.max_response_bytes,
                senders=self.senders,
            )
            routes.append(Route(spec, client, max_cooldown=settings.backoff_max))
            self.upstream_healths.append(health)
            self._probes.append(UpstreamProbe(health, spec.url, spec.api_key,
                                              settings.upstream_probe_interval))
        self.upstream_health = self.upstream_healths[0]  # the first (or only) upstream
        self.router = Router(routes)
        self.metrics = Metrics(self.router, self.senders)
        self.dispatcher = Dispatcher(
            self.router,
            RetryPolicy(settings.max_attempts, settings.backoff_base, settings.backoff_max),
            metrics=self.metrics,
        )
        self.engine = (
            Engine(self.store, self.blobs, self.dispatcher, settings,
                   node=self.node if settings.shared else None, metrics=self.metrics)
            if settings.engine else None
        )
        # Webhooks go out wherever the engine runs (its own HTTP session and tasks).
        self.webhooks = (WebhookSender(self.store, settings, node=self.node,
                                       metrics=self.metrics) if settings.engine else None)
        self.auth = Authenticator(self.store, settings.admin_key)
        # Shared and not configured: the database's, read at start (see signing_secret).
        self._signing_secret: str | None = None
        if not settings.shared or settings.signing_secret is not None:
            self._signing_secret = load_signing_secret(settings.data_dir,
                                                       settings.signing_secret)
        self._lock: TextIO | None = None

    def health_json(self) -> dict[str, object]:
        """What /healthz says (on API nodes and workers alike), from the last checks
        (``check_health`` makes them fresh): ``status`` "ok", or "degraded" when the store
        or the blob store did not answer; ``store`` and ``blobs``, each ``{"ok", "error",
        "checked_at"}``; whether each upstream answers, and is in rotation.

        The HTTP status is 200 whenever this process serves, whatever its dependencies
        say: /healthz is a liveness probe, and restarting a node because PostgreSQL, the
        bucket or an upstream is down cures nothing (the node waits for them and carries
        on by itself). Readiness and alerts read the body, as ``barge check`` does."""
        storage_ok = self.store_health.ok and self.blobs_health.ok
        return {"status": "ok" if storage_ok else "degraded",
                "store": self.store_health.as_json(), "blobs": self.blobs_health.as_json(),
                "upstream": self.upstream_health.as_json(),
                "upstreams": [{"name": r.name, **h.as_json(), "in_rotation": not r.breaker.opened}
                              for r, h in zip(self.router.routes, self.upstream_healths,
                                              strict=True)]}

    async def check_health(self) -> dict[str, object]:
        """``health_json`` after checking the store and the blob store, at once, each
        unless it was checked in the last ``HEALTH_TTL`` seconds (a storm of probes costs
        the store one trivial query every second or two), each within a short timeout."""
        await asyncio.gather(self.store_health.refresh(), self.blobs_health.refresh())
        return self.health_json()

    @property
    def signing_secret(self) -> str:
        """The secret that signs download links: ``--signing-secret``; else, with a shared
        database, the one stored there (the first node to start makes it, so every node
        signs alike); else the data directory's ``signing.key``."""
        if self._signing_secret is None:
            raise RuntimeError("the shared signing secret is read when the App starts")
        return self._signing_secret

    async def __aenter__(self) -> App:
        if self.engine is not None:
            self._lock = hold_engine_lock(self.settings.data_dir)
        try:
            await open_store(self.store)
            if self._signing_secret is None:
                self._signing_secret = await self.store.shared_secret(
                    SIGNING_SECRET_NAME, secrets.token_hex(32))
            await open_blobs(self.blobs)
        except BaseException:
            await self.store.close()
            self._release_lock()
            raise
        self.store_health.opened()
        self.blobs_health.opened()
        if self.senders is not None:
            await self.senders.start()
        for route in self.router.routes:
            await route.client.open()
        for probe in self._probes:
            probe.start()
        if self.engine is not None:
            await self.engine.start()
        if self.webhooks is not None:
            await self.webhooks.start()
        s = self.settings
        host = f"[{s.host}]" if ":" in s.host else s.host
        if s.shared:
            log.info("node %s on http://%s:%d (engine %s), database %s, blobs %s, "
                     "upstream %s", self.node, host, s.port, "on" if self.engine else "off",
                     getattr(self.store, "where", "?"), getattr(self.blobs, "url", "?"),
                     s.upstream)
        else:
            log.info("serving on http://%s:%d/v1 (data in %s), upstream %s", host, s.port,
                     s.data_dir, s.upstream)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.engine is not None:
            await self.engine.stop(self.settings.shutdown_grace)
        if self.webhooks is not None:
            await self.webhooks.stop()
        for probe in self._probes:
            await probe.stop()
        for route in self.router.routes:
            await route.client.close()
        if self.senders is not None:
            await self.senders.stop()
        await self.store.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
