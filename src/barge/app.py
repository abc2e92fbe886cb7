"""The composition root: ``App(settings)`` opens the store, blobs, upstream client and
engine, and closes them in reverse. The web app's lifespan owns one."""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from types import TracebackType
from typing import TextIO

from barge.api.auth import Authenticator
from barge.blobs.local import LocalBlobs
from barge.engine.dispatch import Dispatcher, RetryPolicy
from barge.engine.limiter import AdaptiveLimiter
from barge.engine.runner import Engine
from barge.exceptions import BargeError
from barge.settings import Settings
from barge.signing_key import load_signing_secret
from barge.store.sqlite import SQLiteStore
from barge.upstreams.client import UpstreamClient

log = logging.getLogger("barge")


def hold_engine_lock(data_dir: Path) -> TextIO:
    """One engine per data directory: two would send every request twice. The lock
    dies with the process, so a crashed engine never blocks its successor."""
    handle = open(data_dir / "engine.lock", "a")  # noqa: SIM115 - held until close
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BargeError(
            f"Another barge process runs the engine on {data_dir}; stop it first."
        ) from None
    return handle


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = SQLiteStore(settings.db_path)
        self.blobs = LocalBlobs(settings.files_dir, settings.tmp_dir)
        self.client = UpstreamClient(
            settings.upstream,
            api_key=settings.upstream_api_key,
            timeout=settings.upstream_timeout,
            max_connections=settings.upstream_concurrency,
        )
        self.dispatcher = Dispatcher(
            self.client,
            RetryPolicy(settings.max_attempts, settings.backoff_base, settings.backoff_max),
            AdaptiveLimiter(settings.upstream_concurrency),
        )
        self.engine = (
            Engine(self.store, self.blobs, self.dispatcher, settings) if settings.engine else None
        )
        self.auth = Authenticator(self.store, settings.admin_key)
        self.signing_secret = load_signing_secret(settings.data_dir, settings.signing_secret)
        self._lock: TextIO | None = None

    async def __aenter__(self) -> App:
        if self.engine is not None:
            self._lock = hold_engine_lock(self.settings.data_dir)
        await self.store.open()
        self.blobs.clear_tmp()
        await self.client.open()
        if self.engine is not None:
            await self.engine.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.engine is not None:
            await self.engine.stop(self.settings.shutdown_grace)
        await self.client.close()
        await self.store.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
