"""S3Blobs only, against moto on loopback: the URL and the standard variables, one clear
line at open for a missing bucket or refused credentials, multipart uploads, ranges across
part boundaries, the read-through cache, errors as Barge's own, flat memory."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

import obstore as obs
import pytest
from barge_process import free_port
from moto_s3 import PART_SIZE, MotoS3
from obstore.store import S3Store
from s3_proxy import S3FaultProxy

from barge.app import make_blobs
from barge.blobs import s3 as s3_module
from barge.blobs.s3 import S3Blobs
from barge.exceptions import BargeError, BlobsUnavailable, NotFound
from barge.settings import Settings

BIG = 1 << 30


def new_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def prefix() -> str:
    return new_prefix()


def make(moto: MotoS3, prefix: str, tmp_path: Path, *, node: str = "node", bucket: str = "",
         **env: str) -> S3Blobs:
    return S3Blobs.from_url(f"s3://{bucket or moto.bucket}/{prefix}", tmp=tmp_path / node / "tmp",
                            cache=tmp_path / node / "cache", environ=moto.env(**env),
                            part_size=PART_SIZE)


@pytest.fixture
def blobs(moto_s3: MotoS3, prefix: str, tmp_path: Path) -> S3Blobs:
    return make(moto_s3, prefix, tmp_path)


def raw_store(moto: MotoS3, prefix: str) -> S3Store:
    return S3Store(moto.bucket, prefix=prefix, endpoint=moto.url, region=moto.region,
                   access_key_id=moto.access_key_id, secret_access_key=moto.secret_access_key,
                   client_options={"allow_http": True})


def etag(moto: MotoS3, prefix: str, key: str) -> str:
    tag = obs.head(raw_store(moto, prefix), key)["e_tag"]
    assert tag is not None
    return tag.strip('"')


async def collect(blobs: S3Blobs, key: str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join([c async for c in blobs.stream(key, chunk_size)])


async def collect_range(blobs: S3Blobs, key: str, start: int, end: int,
                        chunk_size: int = 1 << 20) -> bytes:
    return b"".join([c async for c in blobs.open_range(key, start, end, chunk_size=chunk_size)])


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


class TestFromUrl:
    @pytest.mark.parametrize(
        ("url", "bucket", "prefix"),
        [
            ("s3://b", "b", ""),
            ("s3://b/", "b", ""),
            ("s3://my-bucket/barge", "my-bucket", "barge"),
            ("s3://my-bucket/a/b/", "my-bucket", "a/b"),
        ],
    )
    def test_bucket_and_prefix(self, tmp_path: Path, url: str, bucket: str, prefix: str) -> None:
        blobs = S3Blobs.from_url(url, tmp=tmp_path / "t", cache=tmp_path / "c", environ={})
        assert (blobs.bucket, blobs.prefix) == (bucket, prefix)
        assert blobs.endpoint is None

    @pytest.mark.parametrize(
        "url", ["http://b/x", "s3://", "s3:///x", "s3://user@b/x", "s3://b:9000/x",
                "s3://b/x?versionId=1", "/data/files", "b/x"],
    )
    def test_bad_urls(self, tmp_path: Path, url: str) -> None:
        with pytest.raises(BargeError, match="s3://bucket/prefix"):
            S3Blobs.from_url(url, tmp=tmp_path / "t", cache=tmp_path / "c", environ={})

    def test_endpoint_variables(self, tmp_path: Path) -> None:
        def endpoint(**env: str) -> str | None:
            return S3Blobs.from_url("s3://b", tmp=tmp_path / "t", cache=tmp_path / "c",
                                    environ=env).endpoint

        assert endpoint(AWS_ENDPOINT_URL="http://minio:9000") == "http://minio:9000"
        assert endpoint(AWS_ENDPOINT_URL="http://a", AWS_ENDPOINT_URL_S3="http://s3") == "http://s3"
        assert endpoint() is None

    @pytest.mark.asyncio
    async def test_reads_the_process_environment(
        self, moto_s3: MotoS3, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With only the standard variables set, an http:// endpoint just works."""
        for name, value in moto_s3.env().items():
            monkeypatch.setenv(name, value)
        blobs = S3Blobs.from_url(f"s3://{moto_s3.bucket}/{prefix}", tmp=tmp_path / "t",
                                 cache=tmp_path / "c")
        assert blobs.endpoint == moto_s3.url
        await blobs.open()
        w = blobs.writer("file-env", max_bytes=BIG)
        w.write(b"hello\n")
        await w.commit()
        assert await collect(blobs, "file-env") == b"hello\n"


