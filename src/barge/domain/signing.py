"""Signed, expiring download links: an HMAC-SHA256 over (file id, account, expiry).

A link names one file of one account until one moment; changing any of the three, or the
signature, makes it invalid, and so does time passing its expiry. Pure: no I/O, the clock
is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re

FILE_ID = re.compile(r"file-[0-9a-f]{24}")
SIGNATURE = re.compile(r"[0-9a-f]{64}")
# Unix seconds in canonical form: ASCII digits, no sign, spaces or leading zeros.
EXPIRES = re.compile(r"0|[1-9][0-9]{0,11}")
MAX_ACCOUNT_CHARS = 256
# Domain separation: what a signature grants is part of what it signs, so a download link
# can never be replayed as an upload link (or the reverse).
DOWNLOAD_PURPOSE = "barge-download-v1"
UPLOAD_PURPOSE = "barge-upload-v1"
PURPOSES = frozenset({DOWNLOAD_PURPOSE, UPLOAD_PURPOSE})


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the signing secret is empty")
    return key


def _message(purpose: str, file_id: str, account: str, expires: int) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown signing purpose: {purpose!r}")
    # A JSON array is unambiguous whatever characters the account holds.
    return json.dumps([purpose, file_id, account, expires], ensure_ascii=True).encode()


def expiry(now: float, ttl: int) -> int:
    """The expiry of a link made at ``now``: whole seconds, at least ``ttl`` away."""
    return math.ceil(now + ttl)


def sign(
    secret: str | bytes,
    file_id: str,
    account: str,
    expires: int,
    *,
    purpose: str = DOWNLOAD_PURPOSE,
) -> str:
    """The signature (64 lowercase hex digits) of a link to ``file_id`` of ``account``
    valid until ``expires`` (Unix seconds), for ``purpose``."""
    if not FILE_ID.fullmatch(file_id):
        raise ValueError(f"not a file id: {file_id!r}")
    message = _message(purpose, file_id, account, expires)
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def verify(
    secret: str | bytes,
    file_id: str,
    account: str,
    expires: str | int,
    signature: str,
    *,
    now: float,
    purpose: str = DOWNLOAD_PURPOSE,
) -> bool:
    """Whether the link's parts carry a valid, unexpired signature. Every malformed part
    is simply invalid; the comparison of signatures takes constant time."""
    if not FILE_ID.fullmatch(file_id):
        return False
    if not account or len(account) > MAX_ACCOUNT_CHARS:
        return False
    if isinstance(expires, bool):
        return False
    if isinstance(expires, str):
        if not EXPIRES.fullmatch(expires):
            return False
        expires = int(expires)
    if not isinstance(expires, int) or expires < 0:
        return False
    if not isinstance(signature, str) or not SIGNATURE.fullmatch(signature):
        return False
    expected = hmac.new(
        _key(secret), _message(purpose, file_id, account, expires), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return False
    return now < expires
