"""Output- and error-file lines: one JSON object per line, in the OpenAI result shape."""

from __future__ import annotations

import re

import orjson
import pytest

from barge.domain.ids import (
    new_api_key,
    new_batch_id,
    new_file_id,
    new_key_id,
    new_request_id,
)
from barge.domain.results import ResultCodes, error_line, output_line

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
            ResultCodes.BATCH_EXPIRED,
        ],
    )
    def test_every_code(self, code: str) -> None:
        obj = _single_json_line(error_line("x", code, "m"))
        assert obj["error"]["code"] == code
        assert REQUEST_ID.match(obj["id"])

    def test_batch_expired_code(self) -> None:
        assert ResultCodes.BATCH_EXPIRED == "batch_expired"


def test_id_shapes() -> None:
    assert re.match(r"^file-[0-9a-f]{24}$", new_file_id())
    assert re.match(r"^batch_[0-9a-f]{24}$", new_batch_id())
    assert REQUEST_ID.match(new_request_id())
    assert re.match(r"^key_[0-9a-f]{24}$", new_key_id())
    key = new_api_key()
    assert key.startswith("sk-barge-")
    assert len(key) > 40
    assert new_api_key() != key
