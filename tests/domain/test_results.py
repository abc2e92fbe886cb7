"""Output- and error-file lines: one JSON object per line, in the OpenAI result shape."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import orjson
import pytest

from barge.domain.ids import (
    new_api_key,
    new_batch_id,
    new_file_id,
    new_key_id,
    new_request_id,
)
from barge.domain.results import ResultCodes, error_line, json_fragment, output_line

REQUEST_ID = re.compile(r"^batch_req_[0-9a-f]{24}$")
RESULT_KEYS = {"id", "custom_id", "response", "error"}


def _single_json_line(raw: bytes) -> dict:
    assert isinstance(raw, bytes)
    assert b"\n" not in raw  # one JSONL line; the writer adds the newline
    obj = orjson.loads(raw)
    assert isinstance(obj, dict)
    return obj


class TestOutputLine:
    def test_shape(self) -> None:
        body = {"id": "chatcmpl-1", "choices": [{"message": {"content": "hi\nthere"}}]}
        obj = _single_json_line(output_line("req-1", 200, "up-req-1", body))
        assert set(obj) == RESULT_KEYS
        assert REQUEST_ID.match(obj["id"])
        assert obj["custom_id"] == "req-1"
        assert obj["error"] is None
        assert obj["response"] == {"status_code": 200, "request_id": "up-req-1", "body": body}

    def test_unicode_custom_id_survives(self) -> None:
        obj = _single_json_line(output_line("é\n1", 200, "r", {}))
        assert obj["custom_id"] == "é\n1"

    def test_a_fragment_body_goes_in_verbatim_on_one_line(self) -> None:
        raw = b'{\r\n "n": 123456789012345678901234567890,\n\t"f": 1.50,\n "s": "a\\nb"\r\n}\n'
        line = output_line("req-1", 200, "r", json_fragment(raw))
        assert b"\n" not in line and b"\r" not in line
        assert b'"n": 123456789012345678901234567890,' in line
        assert b'"f": 1.50,' in line
        obj = json.loads(line, parse_float=Decimal)
        assert obj["response"]["body"] == {"n": 123456789012345678901234567890,
                                           "f": Decimal("1.50"), "s": "a\nb"}
        assert _single_json_line(output_line("x", 200, "r", json_fragment(b"[1]")))[
            "response"]["body"] == [1]

    def test_a_final_http_error_is_an_answer_with_error_null(self) -> None:
        body = json_fragment(b'{"error": {"message": "bad"}}')
        obj = _single_json_line(output_line("req-4", 400, "up-4", body))
        assert obj["response"] == {"status_code": 400, "request_id": "up-4",
                                   "body": {"error": {"message": "bad"}}}
        assert obj["error"] is None

    def test_ids_are_fresh(self) -> None:
        ids = {_single_json_line(output_line("a", 200, "r", {}))["id"] for _ in range(50)}
        assert len(ids) == 50


class TestErrorLine:
    def test_without_a_response(self) -> None:
        obj = _single_json_line(
            error_line("req-2", ResultCodes.UPSTREAM_TIMEOUT, "No answer in time.")
        )
        assert set(obj) == RESULT_KEYS
        assert REQUEST_ID.match(obj["id"])
        assert obj["custom_id"] == "req-2"
        assert obj["response"] is None
        assert obj["error"] == {"code": "upstream_timeout", "message": "No answer in time."}

    def test_with_the_upstream_response(self) -> None:
        body = {"error": {"message": "bad", "type": "invalid_request_error"}}
        obj = _single_json_line(
            error_line(
                "req-3",
                ResultCodes.UPSTREAM_HTTP_ERROR,
                "Upstream said 400.",
                status_code=400,
                request_id="up-3",
                body=body,
            )
        )
        assert set(obj) == RESULT_KEYS
        assert obj["response"] == {"status_code": 400, "request_id": "up-3", "body": body}
        assert obj["error"]["code"] == "upstream_http_error"
        assert obj["error"]["message"] == "Upstream said 400."

    @pytest.mark.parametrize(
        "code",
        [
            ResultCodes.UPSTREAM_HTTP_ERROR,
            ResultCodes.INVALID_UPSTREAM_RESPONSE,
            ResultCodes.UPSTREAM_TIMEOUT,
            ResultCodes.UPSTREAM_CONNECTION_ERROR,
            ResultCodes.UPSTREAM_RESPONSE_TOO_LARGE,
            ResultCodes.BATCH_EXPIRED,
            ResultCodes.INTERNAL_ERROR,
        ],
    )
    def test_every_code(self, code: str) -> None:
        obj = _single_json_line(error_line("x", code, "m"))
        assert obj["error"]["code"] == code
        assert REQUEST_ID.match(obj["id"])

    def test_batch_expired_code(self) -> None:
        assert ResultCodes.BATCH_EXPIRED == "batch_expired"

    def test_too_large_code(self) -> None:
        assert ResultCodes.UPSTREAM_RESPONSE_TOO_LARGE == "upstream_response_too_large"


def test_id_shapes() -> None:
    assert re.match(r"^file-[0-9a-f]{24}$", new_file_id())
    assert re.match(r"^batch_[0-9a-f]{24}$", new_batch_id())
    assert REQUEST_ID.match(new_request_id())
    assert re.match(r"^key_[0-9a-f]{24}$", new_key_id())
    key = new_api_key()
    assert key.startswith("sk-barge-")
    assert len(key) > 40
    assert new_api_key() != key
