"""rechunk: any stream of pieces, cut into chunks of exactly one size (the last shorter)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from barge.blobs.common import rechunk


async def pieces(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    pos = 0
    for n in sizes:
        yield data[pos : pos + n]
        pos += n
    if pos < len(data):
        yield data[pos:]


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", range(30))
async def test_random_pieces(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(0, 5000))
    sizes = [rng.choice([0, 1, 7, 100, 333, 1000, 1001, 2500]) for _ in range(rng.randrange(12))]
    size = rng.choice([1, 10, 333, 1000, 4096])
    chunks = [c async for c in rechunk(pieces(data, sizes), size)]
    assert b"".join(chunks) == data
    assert all(len(c) == size for c in chunks[:-1])
    assert all(0 < len(c) <= size for c in chunks)


@pytest.mark.asyncio
async def test_nothing_in_nothing_out() -> None:
    assert [c async for c in rechunk(pieces(b"", []), 10)] == []
