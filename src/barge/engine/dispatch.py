"""Runs one request line against the upstream: send, classify, retry, and build its result."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from barge.domain.ids import new_request_id
from barge.domain.results import ResultCodes, error_line, json_fragment, output_line
from barge.domain.usage import NO_USAGE, Usage, usage_of
from barge.engine.coalesce import EMBEDDINGS, Item, combined_body, split_answer
from barge.engine.limiter import AdaptiveLimiter, Outcome
from barge.engine.pacing import estimate_tokens
from barge.engine.retry import backoff, is_retryable_status, retry_after
from barge.engine.router import NoRoute, Route, Router
from barge.exceptions import UpstreamError
from barge.upstreams.client import (
    Reply,
    SenderLost,
    UpstreamClient,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from barge.upstreams.config import UpstreamSpec

if TYPE_CHECKING:
    from barge.metrics import Metrics

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


NOT_JSON: Any = object()  # what _parse returns for a body that is not one JSON text
ERROR_TEXT_BYTES = 2048  # how much of a body that is not JSON an error line keeps


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(data: bytes) -> Any:
    """The value of a JSON body, or NOT_JSON. orjson decides nearly always; what it
    refuses but is still valid JSON (a number beyond a double's range, an escaped lone
    surrogate) gets a second look from the stdlib parser, strict UTF-8 and without its
    NaN/Infinity extensions. The value serves only to read usage: the line
    keeps the body's own bytes (orjson reads integers past 64 bits as floats)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return NOT_JSON


def _text(data: bytes) -> str:
    return data[:ERROR_TEXT_BYTES].decode("utf-8", "replace")


def _error_body(data: bytes) -> Any:
    """An upstream's error body verbatim where it is JSON, else as (truncated) text."""
    return json_fragment(data) if _parse(data) is not NOT_JSON else _text(data)


# Digits and "." become "0", all else " ": a run of 16 zeros then marks a number of 16
# digits or more (or a false alarm: digits in a string), found at C speed, ~1 ns a byte.
_DIGITS = bytes(0x30 if chr(b) in "0123456789." else 0x20 for b in range(256))
_LONG_RUN = b"0" * 16
_DECODER = json.JSONDecoder()


def _skip_ws(text: str, i: int) -> int:
    while text[i] in " \t\n\r":
        i += 1
    return i


def _member_text(text: str, name: str) -> str:
    """The source text of the value of a JSON object's top-level member ``name`` (the
    last of that name, as orjson keeps), found with the stdlib's scanner."""
    found: str | None = None
    i = _skip_ws(text, 0)
    if text[i] != "{":
        raise ValueError("not an object")
    i = _skip_ws(text, i + 1)
    while text[i] != "}":
        key, i = _DECODER.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] != ":":
            raise ValueError("no colon")
        start = _skip_ws(text, i + 1)
        _, i = _DECODER.raw_decode(text, start)
        if key == name:
            found = text[start:i]
        i = _skip_ws(text, i)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
        elif text[i] != "}":
            raise ValueError("no comma")
    if found is None:
        raise KeyError(name)
    return found


def _request_body(raw: bytes, line: dict[str, Any]) -> bytes:
    """The bytes to send for a line's ``body``. orjson reads a number of 16 digits or more
    as a double where it does not fit (integers past 64 bits, long decimals) and would
    send another value; a line with such a run of digits sends its body's own text."""
    if _LONG_RUN in raw.translate(_DIGITS):
        try:
            return _member_text(raw.decode("utf-8"), "body").encode("utf-8")
        except (ValueError, KeyError, IndexError, RecursionError):
            log.warning("could not take %s's body verbatim; sending it re-encoded",
                        line.get("custom_id"))
    return orjson.dumps(line["body"])


def _request_id(headers: Mapping[str, str]) -> str:
    """The upstream's x-request-id, as text that can be written (a header's bytes that
    are not UTF-8 become U+FFFD), or a fresh id where it sent none."""
    rid = headers.get("x-request-id")
    if not rid:
        return new_request_id()
    if not rid.isascii():  # aiohttp keeps bytes that are not UTF-8 as lone surrogates
        try:
            raw = rid.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = rid.encode("utf-8", "surrogatepass")
        rid = raw.decode("utf-8", "replace")
    return rid


