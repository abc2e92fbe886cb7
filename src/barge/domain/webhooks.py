"""Webhooks for batch events, as OpenAI sends them: the events, their bodies, Standard
Webhooks signatures, the retry schedule, and which addresses an endpoint may have.

Pure: no I/O; clocks and randomness are parameters. The records are what the store
keeps: an endpoint an account registered, and one delivery of one event to one endpoint
(the outbox row the sender works from).

A delivery is signed per Standard Webhooks (what ``openai.OpenAI().webhooks.unwrap``
verifies): ``webhook-id`` is the event id (the same on every retry), ``webhook-timestamp``
the Unix seconds of the attempt, and ``webhook-signature`` ``v1,<base64 HMAC-SHA256>``
over ``"{id}.{timestamp}.{body}"``, keyed with the base64-decoded part of the endpoint's
secret after ``whsec_``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import orjson

from barge.domain.status import Status


class EventType(StrEnum):
    """The batch events an endpoint may subscribe to."""

    COMPLETED = "batch.completed"  # every request has a result
    FAILED = "batch.failed"  # a bad line, or the input's hash did not match
    EXPIRED = "batch.expired"  # the completion window ran out
    CANCELLED = "batch.cancelled"  # stopped by a cancel


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)

# The event a batch entering each of these (terminal) statuses sends.
EVENT_FOR_STATUS: dict[Status, EventType] = {
    Status.COMPLETED: EventType.COMPLETED,
    Status.HASH_MISMATCH: EventType.FAILED,
    Status.VALIDATION_FAILED: EventType.FAILED,
    Status.EXPIRED: EventType.EXPIRED,
    Status.CANCELLED: EventType.CANCELLED,
}


class DeliveryStatus(StrEnum):
    """Where one delivery of one event to one endpoint stands."""

    PENDING = "pending"  # not attempted yet (or its first attempt is under way)
    FAILING = "failing"  # attempted and failed; another attempt is due later
    DELIVERED = "delivered"  # terminal: the endpoint answered 2xx
    GIVEN_UP = "given_up"  # terminal: failed for the whole retry window, or endpoint deleted


# Statuses the sender still has work for.
OPEN_DELIVERY = (DeliveryStatus.PENDING.value, DeliveryStatus.FAILING.value)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MAX_URL_CHARS = 2048
MAX_ERROR_CHARS = 500  # of ``last_error``
ENDPOINT_DELETED = "The webhook endpoint was deleted."


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """An account's endpoint: where its batches' events go, and the secret that signs
    them."""

    id: str
    account: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: int


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event for one endpoint, as ``GET /v1/batches/{id}/webhook_deliveries`` shows
    it. Times are Unix seconds (``created_at``: the event's)."""

    event_id: str
    type: str
    batch_id: str
    account: str
    endpoint_id: str
    url: str
    attempts: int
    status: DeliveryStatus
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: float | None
    next_attempt_at: float | None
    delivered_at: float | None
    created_at: int


@dataclass(frozen=True, slots=True)
class WebhookClaim:
    """A delivery a sender claimed for one attempt (``claim_webhook_deliveries``): what
    it needs to send it, and ``claimer``, under which its outcome is recorded."""

    event_id: str
    type: str
    batch_id: str
    endpoint_id: str
    url: str
    secret: str
    attempts: int  # made before this one
    created_at: int  # the event's
    claimer: str


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """How one attempt ended. ``retry_in``: seconds until the next attempt, when it failed
    and is to be tried again; None with ``delivered`` false: given up."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None
    retry_in: float | None = None


# -- ids and secrets -------------------------------------------------------------------


def new_endpoint_id() -> str:
    return "we_" + secrets.token_hex(16)


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(16)


def new_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


# -- the event and its signature ---------------------------------------------------------


def event_body(event_id: str, type_: str, created_at: int, batch_id: str) -> bytes:
    """The event as sent: the same bytes on every attempt."""
    return orjson.dumps({"id": event_id, "object": "event", "created_at": int(created_at),
                         "type": type_, "data": {"id": batch_id}})


def _key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``"{msg_id}.{timestamp}.{body}"``."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, with the body's content type."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature(secret, msg_id, int(timestamp), body),
        "content-type": "application/json",
    }


# -- retries ------------------------------------------------------------------------------


def retry_delay(attempts: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: ``base`` doubling
    with each (1, 2, 4, 8 … for base 1), at most ``cap``, times a jitter factor between
    0.75 and 1.25 (``jitter`` from 0 to 1), so that endpoints coming back are not hit by
    every retry at once."""
    if attempts < 1:
        raise ValueError("a retry follows at least one attempt")
    exponent = min(attempts - 1, 64)  # 2**64 s is past any cap
    return min(cap, base * 2.0**exponent) * (0.75 + 0.5 * min(max(jitter, 0.0), 1.0))


def next_attempt(attempts: int, *, age: float, retry_for: float, base: float, cap: float,
                 jitter: float) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones, for an event
    ``age`` seconds old; None when that would fall past ``retry_for`` seconds after the
    event (give up)."""
    delay = retry_delay(attempts, base=base, cap=cap, jitter=jitter)
    return None if age + delay > retry_for else delay


# -- where an endpoint may be ---------------------------------------------------------------


class UrlProblem(ValueError):
    """Why a URL cannot be an endpoint; ``code`` is the API's error code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def check_url(url: str) -> tuple[str, int]:
    """The host and port of an endpoint URL: http or https, with a host. Raises
    UrlProblem (code ``invalid_url``) otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise UrlProblem(f"The url must be a string of 1 to {MAX_URL_CHARS} characters.",
                         "invalid_url")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise UrlProblem("The url must not contain spaces or control characters.",
                         "invalid_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UrlProblem(f"The url is not valid: {e}.", "invalid_url") from None
    if parts.scheme not in ("http", "https"):
        raise UrlProblem("The url must start with http:// or https://.", "invalid_url")
    host = parts.hostname
    if not host:
        raise UrlProblem("The url must name a host.", "invalid_url")
    return host, port or (443 if parts.scheme == "https" else 80)


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address when it is one (IPv6 without brackets or zone)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def address_allowed(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an endpoint may be at ``address``: a public unicast address, not a
    private, loopback, link-local, unspecified, multicast or otherwise reserved one
    (an IPv6 address that maps or embeds an IPv4 one is judged by that one too)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) \
            else address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not address_allowed(embedded):
            return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified
                or ip.is_multicast or ip.is_reserved or not ip.is_global)


def check_events(events: object) -> tuple[str, ...]:
    """The event types of a registration: a non-empty list of known, distinct names (in
    the order of ``EVENT_TYPES``); None means all four. Raises ValueError, with the
    message to show, otherwise."""
    if events is None:
        return EVENT_TYPES
    if not isinstance(events, list) or not events \
            or not all(isinstance(e, str) for e in events):
        raise ValueError("'events' must be a non-empty list of event types: "
                         + ", ".join(EVENT_TYPES) + ".")
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"Unknown event type {unknown[0]!r}; the types are "
                         + ", ".join(EVENT_TYPES) + ".")
    if len(set(events)) != len(events):
        raise ValueError("'events' lists an event type twice.")
    return tuple(e for e in EVENT_TYPES if e in events)


def clip_error(message: str) -> str:
    """An attempt's error as ``last_error`` keeps it: one line, at most
    ``MAX_ERROR_CHARS``."""
    text = " ".join(message.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
