"""The Store contract, continued: account weights, an account's share of the upstream
when accounts compete for it, and its optional limits (``AccountSettings``). Every store
of ``STORE_FACTORIES`` (test_store_contract.py) runs it, with that module's fixtures
(through conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from store.test_store_contract import ACCT, OTHER

from barge.store.protocol import AccountSettings, Store


class TestAccountWeights:
    @pytest.mark.asyncio
    async def test_none_until_one_is_set(self, store: Store) -> None:
        assert await store.account_weights() == {}

    @pytest.mark.asyncio
    async def test_set_and_read_back(self, store: Store) -> None:
        await store.set_account_weight(ACCT, 3)
        await store.set_account_weight(OTHER, 0.25)
        weights = await store.account_weights()
        assert weights == {ACCT: 3.0, OTHER: 0.25}
        assert all(type(w) is float for w in weights.values())

    @pytest.mark.asyncio
    async def test_setting_again_replaces_the_weight(self, store: Store) -> None:
        await store.set_account_weight(ACCT, 2.5)
        await store.set_account_weight(ACCT, 1000)
        await store.set_account_weight(ACCT, 0.001)
        assert await store.account_weights() == {ACCT: 0.001}

    @pytest.mark.asyncio
    async def test_an_account_needs_no_keys_or_batches(self, store: Store) -> None:
        """A weight may be set before the account has anything; other verbs ignore it."""
        await store.set_account_weight("team-new", 7)
        assert await store.account_weights() == {"team-new": 7.0}
        assert await store.list_keys() == []
        assert await store.list_roles("team-new") == []

    @pytest.mark.asyncio
    async def test_exact_fractions_survive(self, store: Store) -> None:
        weight = 1 / 3
        await store.set_account_weight(ACCT, weight)
        assert await store.account_weights() == {ACCT: weight}

    @pytest.mark.asyncio
    async def test_every_store_on_the_data_sees_it(self, store: Store,
                                                   second: Store) -> None:
        await store.set_account_weight(ACCT, 4)
        assert await second.account_weights() == {ACCT: 4.0}
        await second.set_account_weight(ACCT, 5)
        await second.set_account_weight(OTHER, 6)
        assert await store.account_weights() == {ACCT: 5.0, OTHER: 6.0}

    @pytest.mark.asyncio
    async def test_concurrent_setters_leave_one_of_their_values(
        self, store: Store, second: Store
    ) -> None:
        values = [float(v) for v in range(1, 21)]
        await asyncio.gather(*(
            (store if i % 2 else second).set_account_weight(ACCT, v)
            for i, v in enumerate(values)
        ))
        weights = await store.account_weights()
        assert set(weights) == {ACCT} and weights[ACCT] in values
        assert await second.account_weights() == weights

    @pytest.mark.asyncio
    async def test_weights_outlast_a_restart(self, make_store: Callable[[], Store]) -> None:
        first = make_store()
        await first.open()
        try:
            await first.set_account_weight(ACCT, 12.5)
        finally:
            await first.close()
        again = make_store()
        await again.open()
        try:
            assert await again.account_weights() == {ACCT: 12.5}
        finally:
            await again.close()


class TestAccountSettings:
    @pytest.mark.asyncio
    async def test_none_until_some_are_set(self, store: Store) -> None:
        assert await store.account_settings() == {}

    @pytest.mark.asyncio
    async def test_set_and_read_back(self, store: Store) -> None:
        full = AccountSettings(2.5, max_in_flight=3, tokens_per_minute=10**12)
        await store.set_account_settings(ACCT, full)
        await store.set_account_settings(OTHER, AccountSettings(tokens_per_minute=600))
        settings = await store.account_settings()
        assert settings == {ACCT: full, OTHER: AccountSettings(1.0, None, 600)}
        assert all(type(s.weight) is float for s in settings.values())
        assert type(settings[ACCT].max_in_flight) is int
        assert type(settings[ACCT].tokens_per_minute) is int
        assert await store.account_weights() == {ACCT: 2.5, OTHER: 1.0}

    @pytest.mark.asyncio
    async def test_setting_again_replaces_all_of_them(self, store: Store) -> None:
        await store.set_account_settings(ACCT, AccountSettings(4, 2, 100))
        await store.set_account_settings(ACCT, AccountSettings(0.5, None, 7))
        assert await store.account_settings() == {ACCT: AccountSettings(0.5, None, 7)}
        await store.set_account_settings(ACCT, AccountSettings(0.5))
        assert await store.account_settings() == {ACCT: AccountSettings(0.5)}

    @pytest.mark.asyncio
    async def test_setting_a_weight_keeps_the_limits(self, store: Store) -> None:
        await store.set_account_settings(ACCT, AccountSettings(4, 2, 100))
        await store.set_account_weight(ACCT, 9)
        await store.set_account_weight(OTHER, 3)
        assert await store.account_settings() == {ACCT: AccountSettings(9, 2, 100),
                                                   OTHER: AccountSettings(3)}

    @pytest.mark.asyncio
    async def test_every_store_on_the_data_sees_them(self, store: Store,
                                                     second: Store) -> None:
        await store.set_account_settings(ACCT, AccountSettings(1, 5, None))
        assert await second.account_settings() == {ACCT: AccountSettings(1, 5, None)}
        await second.set_account_settings(ACCT, AccountSettings(1, None, 60))
        assert await store.account_settings() == {ACCT: AccountSettings(1, None, 60)}

    @pytest.mark.asyncio
    async def test_settings_outlast_a_restart(self, make_store: Callable[[], Store]) -> None:
        first = make_store()
        await first.open()
        try:
            await first.set_account_settings(ACCT, AccountSettings(1 / 3, 1, 2**40))
        finally:
            await first.close()
        again = make_store()
        await again.open()
        try:
            assert await again.account_settings() == {ACCT: AccountSettings(1 / 3, 1, 2**40)}
        finally:
            await again.close()
