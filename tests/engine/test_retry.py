"""The pure retry rules in barge.engine.retry."""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict

from barge.engine.retry import backoff, is_retryable_status, retry_after


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 201, 400, 401, 403, 404, 413, 422])
def test_non_retryable_statuses(status: int) -> None:
    assert not is_retryable_status(status)


@pytest.mark.parametrize(("base", "cap"), [(0.5, 60.0), (0.01, 0.05), (1.0, 3.0), (0.0, 10.0)])
def test_backoff_is_full_jitter_bounded_by_the_exponential_cap(base: float, cap: float) -> None:
    rng = random.Random(1234)
    for attempt in range(1, 16):
        bound = min(cap, base * 2 ** (attempt - 1))
        samples = [backoff(attempt, base=base, cap=cap, rng=rng) for _ in range(300)]
        assert all(0.0 <= s <= bound for s in samples), (attempt, bound, max(samples))
        if bound > 0:
            # full jitter: spread over the whole range, not clustered near the bound
            assert min(samples) < 0.1 * bound
            assert max(samples) > 0.9 * bound


def test_backoff_is_deterministic_for_a_seeded_rng() -> None:
    a = [backoff(n, base=0.5, cap=60, rng=random.Random(7)) for n in range(1, 10)]
    b = [backoff(n, base=0.5, cap=60, rng=random.Random(7)) for n in range(1, 10)]
    assert a == b


def test_backoff_at_the_largest_configurable_attempt_does_not_overflow() -> None:
    # the CLI allows --max-attempts up to 100
    v = backoff(100, base=0.5, cap=60.0, rng=random.Random(0))
    assert 0.0 <= v <= 60.0


def h(**headers: str) -> CIMultiDict[str]:
    return CIMultiDict((k.replace("_", "-"), v) for k, v in headers.items())


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("1", 1.0), ("30", 30.0), ("0.2", 0.2), (" 5 ", 5.0), ("-3", 0.0)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert retry_after(h(Retry_After=value)) == pytest.approx(expected)


def test_retry_after_header_name_is_case_insensitive() -> None:
    assert retry_after(h(RETRY_AFTER="4")) == 4.0
    assert retry_after(h(retry_after="4")) == 4.0
    assert retry_after(h(Retry_After_Ms="250")) == pytest.approx(0.25)


def test_retry_after_http_date() -> None:
    now = float(int(time.time()))
    when = datetime.fromtimestamp(now + 42, tz=UTC)
    value = format_datetime(when, usegmt=True)
    assert value.endswith("GMT")
    assert retry_after(h(Retry_After=value), now=now) == pytest.approx(42.0)


def test_retry_after_http_date_without_now_uses_the_clock() -> None:
    value = format_datetime(datetime.fromtimestamp(time.time() + 100, tz=UTC), usegmt=True)
    got = retry_after(h(Retry_After=value))
    assert got is not None and 97.0 <= got <= 100.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    now = float(int(time.time()))
    value = format_datetime(datetime.fromtimestamp(now - 600, tz=UTC), usegmt=True)
    assert retry_after(h(Retry_After=value), now=now) == 0.0


def test_retry_after_ms_takes_precedence() -> None:
    assert retry_after(h(Retry_After="10", Retry_After_Ms="250")) == pytest.approx(0.25)
    assert retry_after(h(Retry_After_Ms="1500")) == pytest.approx(1.5)
    assert retry_after(h(Retry_After_Ms="-5")) == 0.0


def test_unreadable_retry_after_ms_falls_back_to_retry_after() -> None:
    assert retry_after(h(Retry_After="3", Retry_After_Ms="soon")) == 3.0
    assert retry_after(h(Retry_After_Ms="soon")) is None


@pytest.mark.parametrize("value", ["soon", "", "tomorrow at noon", "Mon, 99 Foo 2024", "1s"])
def test_garbage_retry_after_is_none(value: str) -> None:
    assert retry_after(h(Retry_After=value)) is None


def test_no_header_is_none() -> None:
    assert retry_after(h()) is None
    assert retry_after(h(Content_Type="application/json")) is None


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e400", "nan"])
def test_non_finite_retry_after_never_means_wait_forever(value: str) -> None:
    """Retry-After is delay-seconds (digits) or an HTTP date (RFC 9110 §10.2.3). Python's
    float() also accepts 'inf'/'nan'/'1e400'; a non-finite wait would put the dispatcher
    into asyncio.sleep(inf), so that request, and its batch's cancel or expiry, never ends."""
    for headers in (h(Retry_After=value), h(Retry_After_Ms=value)):
        got = retry_after(headers)
        assert got is None or math.isfinite(got), (headers, got)
