"""Webhook events, signatures, retries and where endpoints may be: the official SDK
verifies what Barge signs, unchanged; the body is exactly OpenAI's; the retry schedule
doubles from seconds to an hour and ends with the retry window."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator

import orjson
import pytest
from openai import InvalidWebhookSignatureError, OpenAI
from openai.types.webhooks import BatchCompletedWebhookEvent, BatchFailedWebhookEvent

from barge.domain.status import TERMINAL, Status
from barge.domain.webhooks import (
    EVENT_FOR_STATUS,
    EVENT_TYPES,
    UrlProblem,
    address_allowed,
    check_events,
    check_url,
    clip_error,
    event_body,
    new_endpoint_id,
    new_event_id,
    new_secret,
    next_attempt,
    retry_delay,
    signature,
    signed_headers,
)

BATCH = "batch_0123456789abcdef01234567"


@pytest.fixture
def sdk() -> Iterator[OpenAI]:
    client = OpenAI(api_key="sk-unused", base_url="http://127.0.0.1:9/v1")
    yield client
    client.close()


def test_the_body_is_openais_event_exactly() -> None:
    body = event_body("evt_1", "batch.completed", 1_700_000_000, BATCH)
    assert body == (b'{"id":"evt_1","object":"event","created_at":1700000000,'
                    b'"type":"batch.completed","data":{"id":"' + BATCH.encode() + b'"}}')
    assert event_body("evt_1", "batch.completed", 1_700_000_000, BATCH) == body


def test_the_sdk_verifies_and_parses_what_barge_signs(sdk: OpenAI) -> None:
    secret, event_id, now = new_secret(), new_event_id(), int(time.time())
    body = event_body(event_id, "batch.completed", now, BATCH)
    headers = signed_headers(secret, event_id, now, body)
    event = sdk.webhooks.unwrap(body, headers, secret=secret)
    assert isinstance(event, BatchCompletedWebhookEvent)
    assert (event.id, event.type, event.created_at, event.data.id, event.object) == (
        event_id, "batch.completed", now, BATCH, "event")
    # As text too, and for another type.
    failed = event_body(event_id, "batch.failed", now, BATCH)
    parsed = sdk.webhooks.unwrap(failed.decode(), signed_headers(secret, event_id, now, failed),
                                 secret=secret)
    assert isinstance(parsed, BatchFailedWebhookEvent)


def test_the_sdk_refuses_anything_changed(sdk: OpenAI) -> None:
    secret, event_id, now = new_secret(), new_event_id(), int(time.time())
    body = event_body(event_id, "batch.completed", now, BATCH)
    headers = signed_headers(secret, event_id, now, body)
    changed = [
        (body.replace(b"completed", b"cancelled"), headers, secret),
        (body, headers | {"webhook-id": new_event_id()}, secret),
        (body, headers | {"webhook-timestamp": str(now + 1)}, secret),
        (body, headers, new_secret()),
        (body, signed_headers(secret, event_id, now - 3600, body), secret),  # too old
    ]
    for payload, h, s in changed:
        with pytest.raises(InvalidWebhookSignatureError):
            sdk.webhooks.unwrap(payload, h, secret=s)


def test_the_signature_is_standard_webhooks() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"a":1}'
    mac = hmac.new(b"k" * 32, b"msg_1.1700000000." + body, hashlib.sha256).digest()
    assert signature(secret, "msg_1", 1_700_000_000, body) == "v1," + base64.b64encode(
        mac).decode()
    headers = signed_headers(secret, "msg_1", 1_700_000_000, body)
    assert headers == {"webhook-id": "msg_1", "webhook-timestamp": "1700000000",
                       "webhook-signature": signature(secret, "msg_1", 1_700_000_000, body),
                       "content-type": "application/json"}


def test_ids_and_secrets() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert secret != new_secret()
    assert new_event_id().startswith("evt_") and len(new_event_id()) == 36
    assert new_endpoint_id().startswith("we_") and new_endpoint_id() != new_endpoint_id()


def test_every_terminal_status_tells_one_event() -> None:
    assert set(EVENT_FOR_STATUS) == set(TERMINAL)
    assert EVENT_FOR_STATUS[Status.COMPLETED] == "batch.completed"
    assert EVENT_FOR_STATUS[Status.HASH_MISMATCH] == "batch.failed"
    assert EVENT_FOR_STATUS[Status.VALIDATION_FAILED] == "batch.failed"
    assert EVENT_FOR_STATUS[Status.EXPIRED] == "batch.expired"
    assert EVENT_FOR_STATUS[Status.CANCELLED] == "batch.cancelled"
    assert set(EVENT_FOR_STATUS.values()) == set(EVENT_TYPES)


def test_retries_double_from_the_base_to_the_cap() -> None:
    plain = [retry_delay(n, base=1, cap=3600, jitter=0.5) for n in range(1, 16)]
    assert plain[:5] == [1, 2, 4, 8, 16]
    assert plain[-1] == 3600 and max(plain) == 3600
    assert retry_delay(10**6, base=1, cap=3600, jitter=0.5) == 3600
    assert retry_delay(1, base=1, cap=3600, jitter=0) == 0.75
    assert retry_delay(1, base=1, cap=3600, jitter=1) == 1.25
    with pytest.raises(ValueError):
        retry_delay(0, base=1, cap=3600, jitter=0.5)


def test_retries_go_on_for_the_window_then_stop() -> None:
    window = 72 * 3600.0
    age, attempts = 0.0, 0
    while True:
        attempts += 1
        wait = next_attempt(attempts, age=age, retry_for=window, base=1, cap=3600,
                            jitter=0.5)
        if wait is None:
            break
        age += wait
    assert window - 3600 < age <= window
    assert 80 < attempts < 90  # a dozen quick ones, then hourly
    assert next_attempt(1, age=window - 0.5, retry_for=window, base=1, cap=3600,
                        jitter=0.5) is None


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "0.0.0.0", "224.0.0.1", "239.255.255.250", "100.64.0.1", "255.255.255.255",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1",
    "::ffff:10.1.2.3", "2002:7f00:1::", "64:ff9b::7f00:1", "not-an-ip",
])
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert not address_allowed(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1",
                                     "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_allowed(address)


def test_urls() -> None:
    assert check_url("https://hooks.example.com/in?x=1") == ("hooks.example.com", 443)
    assert check_url("http://Example.COM:8080/") == ("example.com", 8080)
    assert check_url("http://[::1]:9/x") == ("::1", 9)
    for bad in ("ftp://example.com/", "http://", "https:///path", "example.com/x",
                "http://exa mple.com/", "http://example.com:99999/", "", "h" * 3000,
                "javascript:alert(1)", "file:///etc/passwd"):
        with pytest.raises(UrlProblem) as e:
            check_url(bad)
        assert e.value.code == "invalid_url"


def test_events() -> None:
    assert check_events(None) == EVENT_TYPES
    assert check_events(["batch.failed", "batch.completed"]) == (
        "batch.completed", "batch.failed")
    for bad in ([], "batch.completed", ["batch.nope"], ["batch.failed", "batch.failed"],
                [1], {"batch.completed": True}):
        with pytest.raises(ValueError):
            check_events(bad)


def test_errors_are_kept_short_on_one_line() -> None:
    assert clip_error("a\n b\tc") == "a b c"
    assert len(clip_error("x" * 10_000)) == 500


def test_the_body_is_plain_json() -> None:
    parsed = orjson.loads(event_body("evt_x", "batch.expired", 5, BATCH))
    assert parsed == {"id": "evt_x", "object": "event", "created_at": 5,
                      "type": "batch.expired", "data": {"id": BATCH}}