def _for_route(route: Route, body: bytes, line: dict[str, Any], model: str,
               priority: int | None = None) -> bytes:
    """The body as ``route`` gets it: with its name for the model, where it has one, and
    the request's ``priority`` in its ``priority_field``, where it has one. Re-encoded
    only when that changes something."""
    spec = route.spec
    outgoing = spec.outgoing_model(model)
    field = spec.priority_field if priority is not None else None
    if field is not None:
        present = line["body"].get(field)
        if type(present) is int and present == priority:
            field = None  # already what it would be set to
    if outgoing == model and field is None:
        return body
    changed = {**line["body"], "model": outgoing} if outgoing != model else dict(line["body"])
    if field is not None:
        changed[field] = priority
    return orjson.dumps(changed)


class _Retry(Enum):
    """An answer's verdict: try the call again (after a back-off)."""

    RETRY = "retry"


T = TypeVar("T")

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
    """Sends request lines through ``router`` (or, given a client and a limiter, to that
    one upstream, serving every model)."""

    def __init__(
        self, router: Router | UpstreamClient, policy: RetryPolicy,
        limiter: AdaptiveLimiter | None = None, metrics: Metrics | None = None,
    ) -> None:
        if not isinstance(router, Router):
            spec = UpstreamSpec("default", router.base_url, concurrency=limiter.maximum
                                if limiter is not None else 128)
            router = Router([Route(spec, router, limiter, max_cooldown=policy.backoff_max)])
        self.router = router
        self._policy = policy
        self._metrics = metrics
        self._down_logged_at = -DOWN_LOG_INTERVAL

    @property
    def limiter(self) -> AdaptiveLimiter:
        """The first upstream's limiter (the only one, with a single upstream)."""
        return self.router.routes[0].limiter

    async def execute(self, raw: bytes, stopping: Callable[[], bool],
                      priority: int | None = None) -> Result | None:
        """The result of one validated input line, or None when the batch stopped
        (cancel, expiry, shutdown) before a final answer: then nothing is recorded.
        ``priority``: its rank for upstreams that schedule by priority (lower goes
        sooner), sent in their ``priority_field``."""
        line = orjson.loads(raw)
        custom_id: str = line["custom_id"]
        model = str(line["body"].get("model", ""))
        try:
            result = await self._attempts(raw, line, custom_id, model, stopping, priority)
        except Exception as e:  # a bug must cost one request, never wedge the batch
            log.exception("request %s failed unexpectedly", custom_id)
            result = Result(False, error_line(
                custom_id, ResultCodes.INTERNAL_ERROR,
                f"Barge failed on this request: {type(e).__name__}"))
        if self._metrics is not None and result is not None:
            self._metrics.finished(line["url"], model, result.ok)
        return result

    async def execute_group(self, items: Sequence[Item],
                            stoppings: Sequence[Callable[[], bool]],
                            priority: int | None = None) -> list[Result | None]:
        """The results of embeddings lines alike (``coalesce``), sent as one call: each
        line's own answer, cut from the call's. A call that fails for good (a final or
        last HTTP error, timeout or broken connection, an answer over the size cap or
        one that cannot be cut) sends the lines again one by one, each with all its
        attempts, so a bad input costs only its own line. None for a line whose batch
        stopped (``stoppings``, one per line: the call goes on while one still wants it)."""
        def stopping() -> bool:
            return all(stopped() for stopped in stoppings)

        try:
            results = await self._group_attempts(items, stopping, priority)
        except Exception:  # a bug must not cost the lines: they go one by one
            log.exception("a call of %d embeddings requests failed unexpectedly; sending "
                          "them one by one", len(items))
            results = None
        if results is None:
            return list(await asyncio.gather(*(
                self.execute(item.raw, stopped, priority)
                for item, stopped in zip(items, stoppings, strict=True))))
        if self._metrics is not None:
            for item, result in zip(items, results, strict=True):
                if result is not None:
                    self._metrics.finished(EMBEDDINGS, item.model, result.ok)
        return results

    async def _group_attempts(
        self, items: Sequence[Item], stopping: Callable[[], bool], priority: int | None,
    ) -> list[Result | None] | None:
        """``execute_group``'s call with its retries; None when the lines must go one by
        one (a final or last failure, an answer over the size cap or one that cannot be
        cut)."""
        model = items[0].model
        router = self.router
        tokens = sum(item.tokens for item in items) if router.counts_tokens else 0

        def body_for(route: Route) -> bytes:
            spec = route.spec
            return combined_body(items, spec.outgoing_model(model),
                                 spec.priority_field if priority is not None else None,
                                 priority)

        def verdict(route: Route, reply: Reply, last_try: bool
                    ) -> list[Result | None] | _Retry | None:
            status = reply.status
            if not 200 <= status < 300:
                return _Retry.RETRY if not last_try and is_retryable_status(status) else None
            parsed = _parse(reply.body)
            cut = None if parsed is NOT_JSON else split_answer(reply.body, parsed, items)
            if cut is None:
                log.warning("upstream %s: an answer to %d embeddings requests in one call "
                            "cannot be split; sending them one by one", route.name,
                            len(items))
                return None
            request_id = _request_id(reply.headers)
            if route.pacer is not None:
                used = sum((u for _, u in cut), NO_USAGE)
                if used:
                    router.settle(route, tokens, used.input_tokens + used.output_tokens)
            return [Result(True, output_line(item.custom_id, status, request_id,
                                             json_fragment(text)), usage)
                    for item, (text, usage) in zip(items, cut, strict=True)]

        return await self._call(
            model, EMBEDDINGS, tokens, body_for, verdict,
            too_large=lambda _: None,  # each line's answer alone is a fraction of it
            gave_up=lambda _: None,
            stopped=[None] * len(items), stopping=stopping)

    async def _attempts(
        self, raw: bytes, line: dict[str, Any], custom_id: str, model: str,
        stopping: Callable[[], bool], priority: int | None = None,
    ) -> Result | None:
        endpoint: str = line["url"]
        body = _request_body(raw, line)
        router = self.router
        # What it is charged on upstreams with a token budget (corrected by its usage).
        tokens = estimate_tokens(endpoint, line["body"]) if router.counts_tokens else 0

        def verdict(route: Route, reply: Reply, last_try: bool) -> Result | _Retry:
            result = self._classify(custom_id, reply, last_try)
            if result is None:
                return _Retry.RETRY
            if route.pacer is not None and result.usage:
                usage = result.usage
                router.settle(route, tokens, usage.input_tokens + usage.output_tokens)
            return result

        def gave_up(e: UpstreamError) -> Result:
            code = (ResultCodes.UPSTREAM_TIMEOUT if isinstance(e, UpstreamTimeout)
                    else ResultCodes.UPSTREAM_CONNECTION_ERROR)
            return Result(False, error_line(custom_id, code, e.message))

        return await self._call(
            model, endpoint, tokens,
            lambda route: _for_route(route, body, line, model, priority), verdict,
            # Final: the same upstream would send the same flood again.
            too_large=lambda e: Result(False, error_line(
                custom_id, ResultCodes.UPSTREAM_RESPONSE_TOO_LARGE, e.message)),
            gave_up=gave_up, stopped=None, stopping=stopping)

    async def _call(
        self, model: str, endpoint: str, tokens: int, body_for: Callable[[Route], bytes],
        verdict: Callable[[Route, Reply, bool], T | _Retry], *,
        too_large: Callable[[UpstreamResponseTooLarge], T],
        gave_up: Callable[[UpstreamError], T], stopped: T, stopping: Callable[[], bool],
    ) -> T:
        """One call (``body_for`` the route it goes to) with its retries: what
        ``verdict`` makes of an answer (``last_try``: no attempt is left), or of a final
        failure ``too_large`` / ``gave_up`` (timeout or broken connection on the last
        attempt); ``stopped`` when the batch stopped (cancel, expiry, shutdown) first.
        An upstream that cannot be reached costs no attempt: the call goes to another
        replica, or waits for this one, until one answers or the batch stops."""
        policy = self._policy
        router = self.router
        attempt = 0
        unreachable = 0
        avoid: Route | None = None
        while True:
            attempt += 1
            last_try = attempt >= policy.max_attempts
            wait: float | None = None
            try:
                route, granted = await router.acquire(model, avoid, tokens)
            except NoRoute:
                # Every upstream of the model is out of rotation: wait for one to come
                # back, without using an attempt (its half-open probe decides).
                attempt -= 1
                unreachable += 1
                if not await self._wait_for_upstream(UpstreamUnreachable(
                        f"No upstream serving '{model}' is in rotation"), unreachable,
                        stopping):
                    return stopped
                continue
            try:
                reply = await self._send(route, granted, endpoint, body_for(route), tokens)
            except UpstreamUnreachable as e:
                # Nothing was sent: no attempt is used.
                router.unsent(route, tokens)
                if self._metrics is not None:
                    self._metrics.retried(route.name, "connection")
                attempt -= 1
                unreachable += 1
                avoid = route
                if len(router.for_model(model)) > 1:
                    continue  # straight to another replica (acquire passes this one over)
                if not await self._wait_for_upstream(e, unreachable, stopping):
                    return stopped
                continue
            except UpstreamResponseTooLarge as e:
                return too_large(e)
            except UpstreamError as e:
                if last_try:
                    return gave_up(e)
                if self._metrics is not None:
                    self._metrics.retried(route.name, "timeout" if isinstance(
                        e, UpstreamTimeout) else "connection")
            else:
                outcome = verdict(route, reply, last_try)
                if outcome is not _Retry.RETRY:
                    return outcome
                if self._metrics is not None:
                    self._metrics.retried(route.name, str(reply.status))
                wait = retry_after(reply.headers)
            delay = backoff(attempt, base=policy.backoff_base, cap=policy.backoff_max)
            if not await _pause(max(delay, min(wait or 0.0, MAX_RETRY_AFTER)), stopping):
                return stopped

    async def _send(self, route: Route, granted: int, endpoint: str, body: bytes,
                    tokens: int = 0) -> Reply:
        """One attempt, in a slot of the route's adaptive limit, telling the limit and
        the route's breaker how it went, and its pacer what the upstream's rate-limit
        headers say (on a 429, or on any answer to a paced route)."""
        outcome = Outcome.IGNORE
        healthy: bool | None = None
        started = time.monotonic()
        try:
            reply = await route.client.send(endpoint, body)
            if reply.status == 429 or route.pacer is not None:
                self.router.hint(route, reply.headers, rejected=reply.status == 429,
                                 tokens=tokens)
            overloaded = reply.status in OVERLOAD_STATUSES
            outcome = Outcome.OVERLOAD if overloaded else Outcome.SUCCESS
            healthy = reply.status < 500
            return reply
        except SenderLost:
            raise  # our sender process went, not the upstream: no verdict on it
        except UpstreamTimeout:
            outcome = Outcome.OVERLOAD
            healthy = False
            raise
        except UpstreamError:
            healthy = False
            raise
        finally:
            self.router.release(route, granted, outcome, healthy=healthy)
            if self._metrics is not None:
                self._metrics.attempt(route.name, time.monotonic() - started)

    async def _wait_for_upstream(self, error: UpstreamError, times: int,
                                 stopping: Callable[[], bool]) -> bool:
        """Back off before trying again for the ``times``-th time to reach an upstream
        (no attempt used); False when the batch stopped meanwhile."""
        self._log_down(error)
        policy = self._policy
        delay = backoff(times, base=policy.backoff_base, cap=policy.backoff_max)
        return await _pause(max(delay, policy.backoff_base / 2), stopping)

    def _log_down(self, error: UpstreamError) -> None:
        now = time.monotonic()
        if now - self._down_logged_at >= DOWN_LOG_INTERVAL:
            self._down_logged_at = now
            log.warning("%s; requests wait for it (next note in %.0fs)", error.message,
                        DOWN_LOG_INTERVAL)

    @staticmethod
    def _classify(custom_id: str, reply: Reply, last_try: bool) -> Result | None:
        """The final result for this reply, or None to try again."""
        status = reply.status
        if 200 <= status < 300:
            parsed = _parse(reply.body)
            if parsed is not NOT_JSON:
                line = output_line(custom_id, status, _request_id(reply.headers),
                                   json_fragment(reply.body))
                return Result(True, line, usage_of(parsed))
            if not last_try:
                return None
            # There is an answer, so ``response`` keeps it (the body as text); but Barge
            # refused it, so unlike an HTTP error this line also says why in ``error``.
            return Result(
                False,
                error_line(
                    custom_id,
                    ResultCodes.INVALID_UPSTREAM_RESPONSE,
                    "The upstream answered with a body that is not JSON.",
                    status_code=status,
                    request_id=_request_id(reply.headers),
                    body=_text(reply.body),
                ),
            )
        if is_retryable_status(status) and not last_try:
            return None
        # A final HTTP error (redirects included: they are never followed) is the
        # upstream's answer, recorded as OpenAI's error files do: response, error null.
        return Result(
            False,
            output_line(custom_id, status, _request_id(reply.headers), _error_body(reply.body)),
        )
