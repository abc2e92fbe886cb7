"""Token usage: read from each upstream answer, summed per batch (the Batch's ``usage``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
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
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _detail(usage: dict[str, Any], key: str, *containers: str) -> int:
    for container in containers:
        details = usage.get(container)
        if isinstance(details, dict):
            return _int(details.get(key))
    return 0


def usage_of(body: Any) -> Usage:
    """The tokens an answer reports: chat/completions/embeddings name them
    ``prompt_tokens``/``completion_tokens``, responses ``input_tokens``/``output_tokens``.
    Anything missing or malformed counts as zero."""
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
