"""Token usage read from upstream answers of each endpoint, and summed."""

from __future__ import annotations

from typing import Any

import pytest

from barge.domain.usage import MAX_TOKENS, NO_USAGE, Usage, usage_of


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                    "prompt_tokens_details": {"cached_tokens": 2},
                    "completion_tokens_details": {"reasoning_tokens": 1}}},
         Usage(7, 3, 2, 1)),
        ({"usage": {"input_tokens": 5, "output_tokens": 4,
                    "input_tokens_details": {"cached_tokens": 1},
                    "output_tokens_details": {"reasoning_tokens": 2}}},
         Usage(5, 4, 1, 2)),
        ({"usage": {"prompt_tokens": 9, "total_tokens": 9}}, Usage(9, 0, 0, 0)),  # embeddings
        ({"usage": None}, NO_USAGE),
        ({"usage": {"prompt_tokens": "7", "completion_tokens": True}}, NO_USAGE),
        ({"usage": {"prompt_tokens": -3}}, NO_USAGE),
        ({"usage": {"prompt_tokens": 2**64 - 1, "completion_tokens": 2}}, Usage(0, 2, 0, 0)),
        ({"usage": {"prompt_tokens": 2**53 + 1, "completion_tokens": 2**53}},
         Usage(0, 2**53, 0, 0)),
        ({"usage": {"prompt_tokens": 7.0, "completion_tokens": 1.8446744073709552e19}},
         NO_USAGE),
        ({"usage": {"prompt_tokens": [7], "completion_tokens": {"n": 7}}}, NO_USAGE),
        ({"usage": {"input_tokens": 4, "input_tokens_details": {"cached_tokens": 2**100},
                    "output_tokens_details": {"reasoning_tokens": -1}}}, Usage(4, 0, 0, 0)),
        ({"usage": {"prompt_tokens": 1, "prompt_tokens_details": "x"}}, Usage(1, 0, 0, 0)),
        ({"choices": []}, NO_USAGE),
        ([1, 2], NO_USAGE),
        ("text", NO_USAGE),
    ],
)
def test_usage_of_each_shape(body: Any, expected: Usage) -> None:
    assert usage_of(body) == expected


def test_sum_truth_and_openai_shape() -> None:
    total = Usage(1, 2, 0, 1) + Usage(3, 4, 1, 0)
    assert total == Usage(4, 6, 1, 1)
    assert not NO_USAGE and total
    assert total.as_openai() == {
        "input_tokens": 4, "input_tokens_details": {"cached_tokens": 1},
        "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 10,
    }


def test_sums_saturate_inside_int64() -> None:
    """However many answers report the largest count taken, a total stays at MAX_TOKENS:
    SQLite's 64-bit integers never overflow, JSON readers with doubles read it exactly."""
    top = Usage(MAX_TOKENS, MAX_TOKENS, MAX_TOKENS, MAX_TOKENS)
    total = sum([top] * 2000, NO_USAGE)
    assert total == top
    assert MAX_TOKENS == 2**53 and MAX_TOKENS < 2**63 - 1
    assert total.as_openai()["total_tokens"] == 2 * MAX_TOKENS
    assert Usage(2**70) + NO_USAGE == Usage(MAX_TOKENS)
