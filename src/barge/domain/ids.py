"""Object identifiers: an OpenAI-style prefix and 24 random hex digits."""

from __future__ import annotations

import itertools
import random
import secrets

# Object ids need to be unique, not secret: a generator seeded from the OS once is as
# unique as a fresh read of os.urandom per id, at a fraction of the cost. Keys use secrets.
_rng = random.Random(secrets.randbits(128))


def _new(prefix: str) -> str:
    return f"{prefix}{_rng.getrandbits(96):024x}"


def new_file_id() -> str:
    return _new("file-")


def new_batch_id() -> str:
    return _new("batch_")


# Request ids (one per result line, on the hot path) only need to be unique: a random
# per-process half and a counter.
_request_base = f"batch_req_{secrets.randbits(48):012x}"
_request_counter = itertools.count(_rng.getrandbits(32))


def new_request_id() -> str:
    return f"{_request_base}{next(_request_counter) & 0xFFFFFFFFFFFF:012x}"


def new_key_id() -> str:
    return _new("key_")


def new_api_key() -> str:
    """A fresh secret API key; only its hash is ever stored."""
    return "sk-barge-" + secrets.token_urlsafe(32)
