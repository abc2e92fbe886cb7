"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, moto ...), via obstore.

Blob ``key`` is the object ``<prefix>/<key>`` of the bucket. Barge never creates buckets:
``open()`` checks, with a small write and delete under the prefix, that the bucket is there
and the credentials may write to it, and says in one line what is wrong if not.

Two node-local folders hold scratch files that nothing durable depends on:

* ``tmp``: an upload spools to a file of its own as bytes arrive (size, lines and SHA-256
  counted on the way, so memory stays flat); ``commit`` streams it to the bucket, as a
  multipart upload when it is larger than ``part_size``. Nothing is visible under the key
  until the upload completes; ``abort`` only removes the spool file.
* ``cache``: ``local_path``'s read-through cache. The object is downloaded (streamed,
  fsynced, renamed into place) to ``<cache>/<key>/<digest of its ETag>``; since a copy is
  named by the version it holds, one is used only while it is still the object's current
  version (one HEAD request per ``local_path``). A blob committed or published on this node
  goes straight into the cache. ``delete`` drops this node's copy; nothing else evicts
  copies yet, so a node's cache holds every blob it has read until that blob is deleted
  on this node.

Endpoint and credentials come from the standard variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``);
an ``http://`` endpoint is allowed without further setting. With no keys given, obstore's
own chain (instance metadata, web identity ...) is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

import obstore as obs
from obstore.exceptions import (
    BaseError as ObstoreError,
)
from obstore.exceptions import (
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from barge.blobs.common import Spool, check_key, check_range, rechunk, storage_error
from barge.blobs.protocol import PING_TIMEOUT, BlobInfo, Blobs, BlobWriter
from barge.exceptions import BargeError, BlobsUnavailable, NotFound
from barge.memory import release_free_memory

if TYPE_CHECKING:
    from obstore import GetOptions, GetResult, ObjectMeta
    from obstore.store import ClientConfig, RetryConfig, S3Config

log = logging.getLogger("barge.blobs")

MiB = 1 << 20
# S3 wants at least 5 MiB for every part but the last. Each part in flight holds about
# twice its size in memory, so parts are small and, by default, go one at a time: an
# upload adds ~10 MiB to the process, however large the file (--blob-part-concurrency).
DEFAULT_PART_SIZE = 5 * MiB
DEFAULT_CONCURRENCY = 1
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
STALE_SCRATCH_S = 600  # a spool or partial download untouched this long is a crash's

# What obstore raises: its own errors, and OSError subclasses (FileNotFoundError for a
# missing object, PermissionError, TimeoutError, ConnectionError).
_DRIVER_ERRORS = (ObstoreError, OSError)
_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")
_MESSAGE = re.compile(r"<Message>([^<]{1,300})</Message>")
_CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
})


class _Changed(Exception):
    """The object changed between the HEAD and the GET of a download."""


def _s3_code(e: BaseException) -> str | None:
    m = _CODE.search(str(e))
    return m.group(1) if m else None


def _summary(e: BaseException) -> str:
    """One short line about a driver error."""
    text = str(e)
    code, message = _s3_code(e), _MESSAGE.search(text)
    if code:
        return f"{code}: {message.group(1)}" if message else code
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first if len(first) <= 300 else first[:297] + "..."


class S3Writer:
    """An upload to S3: spooled to a local file, streamed to the bucket on commit."""

    def __init__(self, blobs: S3Blobs, key: str, spool: Path, max_bytes: int) -> None:
        self._blobs = blobs
        self._key = key
        self._spool = Spool(spool, max_bytes)

    def write(self, chunk: bytes) -> None:
        self._spool.write(chunk)

    async def commit(self) -> BlobInfo:
        try:
            info = await asyncio.to_thread(self._spool.close, fsync=False)
            await self._blobs._put_file(self._key, self._spool.path, info.bytes)
        except OSError as e:
            raise storage_error(e) from e
        finally:
            self.abort()  # the spool file is in the cache now, or gone
        return info

    def abort(self) -> None:
        self._spool.discard()


