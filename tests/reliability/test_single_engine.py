"""One engine per data directory: a second barge on the same directory refuses to start
(two engines would send every request twice), and the first keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from barge_process import BargeProcess
from upstream import UpstreamServer


def test_second_engine_on_the_same_data_dir_refuses_to_start(
    tmp_path: Path, barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    first = barge_factory(upstream.base_url)
    second = BargeProcess(tmp_path / "data", upstream.base_url,
                          log_path=tmp_path / "second.log")
    with pytest.raises(RuntimeError, match="barge exited"):
        second.start()
    assert "Another barge process runs the engine" in second.log()
    assert second.proc is not None and second.proc.returncode != 0

    client = first.client()
    f = client.files.create(file=("a.jsonl", b'{"custom_id": "a", "method": "POST", '
                            b'"url": "/v1/chat/completions", "body": {"model": "m"}}\n'),
                            purpose="batch")
    assert client.files.retrieve(f.id).bytes > 0

    first.kill()  # a crashed engine's lock dies with it
    restarted = BargeProcess(tmp_path / "data", upstream.base_url).start()
    try:
        assert restarted.client().files.retrieve(f.id).id == f.id
    finally:
        restarted.kill()
