"""Per-line checks of input files, completion windows and metadata limits."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from barge.domain.models import LineError
from barge.domain.validation import (
    ParsedLine,
    duplicate_error,
    is_blank,
    metadata_problem,
    parse_line,
    window_seconds,
)

ENDPOINT = "/v1/chat/completions"


def good(**overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": "request-1",
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
    }
    line.update(overrides)
    return line


def without(key: str) -> dict[str, Any]:
    line = good()
    del line[key]
    return line


def body_without_model() -> dict[str, Any]:
    return good(body={"messages": []})


def enc(obj: Any) -> bytes:
    return orjson.dumps(obj)


# (raw line, expected code, expected param)
BAD_LINES: dict[str, tuple[bytes, str, str | None]] = {
    "not-json": (b"{not json", "invalid_json_line", None),
    "truncated-json": (b'{"custom_id": "a"', "invalid_json_line", None),
    "lone-brace": (b"}", "invalid_json_line", None),
    "array": (b"[1, 2, 3]", "invalid_json_line", None),
    "string": (b'"hello"', "invalid_json_line", None),
    "number": (b"42", "invalid_json_line", None),
    "null": (b"null", "invalid_json_line", None),
    "true": (b"true", "invalid_json_line", None),
    "custom_id-missing": (enc(without("custom_id")), "missing_custom_id", "custom_id"),
    "custom_id-empty": (enc(good(custom_id="")), "missing_custom_id", "custom_id"),
    "custom_id-int": (enc(good(custom_id=7)), "missing_custom_id", "custom_id"),
    "custom_id-null": (enc(good(custom_id=None)), "missing_custom_id", "custom_id"),
    "custom_id-list": (enc(good(custom_id=["a"])), "missing_custom_id", "custom_id"),
    "method-GET": (enc(good(method="GET")), "invalid_method", "method"),
    "method-lowercase": (enc(good(method="post")), "invalid_method", "method"),
    "method-missing": (enc(without("method")), "invalid_method", "method"),
    "method-null": (enc(good(method=None)), "invalid_method", "method"),
    "url-other-endpoint": (enc(good(url="/v1/embeddings")), "invalid_url", "url"),
    "url-without-v1": (enc(good(url="/chat/completions")), "invalid_url", "url"),
    "url-missing": (enc(without("url")), "invalid_url", "url"),
    "body-list": (enc(good(body=[{"model": "m"}])), "invalid_body", "body"),
    "body-string": (enc(good(body='{"model": "m"}')), "invalid_body", "body"),
    "body-null": (enc(good(body=None)), "invalid_body", "body"),
    "body-missing": (enc(without("body")), "invalid_body", "body"),
    "model-missing": (enc(body_without_model()), "missing_model", "body.model"),
    "model-int": (enc(good(body={"model": 3})), "missing_model", "body.model"),
    "model-null": (enc(good(body={"model": None})), "missing_model", "body.model"),
    "model-empty": (enc(good(body={"model": ""})), "missing_model", "body.model"),
    "model-object": (enc(good(body={"model": {"id": "m"}})), "missing_model", "body.model"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
@pytest.mark.parametrize("line_no", [1, 17])
def test_bad_lines(case: str, line_no: int) -> None:
    raw, code, param = BAD_LINES[case]
    result = parse_line(raw, line_no, ENDPOINT)
    assert isinstance(result, LineError), result
    assert result.code == code
    assert result.line == line_no
    assert result.param == param
    assert isinstance(result.message, str)
    assert result.message


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_with_trailing_newline_is_the_same(case: str) -> None:
    raw, code, param = BAD_LINES[case]
    result = parse_line(raw + b"\n", 3, ENDPOINT)
    assert isinstance(result, LineError)
    assert (result.code, result.line, result.param) == (code, 3, param)


def test_line_error_as_dict() -> None:
    result = parse_line(b"[]", 5, ENDPOINT)
    assert isinstance(result, LineError)
    d = result.as_dict()
    assert set(d) == {"code", "message", "param", "line"}
    assert d["line"] == 5
    assert d["code"] == "invalid_json_line"
    assert d["param"] is None


def test_valid_line_parses() -> None:
    obj = good()
    result = parse_line(enc(obj) + b"\n", 1, ENDPOINT)
    assert isinstance(result, ParsedLine)
    assert result.custom_id == "request-1"
    assert result.model == "gpt-test"
    assert result.body == obj["body"]


def test_valid_line_for_another_endpoint() -> None:
    obj = good(url="/v1/embeddings", body={"model": "emb", "input": "x"})
    result = parse_line(enc(obj), 1, "/v1/embeddings")
    assert isinstance(result, ParsedLine)
    assert result.model == "emb"
    # the same line is wrong for a chat batch
    wrong = parse_line(enc(obj), 1, ENDPOINT)
    assert isinstance(wrong, LineError)
    assert wrong.code == "invalid_url"


def test_valid_line_keeps_extra_fields_and_unicode() -> None:
    obj = good(custom_id="é-1", extra="ignored", body={"model": "m", "messages": ["ü\n"]})
    result = parse_line(enc(obj), 1, ENDPOINT)
    assert isinstance(result, ParsedLine)
    assert result.custom_id == "é-1"
    assert result.body == {"model": "m", "messages": ["ü\n"]}


def test_is_blank() -> None:
    assert is_blank(b"")
    assert is_blank(b"\n")
    assert is_blank(b"  \t\r\n")
    assert not is_blank(b"{}\n")
    assert not is_blank(b" x ")


def test_duplicate_error_names_the_id_at_the_repeating_line() -> None:
    # Which lines repeat is barge.engine.duplicates' work (tests/engine/test_duplicates.py).
    err = duplicate_error("a", 5)
    assert isinstance(err, LineError)
    assert err.code == "duplicate_custom_id"
    assert err.line == 5
    assert err.param == "custom_id"
    assert err.message == "The custom_id 'a' appears more than once."


@pytest.mark.parametrize(
    ("window", "seconds"),
    [
        ("24h", 86400),
        ("1h", 3600),
        ("90s", 90),
        ("1s", 1),
        ("2m", 120),
        ("1d", 86400),
        ("7d", 7 * 86400),
        ("48h", 48 * 3600),
    ],
)
def test_window_seconds_good(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize(
    "window",
    ["", "0h", "00h", "024h", "24", "h", "-1h", "+1h", "1.5h", " 24h", "24h ", "24H", "24 h",
     "1w", "24hh", "h24", "1e3s", "\uff12\uff14h"],
)
def test_window_seconds_bad(window: str) -> None:
    assert window_seconds(window) is None


def test_window_seconds_rejects_a_trailing_newline() -> None:
    """``"24h\\n"`` is not of the form ``<digits><unit>``; a ``$`` anchor lets it through."""
    assert window_seconds("24h\n") is None


def _meta(n: int) -> dict[str, str]:
    return {f"k{i}": "v" for i in range(n)}


class TestMetadataProblem:
    def test_empty_is_fine(self) -> None:
        assert metadata_problem({}) is None

    def test_sixteen_pairs_are_fine(self) -> None:
        assert metadata_problem(_meta(16)) is None

    def test_seventeen_pairs_are_too_many(self) -> None:
        problem = metadata_problem(_meta(17))
        assert isinstance(problem, str)
        assert "16" in problem

    def test_key_of_64_is_fine(self) -> None:
        assert metadata_problem({"k" * 64: "v"}) is None

    def test_key_of_65_is_too_long(self) -> None:
        problem = metadata_problem({"k" * 65: "v"})
        assert isinstance(problem, str)
        assert "64" in problem

    def test_value_of_512_is_fine(self) -> None:
        assert metadata_problem({"k": "v" * 512}) is None

    def test_value_of_513_is_too_long(self) -> None:
        problem = metadata_problem({"k": "v" * 513})
        assert isinstance(problem, str)
        assert "512" in problem

    def test_limits_count_characters_not_bytes(self) -> None:
        assert metadata_problem({"é" * 64: "ü" * 512}) is None

    @pytest.mark.parametrize("value", [1, 1.5, None, True, ["a"], {"a": "b"}])
    def test_non_string_value(self, value: Any) -> None:
        assert isinstance(metadata_problem({"k": value}), str)

    def test_non_string_key(self) -> None:
        assert isinstance(metadata_problem({1: "v"}), str)  # type: ignore[dict-item]

    def test_one_bad_pair_among_good_ones(self) -> None:
        meta = _meta(10)
        meta["k5"] = "x" * 513
        assert isinstance(metadata_problem(meta), str)
