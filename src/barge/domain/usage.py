"""Token usage: read from each upstream answer, summed per batch (the Batch's ``usage``).

An upstream's numbers are not trusted: a value that is not a plain integer in
``0..MAX_TOKENS`` counts as zero (the answer itself keeps it verbatim), and sums saturate
at ``MAX_TOKENS``, so no total can overflow SQLite's 64-bit integers or lose precision in
a JSON reader that holds numbers as doubles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_TOKENS = 2**53  # the largest count taken from one answer, and the most a sum holds


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        """The sum, each field saturating at MAX_TOKENS."""
        return Usage(
            min(self.input_tokens + other.input_tokens, MAX_TOKENS),
            min(self.output_tokens + other.output_tokens, MAX_TOKENS),
            min(self.cached_tokens + other.cached_tokens, MAX_TOKENS),
            min(self.reasoning_tokens + other.reasoning_tokens, MAX_TOKENS),
        )

    def __bool__(self) -> bool:
        return bool(self.input_tokens or self.output_tokens)

    def as_openai(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


NO_USAGE = Usage()


def _int(value: Any) -> int:
    """A token count, or 0 for anything else: negative, over MAX_TOKENS, a float (even
    7.0), a string, a bool, null, a container."""
    return value if type(value) is int and 0 < value <= MAX_TOKENS else 0


def _detail(usage: dict[str, Any], key: str, *containers: str) -> int:
    for container in containers:
        details = usage.get(container)
        if isinstance(details, dict):
            return _int(details.get(key))
    return 0


def usage_of(body: Any) -> Usage:
    """The tokens an answer reports: chat/completions/embeddings name them
    ``prompt_tokens``/``completion_tokens``, responses ``input_tokens``/``output_tokens``.
    Anything missing, malformed or absurd counts as zero."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return NO_USAGE
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens", usage.get("input_tokens"))),
        output_tokens=_int(usage.get("completion_tokens", usage.get("output_tokens"))),
        cached_tokens=_detail(usage, "cached_tokens", "prompt_tokens_details",
                              "input_tokens_details"),
        reasoning_tokens=_detail(usage, "reasoning_tokens", "completion_tokens_details",
                                 "output_tokens_details"),
    )
