"""``Blobs.ping``, for ``/healthz``: quick, and one line saying why not — local disk and
S3 (moto on loopback, behind a proxy that can answer 503, or a bucket that is not there)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from blobs.test_blobs_contract import Harness, h
from blobs.test_s3_blobs import make, prefix
from moto_s3 import MotoS3
from s3_proxy import S3FaultProxy

from barge.blobs.local import LocalBlobs
from barge.exceptions import BlobsUnavailable, StorageError

__all__ = ["h", "prefix"]


@pytest.mark.asyncio
async def test_ping_answers(h: Harness) -> None:
    await h.blobs.open()
    await h.blobs.ping()


@pytest.mark.asyncio
async def test_local_ping_says_the_folder_is_gone(tmp_path: Path) -> None:
    local = LocalBlobs(tmp_path / "files", tmp_path / "tmp")
    await local.open()
    shutil.rmtree(tmp_path / "files")
    with pytest.raises(StorageError, match="files is missing"):
        await local.ping()


@pytest.mark.asyncio
async def test_s3_ping_says_the_bucket_is_missing(moto_s3: MotoS3, prefix: str,
                                                 tmp_path: Path) -> None:
    missing = make(moto_s3, prefix, tmp_path, bucket="no-such-bucket-here")
    with pytest.raises(BlobsUnavailable, match="does not exist"):
        await missing.ping()


@pytest.mark.asyncio
async def test_s3_ping_fails_fast_on_503_and_recovers(moto_s3: MotoS3, prefix: str,
                                                     tmp_path: Path) -> None:
    proxy = S3FaultProxy(moto_s3.url).start()
    try:
        via = make(moto_s3, prefix, tmp_path, AWS_ENDPOINT_URL=proxy.url)
        await via.ping()
        proxy.fail_for(30)
        started = time.monotonic()
        with pytest.raises(BlobsUnavailable, match=r"SlowDown|503"):
            await via.ping(timeout=2.0)
        assert time.monotonic() - started < 2.5  # one try, no back-off
        proxy.fail_until = 0.0
        await via.ping()
    finally:
        proxy.stop()


@pytest.mark.asyncio
async def test_s3_ping_times_out(moto_s3: MotoS3, prefix: str, tmp_path: Path) -> None:
    proxy = S3FaultProxy(moto_s3.url).start()
    try:
        slow = make(moto_s3, prefix, tmp_path, node="slow", AWS_ENDPOINT_URL=proxy.url)
        proxy.delay = 3.0
        started = time.monotonic()
        with pytest.raises(BlobsUnavailable, match=r"did not answer within 0\.5s"):
            await slow.ping(timeout=0.5)
        assert time.monotonic() - started < 1.5
    finally:
        proxy.delay = 0.0
        proxy.stop()
