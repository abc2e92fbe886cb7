"""Fixtures of the store tests: this run's PostgreSQL database (see ``pg_support``), and
the contract suite's stores (``make_store``, ``store``, ``second``: one of each store of
``STORE_FACTORIES``), for the contract's modules besides test_store_contract.py."""

from pg_support import pg_database
from store.test_store_contract import make_store, second, store

__all__ = ["make_store", "pg_database", "second", "store"]