class TestOpen:
    @pytest.mark.asyncio
    async def test_a_missing_bucket_is_one_clear_line(
        self, moto_s3: MotoS3, tmp_path: Path
    ) -> None:
        blobs = make(moto_s3, "x", tmp_path, bucket="no-such-bucket")
        with pytest.raises(BlobsUnavailable) as exc:
            await blobs.open()
        message = str(exc.value)
        assert "\n" not in message
        assert "'no-such-bucket' does not exist" in message
        assert "never creates buckets" in message
        assert b"no-such-bucket" not in moto_s3.request("GET", "/")  # and it did not

    @pytest.mark.asyncio
    async def test_refused_credentials_are_one_clear_line(
        self, moto_s3: MotoS3, prefix: str, tmp_path: Path
    ) -> None:
        boto3 = pytest.importorskip("boto3")
        iam = boto3.client("iam", endpoint_url=moto_s3.url, region_name=moto_s3.region,
                           aws_access_key_id="x", aws_secret_access_key="x")
        allowed, denied = f"barge-{prefix}", f"nobody-{prefix}"
        for user in (allowed, denied):
            iam.create_user(UserName=user)
        iam.put_user_policy(UserName=allowed, PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        good = iam.create_access_key(UserName=allowed)["AccessKey"]
        useless = iam.create_access_key(UserName=denied)["AccessKey"]
        cases = {
            "InvalidAccessKeyId": dict(AWS_ACCESS_KEY_ID="AKIAUNKNOWNKEY000000"),
            "SignatureDoesNotMatch": dict(AWS_ACCESS_KEY_ID=good["AccessKeyId"],
                                          AWS_SECRET_ACCESS_KEY="not-the-secret"),
        }
        moto_s3.check_credentials(True)
        try:
            for node, (code, env) in enumerate(cases.items()):
                blobs = make(moto_s3, prefix, tmp_path, node=str(node), **env)
                with pytest.raises(BlobsUnavailable) as exc:
                    await blobs.open()
                message = str(exc.value)
                assert "\n" not in message
                assert f"refused Barge's credentials ({code})" in message
                assert "AWS_ACCESS_KEY_ID" in message
            nobody = make(moto_s3, prefix, tmp_path, node="nobody",
                          AWS_ACCESS_KEY_ID=useless["AccessKeyId"],
                          AWS_SECRET_ACCESS_KEY=useless["SecretAccessKey"])
            with pytest.raises(BlobsUnavailable, match=r"denied access .*AccessDenied"):
                await nobody.open()
            blobs = make(moto_s3, prefix, tmp_path, node="good",
                         AWS_ACCESS_KEY_ID=good["AccessKeyId"],
                         AWS_SECRET_ACCESS_KEY=good["SecretAccessKey"])
            await blobs.open()  # the right ones work with the check on
            w = blobs.writer("file-auth", max_bytes=BIG)
            w.write(b"ok\n")
            await w.commit()
            assert await collect(blobs, "file-auth") == b"ok\n"
        finally:
            moto_s3.check_credentials(False)

    @pytest.mark.asyncio
    async def test_an_unreachable_endpoint_fails_soon(self, tmp_path: Path) -> None:
        port = free_port()  # nothing listens there
        blobs = S3Blobs.from_url("s3://b/p", tmp=tmp_path / "t", cache=tmp_path / "c", environ={
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"})
        started = time.monotonic()
        with pytest.raises(BlobsUnavailable) as exc:
            await blobs.open()
        assert time.monotonic() - started < 15
        message = str(exc.value)
        assert "\n" not in message
        assert f"http://127.0.0.1:{port} cannot be used for s3://b/p" in message

    @pytest.mark.asyncio
    async def test_clears_stale_scratch_files_only(
        self, blobs: S3Blobs, tmp_path: Path
    ) -> None:
        tmp, cache = tmp_path / "node" / "tmp", tmp_path / "node" / "cache"
        (cache / "file-a").mkdir(parents=True)
        old = time.time() - 3600
        for path in (tmp / "file-a.1.upload", tmp / "file-b.2.upload",
                     cache / "file-a" / "abc.3.part", cache / "file-a" / "abc.4.part",
                     cache / "file-a" / "abc"):
            path.write_bytes(b"x")
        for path in (tmp / "file-a.1.upload", cache / "file-a" / "abc.3.part",
                     cache / "file-a" / "abc"):
            os.utime(path, (old, old))
        await blobs.open()
        assert files_under(tmp) == ["file-b.2.upload"]  # another process's, still going
        assert files_under(cache) == ["file-a/abc", "file-a/abc.4.part"]


class TestMultipart:
    @pytest.mark.asyncio
    async def test_a_large_upload_goes_in_parts(
        self, moto_s3: MotoS3, blobs: S3Blobs, prefix: str
    ) -> None:
        data = os.urandom(3 * PART_SIZE + PART_SIZE // 2)
        w = blobs.writer("file-big", max_bytes=BIG)
        for i in range(0, len(data), 10_000):
            w.write(data[i : i + 10_000])
        info = await w.commit()
        assert info.bytes == len(data)
        assert etag(moto_s3, prefix, "file-big").endswith("-4")  # a multipart upload's ETag
        assert await collect(blobs, "file-big") == data

    @pytest.mark.asyncio
    async def test_a_small_upload_is_one_put(
        self, moto_s3: MotoS3, blobs: S3Blobs, prefix: str
    ) -> None:
        w = blobs.writer("file-small", max_bytes=BIG)
        w.write(b"x" * (PART_SIZE - 1))
        await w.commit()
        assert "-" not in etag(moto_s3, prefix, "file-small")

    @pytest.mark.asyncio
    async def test_publish_goes_in_parts(
        self, moto_s3: MotoS3, blobs: S3Blobs, prefix: str, tmp_path: Path
    ) -> None:
        data = os.urandom(2 * PART_SIZE + 1)
        source = tmp_path / "out.jsonl"
        source.write_bytes(data)
        await blobs.publish("file-out", source)
        assert etag(moto_s3, prefix, "file-out").endswith("-3")
        assert not source.exists()
        assert await collect(blobs, "file-out") == data

    @pytest.mark.asyncio
    async def test_parts_in_flight_follow_the_setting(
        self, moto_s3: MotoS3, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A node's uploads send one part at a time unless --blob-part-concurrency says
        more (each part in flight holds ~10 MiB): counted at a proxy that slows parts."""
        proxy = S3FaultProxy(moto_s3.url).start()
        try:
            proxy.delay = 0.2
            for name, value in moto_s3.env(AWS_ENDPOINT_URL=proxy.url).items():
                monkeypatch.setenv(name, value)
            source = tmp_path / "out.jsonl"
            most = []
            for concurrency in (None, 3):
                extra = {} if concurrency is None else {"blob_part_concurrency": concurrency}
                settings = Settings(data_dir=tmp_path / f"node-{concurrency}",
                                    blob_url=f"s3://{moto_s3.bucket}/{prefix}", **extra)
                blobs = make_blobs(settings)
                assert isinstance(blobs, S3Blobs)
                await blobs.open()
                source.write_bytes(os.urandom(3 * s3_module.DEFAULT_PART_SIZE))
                proxy.most_parts_in_flight = 0
                await blobs.publish(f"file-{concurrency}", source)
                most.append(proxy.most_parts_in_flight)
                assert etag(moto_s3, prefix, f"file-{concurrency}").endswith("-3")
            assert most[0] == 1, most
            assert most[1] >= 2, most
        finally:
            proxy.stop()

    @pytest.mark.asyncio
    async def test_parts_grow_to_stay_within_the_limit(
        self, moto_s3: MotoS3, blobs: S3Blobs, prefix: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(s3_module, "MAX_PARTS", 2)  # as 10,000 parts are for AWS
        data = os.urandom(5 * PART_SIZE)
        source = tmp_path / "out.jsonl"
        source.write_bytes(data)
        await blobs.publish("file-out", source)
        assert etag(moto_s3, prefix, "file-out").endswith("-2")
        assert await collect(blobs, "file-out") == data

    @pytest.mark.asyncio
    async def test_ranges_across_part_boundaries(self, blobs: S3Blobs) -> None:
        data = os.urandom(3 * PART_SIZE + 123)
        w = blobs.writer("file-parts", max_bytes=BIG)
        w.write(data)
        await w.commit()
        p = PART_SIZE
        for start, end in [(p - 1, p + 1), (p - 100, 2 * p + 100), (0, 3 * p + 123),
                           (2 * p, 3 * p), (3 * p - 5, 3 * p + 1000), (p, p + 1)]:
            for chunk_size in (7777, 1 << 20):
                got = [c async for c in blobs.open_range("file-parts", start, end,
                                                         chunk_size=chunk_size)]
                assert b"".join(got) == data[start:end], (start, end, chunk_size)
                assert all(len(c) == chunk_size for c in got[:-1])


class TestCache:
    @pytest.mark.asyncio
    async def test_a_commit_fills_this_nodes_cache(self, blobs: S3Blobs, tmp_path: Path) -> None:
        w = blobs.writer("file-c", max_bytes=BIG)
        w.write(b"cached\n")
        await w.commit()
        cache = tmp_path / "node" / "cache"
        [copy] = files_under(cache)
        assert await blobs.local_path("file-c") == cache / copy

    @pytest.mark.asyncio
    async def test_another_nodes_write_is_seen(
        self, moto_s3: MotoS3, prefix: str, tmp_path: Path
    ) -> None:
        a, b = make(moto_s3, prefix, tmp_path, node="a"), make(moto_s3, prefix, tmp_path, node="b")
        wa = a.writer("file-shared", max_bytes=BIG)
        wa.write(b"version 1\n")
        await wa.commit()
        assert (await b.local_path("file-shared")).read_bytes() == b"version 1\n"
        wb = b.writer("file-shared", max_bytes=BIG)
        wb.write(b"version 2, longer\n")
        await wb.commit()
        path = await a.local_path("file-shared")  # a's cached copy is stale: fetched again
        assert path.read_bytes() == b"version 2, longer\n"
        assert files_under(tmp_path / "a" / "cache") == [str(path.relative_to(
            tmp_path / "a" / "cache"))]  # the old copy is gone

    @pytest.mark.asyncio
    async def test_delete_drops_the_cached_copy(self, blobs: S3Blobs, tmp_path: Path) -> None:
        w = blobs.writer("file-d", max_bytes=BIG)
        w.write(b"x\n")
        await w.commit()
        await blobs.local_path("file-d")
        await blobs.delete("file-d")
        assert files_under(tmp_path / "node" / "cache") == []
        with pytest.raises(NotFound):
            await blobs.local_path("file-d")

    @pytest.mark.asyncio
    async def test_concurrent_reads_on_a_cold_node(
        self, moto_s3: MotoS3, prefix: str, tmp_path: Path
    ) -> None:
        writer_node = make(moto_s3, prefix, tmp_path, node="w")
        data = os.urandom(PART_SIZE * 2)
        w = writer_node.writer("file-cold", max_bytes=BIG)
        w.write(data)
        await w.commit()
        cold = make(moto_s3, prefix, tmp_path, node="cold")
        paths = await asyncio.gather(*(cold.local_path("file-cold") for _ in range(5)))
        assert len(set(paths)) == 1
        assert paths[0].read_bytes() == data
        assert files_under(tmp_path / "cold" / "cache") == [
            str(paths[0].relative_to(tmp_path / "cold" / "cache"))]  # no partial files left


class TestUnavailable:
    @pytest.fixture
    def down(self, tmp_path: Path) -> S3Blobs:
        """A store whose endpoint does not answer, retried briefly."""
        return S3Blobs("b", prefix="p", tmp=tmp_path / "t", cache=tmp_path / "c",
                       endpoint=f"http://127.0.0.1:{free_port()}", region="us-east-1",
                       access_key_id="k", secret_access_key="s", max_retries=1,
                       retry_timeout=timedelta(seconds=2))

    @pytest.mark.asyncio
    async def test_reads_are_503(self, down: S3Blobs) -> None:
        with pytest.raises(BlobsUnavailable) as exc:
            await down.exists("file-x")
        assert exc.value.status_code == 503
        with pytest.raises(BlobsUnavailable):
            await collect(down, "file-x")
        with pytest.raises(BlobsUnavailable):
            await collect_range(down, "file-x", 0, 10)
        with pytest.raises(BlobsUnavailable):
            await down.local_path("file-x")
        with pytest.raises(BlobsUnavailable):
            await down.delete("file-x")

    @pytest.mark.asyncio
    async def test_a_failed_commit_leaves_nothing(self, down: S3Blobs, tmp_path: Path) -> None:
        w = down.writer("file-x", max_bytes=BIG)
        w.write(b"data\n")
        with pytest.raises(BlobsUnavailable):
            await w.commit()
        w.abort()
        assert files_under(tmp_path / "t") == []

    @pytest.mark.asyncio
    async def test_a_failed_publish_keeps_the_source(self, down: S3Blobs, tmp_path: Path) -> None:
        source = tmp_path / "out.jsonl"
        source.write_bytes(b"result\n")
        with pytest.raises(BlobsUnavailable):
            await down.publish("file-x", source)
        assert source.read_bytes() == b"result\n"


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")


@pytest.mark.asyncio
async def test_streaming_a_large_blob_keeps_memory_flat(
    moto_s3: MotoS3, prefix: str, tmp_path: Path
) -> None:
    size = 48 << 20
    source = tmp_path / "big.jsonl"
    with open(source, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    blobs = S3Blobs.from_url(f"s3://{moto_s3.bucket}/{prefix}", tmp=tmp_path / "t",
                             cache=tmp_path / "c", environ=moto_s3.env(), part_size=8 << 20)
    await blobs.publish("file-huge", source)
    _reset_peak_rss()
    before = _peak_rss_kib()
    total = 0
    async for chunk in blobs.stream("file-huge", 256 << 10):
        total += len(chunk)
    async for chunk in blobs.open_range("file-huge", 1 << 20, size - 1, chunk_size=256 << 10):
        total += len(chunk)
    assert total == 2 * size - (1 << 20) - 1
    growth_mib = (_peak_rss_kib() - before) / 1024
    assert growth_mib < 24, f"the peak grew by {growth_mib:.0f} MiB streaming 48 MiB"
