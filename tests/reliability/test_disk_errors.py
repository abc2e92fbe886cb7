"""The disk refusing a write: the upload gets a clear 507 in the OpenAI error shape,
nothing half-written stays behind, and the server keeps serving."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import httpx
import openai
import pytest
from barge_process import BargeProcess
from upstream import UpstreamServer

LIMIT = 2 * 1024 * 1024  # bytes any one file of the server may grow to


def _small_disk() -> None:
    """In the child: files stop growing at LIMIT, and writes past it fail (EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_upload_that_does_not_fit_gets_507_and_leaves_nothing(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    proc = BargeProcess(tmp_path / "data", upstream.base_url, preexec=_small_disk)
    proc.start()
    try:
        client = proc.client()
        line = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", ' \
               b'"body": {"model": "m", "messages": []}}\n'
        big = line * (LIMIT // len(line) + 100)
        with pytest.raises(openai.APIStatusError) as info:
            client.files.create(file=("big.jsonl", big), purpose="batch")
        assert info.value.status_code == 507
        error = info.value.body
        assert isinstance(error, dict)
        assert set(error) == {"message", "type", "param", "code"}
        assert "write" in error["message"] or "full" in error["message"]

        assert client.files.list().data == []
        assert list((tmp_path / "data" / "files").iterdir()) == []
        assert list((tmp_path / "data" / "tmp").iterdir()) == []

        small = client.files.create(file=("small.jsonl", line), purpose="batch")
        assert client.files.content(small.id).read() == line
        assert httpx.get(f"http://127.0.0.1:{proc.port}/healthz").status_code == 200
    finally:
        proc.kill()
