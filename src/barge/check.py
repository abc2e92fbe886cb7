"""``barge check``: read a server's ``/healthz`` and say, one line per component, whether
its store, its blob store and each of its upstreams can be reached. Healthy means all of
them can (an upstream not checked yet does not count against it)."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_BASE_URL = "http://127.0.0.1:8080"


class Unanswered(Exception):
    """No usable answer from ``/healthz``; the message says why."""


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    lines: list[str]


def healthz_url(base_url: str) -> str:
    """``/healthz`` of the server at ``base_url``, with or without its ``/v1``."""
    base = base_url.rstrip("/").removesuffix("/v1")
    return base + "/healthz"


def fetch_health(url: str, timeout: float) -> dict[str, Any]:
    """GET ``url`` and return its JSON object; Unanswered when that cannot be had."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(1 << 20)
            status = resp.status
    except urllib.error.HTTPError as e:
        raise Unanswered(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Unanswered(str(getattr(e, "reason", e))) from None
    if status != 200:
        raise Unanswered(f"HTTP {status}")
    try:
        health = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Unanswered("the answer is not JSON") from None
    if not isinstance(health, dict):
        raise Unanswered("the answer is not a JSON object")
    return health


def _component(name: str, part: Any) -> tuple[bool, str]:
    if not isinstance(part, dict):
        return True, f"{name}: not reported"
    if part.get("ok"):
        return True, f"{name}: ok"
    return False, f"{name}: unreachable: {part.get('error') or 'no reason given'}"


def _upstream(up: Any) -> tuple[bool, str]:
    if not isinstance(up, dict):
        return True, "upstream: not reported"
    name = f"upstream {up.get('name') or '?'} ({up.get('url')})"
    if up.get("reachable"):
        rotation = "" if up.get("in_rotation", True) else " (out of rotation for now)"
        return True, f"{name}: ok{rotation}"
    if up.get("checked_at") is None and not up.get("last_error"):
        return True, f"{name}: not checked yet"
    return False, f"{name}: unreachable: {up.get('last_error') or 'no reason given'}"


def judge(health: dict[str, Any]) -> Verdict:
    """Whether ``health`` (a ``/healthz`` body) is healthy, and one line per component."""
    results = [_component("store", health.get("store")),
               _component("blobs", health.get("blobs"))]
    upstreams = health.get("upstreams")
    if isinstance(upstreams, list):
        results += [_upstream(up) for up in upstreams]
    elif "upstream" in health:
        results.append(_upstream(health["upstream"]))
    healthy = all(ok for ok, _ in results)
    return Verdict(healthy, [line for _, line in results])
