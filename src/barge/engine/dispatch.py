"""Runs one request line against the upstream: send, classify, retry, and build its result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from barge.domain.ids import new_request_id
from barge.domain.results import ResultCodes, error_line, output_line
from barge.domain.usage import NO_USAGE, Usage, usage_of
from barge.engine.limiter import AdaptiveLimiter, Outcome
from barge.engine.retry import backoff, is_retryable_status, retry_after
from barge.exceptions import UpstreamError
from barge.upstreams.client import Reply, UpstreamClient, UpstreamTimeout, UpstreamUnreachable

log = logging.getLogger("barge.dispatch")


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool  # True: an output-file line; False: an error-file line
    line: bytes
    usage: Usage = NO_USAGE  # tokens the upstream reported for a success


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    backoff_base: float
    backoff_max: float


def _json_or_none(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _error_body(data: bytes) -> Any:
    """An upstream's error body as JSON where it is JSON, else as (truncated) text."""
    parsed = _json_or_none(data)
    if parsed is not None:
        return parsed
    return data[:2048].decode("utf-8", "replace")


OVERLOAD_STATUSES = frozenset({429, 503})  # answers that mean "send me less"
MAX_RETRY_AFTER = 600.0  # seconds: the longest Retry-After honoured
DOWN_LOG_INTERVAL = 30.0  # seconds between "upstream unreachable" log lines
_PAUSE_STEP = 0.25  # seconds between looks at ``stopping`` while backing off


async def _pause(seconds: float, stopping: Callable[[], bool]) -> bool:
    """Sleep ``seconds`` unless the batch stops first; True when the wait ran out."""
    deadline = time.monotonic() + seconds
    while not stopping():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, _PAUSE_STEP))
    return False


class Dispatcher:
    def __init__(
        self, client: UpstreamClient, policy: RetryPolicy, limiter: AdaptiveLimiter
    ) -> None:
        self._client = client
        self._policy = policy
        self.limiter = limiter
        self._down_logged_at = -DOWN_LOG_INTERVAL

    async def execute(self, raw: bytes, stopping: Callable[[], bool]) -> Result | None:
        """The result of one validated input line, or None when the batch stopped
        (cancel, expiry, shutdown) before a final answer: then nothing is recorded."""
        line = orjson.loads(raw)
        custom_id: str = line["custom_id"]
        try:
            return await self._attempts(line, custom_id, stopping)
        except Exception as e:  # a bug must cost one request, never wedge the batch
            log.exception("request %s failed unexpectedly", custom_id)
            return Result(False, error_line(custom_id, ResultCodes.INTERNAL_ERROR,
                                            f"Barge failed on this request: {type(e).__name__}"))

    async def _attempts(
        self, line: dict[str, Any], custom_id: str, stopping: Callable[[], bool]
    ) -> Result | None:
        endpoint: str = line["url"]
        body = orjson.dumps(line["body"])
        policy = self._policy
        attempt = 0
        unreachable = 0
        while True:
            attempt += 1
            last_try = attempt >= policy.max_attempts
            wait: float | None = None
            try:
                reply = await self._send(endpoint, body)
            except UpstreamUnreachable as e:
                # Nothing was sent: the request waits for the upstream without using its
                # attempts, until it comes back or the batch stops (expiry, cancel).
                attempt -= 1
                unreachable += 1
                self._log_down(e)
                delay = backoff(unreachable, base=policy.backoff_base, cap=policy.backoff_max)
                if not await _pause(max(delay, policy.backoff_base / 2), stopping):
                    return None
                continue
            except UpstreamError as e:
                if last_try:
                    code = (
                        ResultCodes.UPSTREAM_TIMEOUT
                        if isinstance(e, UpstreamTimeout)
                        else ResultCodes.UPSTREAM_CONNECTION_ERROR
                    )
                    return Result(False, error_line(custom_id, code, e.message))
            else:
                result = self._classify(custom_id, reply, last_try)
                if result is not None:
                    return result
                wait = retry_after(reply.headers)
            delay = backoff(attempt, base=policy.backoff_base, cap=policy.backoff_max)
            if not await _pause(max(delay, min(wait or 0.0, MAX_RETRY_AFTER)), stopping):
                return None

    async def _send(self, endpoint: str, body: bytes) -> Reply:
        """One attempt, inside a slot of the adaptive limit, telling it how it went."""
        granted = await self.limiter.acquire()
        outcome = Outcome.IGNORE
        try:
            reply = await self._client.send(endpoint, body)
            overloaded = reply.status in OVERLOAD_STATUSES
            outcome = Outcome.OVERLOAD if overloaded else Outcome.SUCCESS
            return reply
        except UpstreamTimeout:
            outcome = Outcome.OVERLOAD
            raise
        finally:
            self.limiter.release(granted, outcome)

    def _log_down(self, error: UpstreamError) -> None:
        now = time.monotonic()
        if now - self._down_logged_at >= DOWN_LOG_INTERVAL:
            self._down_logged_at = now
            log.warning("%s; requests wait for it (next note in %.0fs)", error.message,
                        DOWN_LOG_INTERVAL)

    @staticmethod
    def _classify(custom_id: str, reply: Reply, last_try: bool) -> Result | None:
        """The final result for this reply, or None to try again."""
        request_id = reply.headers.get("x-request-id") or new_request_id()
        if 200 <= reply.status < 300:
            parsed = _json_or_none(reply.body)
            if parsed is not None:
                return Result(True, output_line(custom_id, reply.status, request_id, parsed),
                              usage_of(parsed))
            if not last_try:
                return None
            return Result(
                False,
                error_line(
                    custom_id,
                    ResultCodes.INVALID_UPSTREAM_RESPONSE,
                    "The upstream answered with a body that is not JSON.",
                    status_code=reply.status,
                    request_id=request_id,
                    body=reply.body[:2048].decode("utf-8", "replace"),
                ),
            )
        if is_retryable_status(reply.status) and not last_try:
            return None
        return Result(
            False,
            error_line(
                custom_id,
                ResultCodes.UPSTREAM_HTTP_ERROR,
                f"The upstream answered with HTTP {reply.status}.",
                status_code=reply.status,
                request_id=request_id,
                body=_error_body(reply.body),
            ),
        )
