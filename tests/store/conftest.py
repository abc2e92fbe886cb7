"""Fixtures of the store tests: this run's PostgreSQL database (see ``pg_support``)."""

from pg_support import pg_database

__all__ = ["pg_database"]
