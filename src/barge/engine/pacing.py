"""Pacing: an upstream's per-minute budgets, held over every stretch of time.

Providers enforce ``requests_per_minute`` and ``tokens_per_minute`` over seconds, not
minutes (120 a minute is about 2 a second, never 120 at once), so each budget is a
bucket that refills at its rate and holds ``BURST_SECONDS`` of it: GCRA, the generic
cell rate algorithm, in its token-bucket form. A request may go while the bucket is not
in debt, whatever it costs, and takes its cost (debt included), so any stretch of ``T``
seconds sees at most ``rate * (T + BURST_SECONDS)`` plus one request — a one-second
window about its proportional share, any minute its budget. Whether a request may go
does not depend on its size, so the worker pool can ask "is there room" without knowing
which request comes next.

A request's tokens are estimated before it is sent (``estimate_tokens``: its prompt's
text at ~4 characters a token, plus the most it may generate) and corrected once the
upstream says what it used (``Pacer.settle``): what was charged too much is given back,
what was charged too little is taken. A 429, or an answer saying a budget is spent
(``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*``), empties the bucket until the
reset (``Pacer.hint``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

BURST_SECONDS = 0.1  # each bucket holds this many seconds of its rate (beyond one request)
CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = 256  # tokens a generation may take when the body does not say
MAX_HOLD = 600.0  # seconds: the longest reset honoured (as for Retry-After)
_NESTING = 16  # how deep ``estimate_tokens`` looks into a body's values

REQUESTS = "requests"
TOKENS = "tokens"


class Bucket:
    """One budget: ``per_minute`` units a minute, paced. ``level`` units are available
    at time ``stamp`` (monotonic seconds; a stamp in the future is a hold: nothing may
    go before it); it refills at ``rate`` a second up to ``cap``, and a request may go
    while it is not negative."""

    __slots__ = ("base_rate", "burst", "cap", "level", "rate", "stamp")

    def __init__(self, per_minute: float, *, burst: float = BURST_SECONDS,
                 now: float = 0.0) -> None:
        if not per_minute > 0:
            raise ValueError("a budget must be above 0")
        self.base_rate = per_minute / 60.0
        self.burst = burst
        self.rate = self.base_rate
        self.cap = self.rate * burst
        self.level = self.cap  # full
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.cap, self.level + self.rate * (now - self.stamp))
            self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a request may go (0: now)."""
        stamp = self.stamp
        if now >= stamp:
            level = self.level + self.rate * (now - stamp)
            return 0.0 if level >= 0 else -level / self.rate
        return stamp - now + (-self.level / self.rate if self.level < 0 else 0.0)

    def allowance(self, now: float, cost: float = 1.0) -> int:
        """How many requests of ``cost`` may go now, one after the other."""
        if self.wait(now) > 0:
            return 0
        level = min(self.cap, self.level + self.rate * max(0.0, now - self.stamp))
        return 1 + math.floor(level / cost) if cost > 0 else 1

    def take(self, cost: float, now: float) -> None:
        self._refill(now)
        self.level -= cost

    def adjust(self, delta: float, now: float) -> None:
        """Take ``delta`` more units (a negative one gives them back, up to a full
        bucket)."""
        self._refill(now)
        self.level = min(self.cap, self.level - delta)

    def hold(self, until: float, now: float) -> None:
        """Nothing until ``until``; from then on the bucket starts empty."""
        self._refill(now)
        self.level = min(self.level, 0.0)
        self.stamp = max(self.stamp, until)

    def scale(self, fraction: float, now: float) -> None:
        """Run at ``fraction`` of the budget from now on (a node's part of a cluster's)."""
        self._refill(now)
        self.rate = self.base_rate * fraction
        self.cap = self.rate * self.burst
        self.level = min(self.level, self.cap)


