"""Fixtures of the blob tests: one moto S3 server for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto_s3 import MotoS3


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()
