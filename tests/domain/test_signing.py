"""Download-link signatures: valid until the expiry, invalid once any part changes."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from barge.domain.signing import DOWNLOAD_PURPOSE, UPLOAD_PURPOSE, expiry, sign, verify

SECRET = "a" * 64
FILE = "file-0123456789abcdef01234567"
OTHER_FILE = "file-0123456789abcdef01234568"
ACCOUNT = "acme"
EXPIRES = 2_000_000_000
NOW = EXPIRES - 60.0


def test_a_fresh_signature_verifies() -> None:
    sig = sign(SECRET, FILE, ACCOUNT, EXPIRES)
    assert len(sig) == 64 and all(c in "0123456789abcdef" for c in sig)
    assert verify(SECRET, FILE, ACCOUNT, EXPIRES, sig, now=NOW)
    assert verify(SECRET, FILE, ACCOUNT, str(EXPIRES), sig, now=NOW)  # as read from a URL


def test_signatures_are_deterministic_and_depend_on_every_part() -> None:
    base = sign(SECRET, FILE, ACCOUNT, EXPIRES)
    assert sign(SECRET, FILE, ACCOUNT, EXPIRES) == base
    others = {
        sign(SECRET, OTHER_FILE, ACCOUNT, EXPIRES),
        sign(SECRET, FILE, "acme2", EXPIRES),
        sign(SECRET, FILE, ACCOUNT, EXPIRES + 1),
        sign("b" * 64, FILE, ACCOUNT, EXPIRES),
    }
    assert base not in others and len(others) == 4


def test_bytes_and_str_secrets_agree() -> None:
    assert sign(SECRET, FILE, ACCOUNT, EXPIRES) == sign(SECRET.encode(), FILE, ACCOUNT, EXPIRES)


def test_expired_is_invalid() -> None:
    sig = sign(SECRET, FILE, ACCOUNT, EXPIRES)
    assert verify(SECRET, FILE, ACCOUNT, EXPIRES, sig, now=EXPIRES - 0.001)
    assert not verify(SECRET, FILE, ACCOUNT, EXPIRES, sig, now=EXPIRES)
    assert not verify(SECRET, FILE, ACCOUNT, EXPIRES, sig, now=EXPIRES + 3600)


@pytest.mark.parametrize(
    ("file_id", "account", "expires"),
    [
        (OTHER_FILE, ACCOUNT, EXPIRES),  # another file
        (FILE, "acme2", EXPIRES),  # another account
        (FILE, "ACME", EXPIRES),  # case matters
        (FILE, ACCOUNT, EXPIRES + 1),  # a later expiry
        (FILE, ACCOUNT, EXPIRES - 1),  # an earlier one
        (FILE, ACCOUNT, f"0{EXPIRES}"),  # same number, other spelling: not canonical
        (FILE, ACCOUNT, f"{EXPIRES}\n"),
    ],
)
def test_each_tampered_part_is_invalid(file_id: str, account: str, expires: int | str) -> None:
    sig = sign(SECRET, FILE, ACCOUNT, EXPIRES)
    assert not verify(SECRET, file_id, account, expires, sig, now=NOW)


def test_tampered_signature_is_invalid() -> None:
    sig = sign(SECRET, FILE, ACCOUNT, EXPIRES)
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    for bad in (flipped, sig.upper(), sig[:-1], sig + "0", "", " " + sig[1:], "0" * 64):
        assert not verify(SECRET, FILE, ACCOUNT, EXPIRES, bad, now=NOW), bad


def test_wrong_secret_is_invalid() -> None:
    sig = sign(SECRET, FILE, ACCOUNT, EXPIRES)
    assert not verify("b" * 64, FILE, ACCOUNT, EXPIRES, sig, now=NOW)
    assert not verify(SECRET + "x", FILE, ACCOUNT, EXPIRES, sig, now=NOW)


def test_a_plain_hmac_of_the_parts_is_not_a_signature() -> None:
    """The signed message is structured, so naive concatenations do not verify."""
    for message in (f"{FILE}{ACCOUNT}{EXPIRES}", f"{FILE}:{ACCOUNT}:{EXPIRES}"):
        forged = hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
        assert not verify(SECRET, FILE, ACCOUNT, EXPIRES, forged, now=NOW)


def test_accounts_cannot_be_shifted_into_the_file_id() -> None:
    sig = sign(SECRET, FILE, "a,b", EXPIRES)
    assert not verify(SECRET, FILE, "a", EXPIRES, sig, now=NOW)
    assert not verify(SECRET, FILE, 'a","b', EXPIRES, sig, now=NOW)


@pytest.mark.parametrize(
    "file_id",
    [
        "",
        "file-",
        "file-0123456789abcdef0123456",  # 23 digits
        "file-0123456789abcdef012345678",  # 25 digits
        "file-0123456789ABCDEF01234567",  # upper case
        "FILE-0123456789abcdef01234567",
        "batch_0123456789abcdef01234567",
        f"{FILE}\n",
        f" {FILE}",
        f"{FILE}/../barge.db",
        "../../barge.db",
        "..%2F..%2Fbarge.db",
        f"{FILE}\x00",
    ],
)
def test_malformed_file_ids_never_sign_or_verify(file_id: str) -> None:
    with pytest.raises(ValueError):
        sign(SECRET, file_id, ACCOUNT, EXPIRES)
    # Even a correct HMAC over the malformed id is refused.
    message = f'["barge-download-v1", "{file_id}", "{ACCOUNT}", {EXPIRES}]'
    forged = hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
    assert not verify(SECRET, file_id, ACCOUNT, EXPIRES, forged, now=NOW)


@pytest.mark.parametrize("expires", ["", "-1", "+2000000000", " 2000000000", "2e9", "1.5",
                                     "0x77359400", "9" * 13, "٢٠٠٠"])
def test_malformed_expiries_are_invalid(expires: str) -> None:
    sig = sign(SECRET, FILE, ACCOUNT, EXPIRES)
    assert not verify(SECRET, FILE, ACCOUNT, expires, sig, now=0)


def test_bool_expiry_is_invalid() -> None:
    sig = sign(SECRET, FILE, ACCOUNT, 1)
    assert not verify(SECRET, FILE, ACCOUNT, True, sig, now=0)


def test_empty_or_huge_accounts_are_invalid() -> None:
    assert not verify(SECRET, FILE, "", EXPIRES, sign(SECRET, FILE, "", EXPIRES), now=NOW)
    huge = "a" * 10_000
    assert not verify(SECRET, FILE, huge, EXPIRES, sign(SECRET, FILE, huge, EXPIRES), now=NOW)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        sign("", FILE, ACCOUNT, EXPIRES)


def test_expiry_is_whole_seconds_at_least_ttl_away() -> None:
    assert expiry(1000.0, 3600) == 4600
    assert expiry(1000.2, 1) == 1002
    for now in (0.0, 0.5, 12345.999):
        e = expiry(now, 10)
        assert isinstance(e, int) and now + 10 <= e < now + 11


def test_a_download_signature_is_not_an_upload_signature() -> None:
    down = sign(SECRET, FILE, ACCOUNT, EXPIRES)
    assert down == sign(SECRET, FILE, ACCOUNT, EXPIRES, purpose=DOWNLOAD_PURPOSE)
    up = sign(SECRET, FILE, ACCOUNT, EXPIRES, purpose=UPLOAD_PURPOSE)
    assert up != down
    assert verify(SECRET, FILE, ACCOUNT, EXPIRES, up, now=NOW, purpose=UPLOAD_PURPOSE)
    assert not verify(SECRET, FILE, ACCOUNT, EXPIRES, up, now=NOW)
    assert not verify(SECRET, FILE, ACCOUNT, EXPIRES, down, now=NOW, purpose=UPLOAD_PURPOSE)


def test_an_unknown_purpose_is_refused() -> None:
    with pytest.raises(ValueError):
        sign(SECRET, FILE, ACCOUNT, EXPIRES, purpose="anything")