class Pacer:
    """One upstream's budgets (either may be absent), and holds from its rate-limit
    answers."""

    __slots__ = ("held_until", "requests", "tokens")

    def __init__(self, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, *, burst: float = BURST_SECONDS,
                 now: float = 0.0) -> None:
        self.requests = (Bucket(requests_per_minute, burst=burst, now=now)
                         if requests_per_minute else None)
        self.tokens = (Bucket(tokens_per_minute, burst=burst, now=now)
                       if tokens_per_minute else None)
        self.held_until = 0.0  # a hold on a budget that has no bucket here

    @classmethod
    def of(cls, requests_per_minute: int | None, tokens_per_minute: int | None,
           now: float) -> Pacer | None:
        """The pacer of an upstream with these budgets; None without any."""
        if not requests_per_minute and not tokens_per_minute:
            return None
        return cls(requests_per_minute, tokens_per_minute, now=now)

    def wait(self, now: float) -> float:
        """Seconds until a request may go (0: now)."""
        wait = self.held_until - now
        if self.requests is not None:
            wait = max(wait, self.requests.wait(now))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait(now))
        return max(0.0, wait)

    def allowance(self, now: float) -> int:
        """How many requests may go now (at least; their tokens unknown)."""
        if self.wait(now) > 0:
            return 0
        if self.requests is not None:
            return self.requests.allowance(now)
        return 1

    def take(self, tokens: int, now: float) -> None:
        if self.requests is not None:
            self.requests.take(1, now)
        if self.tokens is not None:
            self.tokens.take(tokens, now)

    def unsent(self, tokens: int, now: float) -> None:
        """A request taken but never sent (no connection): give its cost back."""
        if self.requests is not None:
            self.requests.adjust(-1, now)
        if self.tokens is not None:
            self.tokens.adjust(-tokens, now)

    def settle(self, estimated: int, used: int, now: float) -> None:
        """The upstream said it used ``used`` tokens on a request charged ``estimated``
        (0: it did not say; the estimate stands)."""
        if self.tokens is not None and used > 0:
            self.tokens.adjust(used - estimated, now)

    def scale(self, fraction: float, now: float) -> None:
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.scale(fraction, now)

    def hold(self, kind: str, until: float, now: float) -> None:
        """Nothing of budget ``kind`` until ``until`` (then its bucket starts empty)."""
        bucket = self.requests if kind == REQUESTS else self.tokens
        if bucket is not None:
            bucket.hold(until, now)
        else:
            self.held_until = max(self.held_until, until)

    def holding(self, now: float) -> bool:
        """Whether a hold (not only the pace) keeps requests back now."""
        until = self.held_until
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                until = max(until, bucket.stamp)
        return until > now

    def hint(self, holds: Mapping[str, float], now: float) -> None:
        for kind, seconds in holds.items():
            self.hold(kind, now + seconds, now)


# -- what an upstream's rate-limit headers say -----------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                 "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a reset value: a Go-style duration ("1s", "6m0s", "20ms", "1h2m3.5s")
    or a plain number of seconds; None when unreadable."""
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > 64:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    total = 0.0
    pos = 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos else None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def rate_limit_holds(headers: Mapping[str, str], *, rejected: bool,
                     tokens: int = 0) -> dict[str, float]:
    """For each budget (``REQUESTS``, ``TOKENS``) the headers say is spent, the seconds
    until it resets. ``rejected``: the answer was a 429, so a budget with a reset and
    not enough left for this request (``tokens`` of them) — or no count at all — is
    spent; otherwise only one with nothing left is. Empty for most answers."""
    holds: dict[str, float] = {}
    for kind, need in ((REQUESTS, 1), (TOKENS, max(1, tokens))):
        reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
        if reset is None:
            continue
        remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
        if remaining is None:
            spent = rejected
        elif rejected:
            spent = remaining < need
        else:
            spent = remaining <= 0
        if spent and reset > 0:
            holds[kind] = min(reset, MAX_HOLD)
    return holds


# -- a request's tokens, before it is sent -----------------------------------------------

_COMPLETION_LIMITS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_GENERATES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
_TEXT_KEYS = ("content", "text", "input", "prompt")


def _chars(value: Any, depth: int = 0) -> int:
    """Characters of text in a body's value: strings, content parts, messages; a token
    id (an integer in a list) counts as one token's worth."""
    if isinstance(value, str):
        return len(value)
    if depth >= _NESTING:
        return 0
    if isinstance(value, list):
        total = 0
        for item in value:
            if type(item) is int:
                total += CHARS_PER_TOKEN
            else:
                total += _chars(item, depth + 1)
        return total
    if isinstance(value, dict):
        return sum(_chars(value.get(key), depth + 1) for key in _TEXT_KEYS)
    return 0


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def estimate_tokens(endpoint: str, body: Any) -> int:
    """The tokens a request may use, before it is sent: its prompt's text (chat: the
    messages' content; completions: ``prompt``; embeddings and responses: ``input``) at
    ~4 characters a token, rounded up, plus the most it may generate (``max_tokens`` or
    ``max_completion_tokens``, else ``DEFAULT_MAX_TOKENS`` for an endpoint that
    generates), times ``n`` choices. Never fails: an odd body counts what it can."""
    if not isinstance(body, dict):
        return 0
    if endpoint == "/v1/chat/completions":
        prompt = body.get("messages")
    elif endpoint == "/v1/completions":
        prompt = body.get("prompt")
    else:
        prompt = body.get("input")
    tokens = -(-_chars(prompt) // CHARS_PER_TOKEN)
    if endpoint in _GENERATES:
        limit = None
        for key in _COMPLETION_LIMITS:
            limit = _count(body.get(key))
            if limit is not None:
                break
        choices = _count(body.get("n")) or 1
        tokens += (DEFAULT_MAX_TOKENS if limit is None else limit) * min(choices, 128)
    return tokens
