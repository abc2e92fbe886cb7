"""``Store.ping``, on every store: an open store answers, a closed one says so."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from barge.exceptions import StoreUnavailable
from barge.store.protocol import Store


@pytest.mark.asyncio
async def test_ping(store: Store) -> None:
    await store.ping()
    await store.ping(timeout=0.5)


@pytest.mark.asyncio
async def test_ping_of_a_closed_store(make_store: Callable[[], Store]) -> None:
    s = make_store()
    await s.open()
    await s.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await s.ping()
