"""Object identifiers: an OpenAI-style prefix and 24 random hex digits."""

from __future__ import annotations

import secrets


def _new(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def new_file_id() -> str:
    return _new("file-")


def new_batch_id() -> str:
    return _new("batch_")


def new_request_id() -> str:
    return _new("batch_req_")


def new_key_id() -> str:
    return _new("key_")


def new_api_key() -> str:
    """A fresh secret API key; only its hash is ever stored."""
    return "sk-barge-" + secrets.token_urlsafe(32)
