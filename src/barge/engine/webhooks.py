"""The webhook sender: delivers the outbox of batch events (``Store.claim_webhook_
deliveries``) to the endpoints accounts registered, signed per Standard Webhooks.

It runs beside the engine on every node that runs one, with its own HTTP session, so an
endpoint that is slow or down never holds up a batch. Every ``poll_interval`` it claims
what is due (a claim is a lease: of several nodes, one sends a given event at a time),
sends each in a task of its own (at most ``webhook_concurrency`` at once, each attempt
cut off after ``webhook_timeout``), and records how it went: a 2xx is delivered;
anything else — another status (redirects are not followed), a timeout, a broken
connection, an address refused — is tried again after 1, 2, 4, 8 … seconds (times
``webhook_backoff_base``, at most an hour, ±25 % jitter) until ``webhook_retry_hours``
after the event, then given up. All of it lives in the store, so retries go on across
restarts, and an event is sent again only when a node died between the endpoint's
answer and its record (at least once).

Where an endpoint may be is checked again at each attempt: the connection goes only to
addresses the check let through (the resolver refuses the others, so a name that now
resolves to a private address is refused, not followed), unless
``--webhook-allow-private``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import socket
import time

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from barge.domain.webhooks import (
    UrlProblem,
    WebhookAttempt,
    WebhookClaim,
    address_allowed,
    check_url,
    event_body,
    literal_address,
    next_attempt,
    signed_headers,
)
from barge.metrics import Metrics
from barge.settings import Settings
from barge.store.protocol import Store

log = logging.getLogger("barge.webhooks")

LEASE_SLACK = 30.0  # seconds a claim outlives the attempt's own timeout
ANSWER_BYTES = 4096  # of an endpoint's answer, read for last_error; the rest is not read
ERROR_SNIPPET = 200  # characters of a failed answer's body kept in last_error
PURGE_INTERVAL = 3600.0  # seconds between purges of old done deliveries
RETENTION = 30 * 86400.0  # seconds done deliveries stay visible
WAITING_LOG_INTERVAL = 30.0  # seconds between "cannot reach the store" lines
USER_AGENT = "Barge-Webhooks/1"
NOT_ALLOWED = "webhook_url_not_allowed"


class AddressRefused(OSError):
    """An endpoint's host is, or resolves to, an address endpoints may not have."""


async def url_refusal(url: str, *, allow_private: bool) -> tuple[str, str] | None:
    """Why ``url`` cannot be an endpoint now, as (message, error code); None: it can. Its
    form (``check_url``), and unless ``allow_private``, every address its host is or
    resolves to now (``address_allowed``)."""
    try:
        host, port = check_url(url)
    except UrlProblem as e:
        return str(e), e.code
    if allow_private:
        return None
    ip = literal_address(host)
    if ip is not None:
        if address_allowed(ip):
            return None
        return f"{host} is not a public address.", NOT_ALLOWED
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
    except OSError as e:
        return f"The host {host} cannot be resolved ({e}).", "invalid_url"
    for *_, address in infos:
        if not address_allowed(str(address[0])):
            return f"{host} resolves to {address[0]}, not a public address.", NOT_ALLOWED
    return None


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing a name any of whose addresses endpoints may
    not have: the connection only ever goes to addresses that passed the check."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for r in found:
            if not address_allowed(r["host"]):
                raise AddressRefused(
                    f"{host} resolves to {r['host']}, not a public address ({NOT_ALLOWED})")
        return found

    async def close(self) -> None:
        await self._inner.close()