class S3Blobs:
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        tmp: Path,
        cache: Path,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        request_timeout: timedelta = timedelta(hours=6),
        read_timeout: timedelta = timedelta(minutes=2),
        max_retries: int = 5,
        retry_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        """``part_size``: the part size of multipart uploads (the smallest a store accepts
        is 5 MiB on AWS; raised for huge files to stay within 10,000 parts).
        ``request_timeout`` bounds a whole request, body included (a download streamed to a
        slow client must fit in it); ``read_timeout`` bounds a stall while reading.
        Failed requests (5xx, connection errors, timeouts of safe requests) are retried
        with back-off up to ``max_retries`` times within ``retry_timeout``."""
        if part_size <= 0 or max_concurrency <= 0:
            raise ValueError("part_size and max_concurrency must be positive")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self._tmp = tmp
        self._cache = cache
        tmp.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        self._part_size = part_size
        self._max_concurrency = max_concurrency
        config: S3Config = {"bucket": bucket}
        if endpoint:
            config["endpoint"] = endpoint
        if region:
            config["region"] = region
        if access_key_id:
            config["access_key_id"] = access_key_id
        if secret_access_key:
            config["secret_access_key"] = secret_access_key
        if session_token:
            config["session_token"] = session_token
        allow_http = bool(endpoint) and urlsplit(endpoint or "").scheme.lower() == "http"
        client: ClientConfig = {
            "allow_http": allow_http,
            "connect_timeout": timedelta(seconds=5),
            "timeout": request_timeout,
            "read_timeout": read_timeout,
        }
        retry: RetryConfig = {"max_retries": max_retries, "retry_timeout": retry_timeout}
        self._store = S3Store(prefix=self.prefix or None, config=config, client_options=client,
                              retry_config=retry)
        # open()'s check gives up soon: a wrong endpoint should fail a start in seconds.
        probe_client: ClientConfig = {**client, "timeout": timedelta(seconds=30)}
        probe_retry: RetryConfig = {"max_retries": 2, "retry_timeout": timedelta(seconds=10)}
        self._probe_store = S3Store(prefix=self.prefix or None, config=config,
                                    client_options=probe_client, retry_config=probe_retry)
        # ping()'s: one try, quickly, for /healthz.
        ping_client: ClientConfig = {**client, "connect_timeout": timedelta(seconds=2),
                                     "timeout": timedelta(seconds=PING_TIMEOUT)}
        ping_retry: RetryConfig = {"max_retries": 0, "retry_timeout": timedelta(seconds=0)}
        self._ping_store = S3Store(prefix=self.prefix or None, config=config,
                                   client_options=ping_client, retry_config=ping_retry)
        self._fetching: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        tmp: Path,
        cache: Path,
        environ: Mapping[str, str] | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = DEFAULT_CONCURRENCY,
    ) -> S3Blobs:
        """``s3://bucket/optional/prefix``, with the endpoint and credentials read from
        ``environ`` (``os.environ`` by default)."""
        parts = urlsplit(url)
        bucket = parts.netloc
        if (parts.scheme != "s3" or not bucket or "@" in bucket or ":" in bucket
                or parts.query or parts.fragment):
            raise BargeError(f"The blob store URL {url!r} is not of the form s3://bucket/prefix.")
        env = os.environ if environ is None else environ
        endpoint = (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
                    or env.get("AWS_ENDPOINT") or None)
        return cls(
            bucket,
            prefix=parts.path,
            tmp=tmp,
            cache=cache,
            endpoint=endpoint,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            part_size=part_size,
            max_concurrency=max_concurrency,
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __repr__(self) -> str:
        return f"S3Blobs({self.url!r}, endpoint={self.endpoint!r})"

    # -- errors ---------------------------------------------------------------------

    def explain(self, e: BaseException) -> str:
        """One line saying what is wrong, for a person starting Barge."""
        at = f" at {self.endpoint}" if self.endpoint else ""
        code = _s3_code(e)
        if code == "NoSuchBucket":
            return (f"The bucket {self.bucket!r} does not exist{at}. Barge never creates "
                    f"buckets: create it, or fix the blob store URL ({self.url}).")
        if code in _CREDENTIAL_CODES or isinstance(e, UnauthenticatedError):
            why = code or "unauthenticated"
            return (f"The object store{at} refused Barge's credentials ({why}): check "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")
        if code == "AccessDenied" or isinstance(e, PermissionDeniedError | PermissionError):
            return (f"The object store{at} denied access to {self.url} ({code or 'forbidden'}): "
                    "the credentials need s3:PutObject, s3:GetObject, s3:DeleteObject and "
                    "s3:ListBucket there.")
        return f"The object store{at} cannot be used for {self.url}: {_summary(e)}"

    def _failure(self, e: BaseException, key: str, *, missing: bool = True) -> BargeError:
        """A driver error as Barge's own: NotFound for a missing object (when ``missing``),
        else BlobsUnavailable, with the detail in the log rather than the message."""
        if missing and isinstance(e, FileNotFoundError) and _s3_code(e) != "NoSuchBucket":
            return NotFound(f"The bytes of file {key} are missing.")
        log.warning("object store failed on %s: %s", key, self.explain(e))
        return BlobsUnavailable("The server's file storage is unavailable; try again later.",
                                code="storage_unavailable")

    # -- Blobs ----------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._clear_scratch)
        probe = f".barge-probe-{secrets.token_hex(8)}"
        try:
            await obs.put_async(self._probe_store, probe, b"")
            await obs.delete_async(self._probe_store, probe)
        except _DRIVER_ERRORS as e:
            raise BlobsUnavailable(self.explain(e)) from e

    async def ping(self, timeout: float = PING_TIMEOUT) -> None:
        """One listing of a prefix that holds nothing (``<prefix>/.barge-ping/``), with no
        retry: it needs the bucket there, the credentials accepted and the store
        answering, and costs one small request."""
        try:
            await asyncio.wait_for(
                obs.list_with_delimiter_async(self._ping_store, ".barge-ping"), timeout)
        except TimeoutError:
            at = f" at {self.endpoint}" if self.endpoint else ""
            raise BlobsUnavailable(f"The object store{at} did not answer within "
                                   f"{timeout:g}s.") from None
        except _DRIVER_ERRORS as e:
            raise BlobsUnavailable(self.explain(e)) from None

    def _clear_scratch(self) -> None:
        """Make the folders; remove spool files and partial downloads a crash left (old
        ones only: another process on this node may share the folders)."""
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            self._cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(e) from e
        cutoff = time.time() - STALE_SCRATCH_S
        for leftover in [*self._tmp.glob("*.upload"), *self._cache.glob("*/*.part")]:
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()

    def writer(self, key: str, *, max_bytes: int) -> S3Writer:
        """Each writer spools to a file of its own, even for one key; the last to commit
        wins."""
        check_key(key)
        spool = self._tmp / f"{key}.{secrets.token_hex(8)}.upload"
        return S3Writer(self, key, spool, max_bytes)

    async def publish(self, key: str, source: Path) -> None:
        check_key(key)
        try:
            size = (await asyncio.to_thread(source.stat)).st_size
        except OSError as e:
            raise storage_error(e) from e
        await self._put_file(key, source, size)

    async def _put_file(self, key: str, path: Path, size: int) -> None:
        """Stream a local file to the object ``key`` (multipart when large), then move the
        file into the cache as that version (or remove it). On failure the file stays."""
        part_size = max(self._part_size, -(-size // MAX_PARTS))
        try:
            result = await obs.put_async(self._store, key, path, chunk_size=part_size,
                                         max_concurrency=self._max_concurrency)
        except _DRIVER_ERRORS as e:
            raise self._failure(e, key, missing=False) from e
        finally:
            if size > part_size:  # the parts were buffers of the driver's threads
                await asyncio.to_thread(release_free_memory)
        await asyncio.to_thread(self._adopt, key, path, result["e_tag"])

    def _adopt(self, key: str, path: Path, etag: str | None) -> None:
        if etag is not None:
            final = self._cache_path(key, etag)
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, final)
            except OSError:
                pass  # e.g. tmp and cache on different filesystems: no cached copy
            else:
                self._drop_cached(key, keep=final)
                return
        path.unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        try:
            check_key(key)
        except NotFound:
            return False
        try:
            await obs.head_async(self._store, key)
        except FileNotFoundError:
            return False
        except _DRIVER_ERRORS as e:
            raise self._failure(e, key) from e
        return True

    async def _head(self, key: str) -> ObjectMeta:
        try:
            return await obs.head_async(self._store, key)
        except _DRIVER_ERRORS as e:
            raise self._failure(e, key) from e

    async def _get(self, key: str, options: GetOptions | None = None) -> GetResult:
        try:
            return await obs.get_async(self._store, key, options=options)
        except PreconditionError:
            raise _Changed from None
        except _DRIVER_ERRORS as e:
            raise self._failure(e, key) from e

    async def _chunks(self, result: GetResult, key: str, size: int) -> AsyncIterator[bytes]:
        stream = result.stream(min_chunk_size=size)
        while True:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
            except _DRIVER_ERRORS as e:
                raise self._failure(e, key) from e
            yield chunk

    async def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        check_key(key)
        result = await self._get(key)
        async for chunk in rechunk(self._chunks(result, key, chunk_size), chunk_size):
            yield chunk

    async def open_range(
        self, key: str, start: int, end: int, *, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        check_range(start, end)
        check_key(key)
        if start == end:
            if not await self.exists(key):
                raise NotFound(f"The bytes of file {key} are missing.")
            return
        try:
            result = await obs.get_async(self._store, key, options={"range": (start, end)})
        except FileNotFoundError as e:
            raise self._failure(e, key) from e
        except _DRIVER_ERRORS as e:
            # 416 when start is at or past the end (always, for an empty object): a slice.
            if start >= (await self._head(key))["size"]:
                return
            raise self._failure(e, key) from e
        async for chunk in rechunk(self._chunks(result, key, chunk_size), chunk_size):
            yield chunk

    async def delete(self, key: str) -> None:
        check_key(key)
        try:
            await obs.delete_async(self._store, key)
        except FileNotFoundError as e:
            if _s3_code(e) == "NoSuchBucket":
                raise self._failure(e, key, missing=False) from e
        except _DRIVER_ERRORS as e:
            raise self._failure(e, key, missing=False) from e
        await asyncio.to_thread(self._drop_cached, key, None)

    # -- the read-through cache -----------------------------------------------------

    def _cache_path(self, key: str, version: str) -> Path:
        return self._cache / key / hashlib.sha256(version.encode()).hexdigest()[:32]

    def _drop_cached(self, key: str, keep: Path | None) -> None:
        """Remove this node's copies of ``key`` (all but ``keep``); partial downloads are
        left to their owners."""
        folder = self._cache / key
        with contextlib.suppress(OSError):
            for p in folder.iterdir():
                if p != keep and not p.name.endswith(".part"):
                    p.unlink(missing_ok=True)
            if keep is None:
                folder.rmdir()  # fails, harmlessly, while a download is under way

    async def local_path(self, key: str) -> Path:
        check_key(key)
        lock = self._fetching.setdefault(key, asyncio.Lock())
        try:
            async with lock:  # one download per key at a time in this process
                for _ in range(3):
                    meta = await self._head(key)
                    etag = meta["e_tag"]
                    final = self._cache_path(key, etag or f"{meta['size']}@{meta['last_modified']}")
                    if final.is_file():
                        return final
                    try:
                        await self._download(key, final, etag)
                    except _Changed:
                        continue
                    if meta["size"] > self._part_size:  # chunks of the driver's threads
                        await asyncio.to_thread(release_free_memory)
                    return final
                raise BlobsUnavailable(f"The file {key} kept changing while it was read.")
        finally:
            if not lock.locked():
                self._fetching.pop(key, None)

    async def _download(self, key: str, final: Path, etag: str | None) -> None:
        """Stream the object into ``final``: a partial file of its own, fsynced, renamed."""
        result = await self._get(key, {"if_match": etag} if etag else None)
        part = final.with_name(f"{final.name}.{secrets.token_hex(6)}.part")
        try:
            try:
                await asyncio.to_thread(part.parent.mkdir, parents=True, exist_ok=True)
                fh = await asyncio.to_thread(open, part, "wb")
            except OSError as e:
                raise storage_error(e) from e
            try:
                async for chunk in self._chunks(result, key, MiB):
                    await asyncio.to_thread(fh.write, chunk)
                await asyncio.to_thread(_flush_and_sync, fh)
            except OSError as e:
                raise storage_error(e) from e
            finally:
                fh.close()
            try:
                await asyncio.to_thread(os.replace, part, final)
            except OSError as e:
                raise storage_error(e) from e
            await asyncio.to_thread(self._drop_cached, key, final)
        finally:
            part.unlink(missing_ok=True)


def _flush_and_sync(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())


if TYPE_CHECKING:

    def _implements_blobs(s3: S3Blobs, writer: S3Writer) -> tuple[Blobs, BlobWriter]:
        return s3, writer  # mypy checks S3Blobs against the protocol here