class WebhookSender:
    """Claims due deliveries and sends them; one per node that runs the engine."""

    def __init__(self, store: Store, settings: Settings, *, node: str,
                 metrics: Metrics | None = None) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        # Unique per run: a claim left by an earlier run of this node is not ours.
        self._claimer = f"{node}/{secrets.token_hex(4)}"
        self._lease = settings.webhook_timeout + LEASE_SLACK
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_waiting = 0.0

    async def start(self) -> None:
        s = self._settings
        connector = aiohttp.TCPConnector(
            limit=s.webhook_concurrency,
            resolver=None if s.webhook_allow_private else GuardedResolver(),
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=s.webhook_timeout),
            headers={"User-Agent": USER_AGENT}, auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._task = asyncio.create_task(self._loop(), name="barge-webhooks")

    def wake(self) -> None:
        """Look for due deliveries now."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop sending: attempts under way are cut off and their claims given back, so
        another node (or the next start) sends them at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._store.release_webhook_claims(self._claimer)
        except Exception as e:  # they expire by themselves
            log.warning("cannot give back webhook claims: %s", e)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the loop ---------------------------------------------------------------------

    async def _loop(self) -> None:
        s = self._settings
        next_purge = time.monotonic()
        while True:
            self._wake.clear()
            free = s.webhook_concurrency - len(self._in_flight)
            if free > 0:
                await self._claim(free)
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + PURGE_INTERVAL
                try:
                    await self._store.purge_webhook_deliveries(older_than=RETENTION)
                except Exception as e:
                    log.warning("cannot purge old webhook deliveries: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), s.webhook_poll_interval)

    async def _claim(self, limit: int) -> None:
        try:
            claims = await self._store.claim_webhook_deliveries(
                self._claimer, limit=limit, lease_seconds=self._lease)
        except Exception as e:
            now = time.monotonic()
            if now - self._last_waiting >= WAITING_LOG_INTERVAL:
                self._last_waiting = now
                log.warning("cannot look for webhook deliveries (trying again): %s", e)
            return
        for claim in claims:
            key = (claim.event_id, claim.endpoint_id)
            if key in self._in_flight:
                continue
            task = asyncio.create_task(self._deliver(claim),
                                       name=f"webhook-{claim.event_id}-{claim.endpoint_id}")
            self._in_flight[key] = task
            task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: tuple[str, str], _: asyncio.Task[None]) -> None:
        self._in_flight.pop(key, None)
        self._wake.set()  # a slot is free

    # -- one delivery -----------------------------------------------------------------

    async def _deliver(self, claim: WebhookClaim) -> None:
        try:
            await self._deliver_once(claim)
        except Exception:  # its claim runs out, and it is tried again then
            log.exception("webhook %s to %s: the attempt failed unexpectedly",
                          claim.event_id, claim.endpoint_id)

    async def _deliver_once(self, claim: WebhookClaim) -> None:
        s = self._settings
        status, error = await self._attempt(claim)
        delivered = error is None
        if delivered:
            attempt = WebhookAttempt(True, status)
        else:
            retry_in = next_attempt(
                claim.attempts + 1, age=time.time() - claim.created_at,
                retry_for=s.webhook_retry_hours * 3600.0, base=s.webhook_backoff_base,
                cap=s.webhook_backoff_max, jitter=random.random(),
            )
            attempt = WebhookAttempt(False, status, error, retry_in)
        try:
            recorded = await self._store.record_webhook_attempt(claim, attempt)
        except Exception as e:  # the claim runs out and the delivery is tried again
            log.warning("webhook %s to %s: cannot record the attempt: %s", claim.event_id,
                        claim.endpoint_id, e)
            return
        if not recorded:  # the endpoint was deleted, or the claim was taken over
            return
        outcome = "delivered" if delivered else "failed" if attempt.retry_in is not None \
            else "given_up"
        if self._metrics is not None:
            self._metrics.webhook_delivery(outcome)
        if delivered:
            log.info("webhook %s (%s of %s) delivered to %s", claim.event_id, claim.type,
                     claim.batch_id, claim.endpoint_id)
        elif attempt.retry_in is not None:
            log.info("webhook %s to %s failed (attempt %d, next in %.1fs): %s",
                     claim.event_id, claim.endpoint_id, claim.attempts + 1,
                     attempt.retry_in, error)
        else:
            log.warning("webhook %s to %s given up after %d attempts: %s", claim.event_id,
                        claim.endpoint_id, claim.attempts + 1, error)

    async def _attempt(self, claim: WebhookClaim) -> tuple[int | None, str | None]:
        """Send once: (the answer's status, None) when it was a 2xx, else (its status or
        None, why it failed)."""
        s = self._settings
        session = self._session
        assert session is not None
        body = event_body(claim.event_id, claim.type, claim.created_at, claim.batch_id)
        headers = signed_headers(claim.secret, claim.event_id, int(time.time()), body)
        try:
            host, _ = check_url(claim.url)
        except UrlProblem as e:
            return None, f"{e} ({NOT_ALLOWED})"
        ip = literal_address(host)
        if not s.webhook_allow_private and ip is not None and not address_allowed(ip):
            return None, f"{host} is not a public address ({NOT_ALLOWED})"
        try:
            async with session.post(claim.url, data=body, headers=headers,
                                    allow_redirects=False) as answer:
                if 200 <= answer.status < 300:
                    return answer.status, None
                snippet = b""
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    snippet = await answer.content.read(ANSWER_BYTES)
                text = snippet.decode("utf-8", "replace")[:ERROR_SNIPPET].strip()
                return answer.status, f"The endpoint answered HTTP {answer.status}" + (
                    f": {text}" if text else ".")
        except TimeoutError:
            return None, f"No answer within {s.webhook_timeout:g} s (timeout)."
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, AddressRefused):
                return None, f"Refused: {e.os_error}"
            return None, f"Cannot connect to {host}: {e.os_error or e}"
        except aiohttp.ClientError as e:
            return None, f"{type(e).__name__}: {e}"
        except (OSError, ValueError) as e:
            return None, f"{type(e).__name__}: {e}"
