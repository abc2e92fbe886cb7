"""Output- and error-file lines, built as bytes."""

from __future__ import annotations

from typing import Any

import orjson

from barge.domain.ids import new_request_id


class ResultCodes:
    """Error codes written to the error file."""

    UPSTREAM_HTTP_ERROR = "upstream_http_error"  # a non-2xx answer (after any retries)
    INVALID_UPSTREAM_RESPONSE = "invalid_upstream_response"  # 2xx but not a JSON body
    UPSTREAM_TIMEOUT = "upstream_timeout"  # no full answer within the request timeout
    UPSTREAM_CONNECTION_ERROR = "upstream_connection_error"  # refused, reset, closed mid-body
    BATCH_EXPIRED = "batch_expired"  # the batch's completion window ran out first
    INTERNAL_ERROR = "internal_error"  # Barge itself failed on this request


def output_line(custom_id: str, status_code: int, request_id: str, body: Any) -> bytes:
    return orjson.dumps(
        {
            "id": new_request_id(),
            "custom_id": custom_id,
            "response": {"status_code": status_code, "request_id": request_id, "body": body},
            "error": None,
        }
    )


def error_line(
    custom_id: str,
    code: str,
    message: str,
    *,
    status_code: int | None = None,
    request_id: str | None = None,
    body: Any = None,
) -> bytes:
    response = (
        None
        if status_code is None
        else {"status_code": status_code, "request_id": request_id, "body": body}
    )
    return orjson.dumps(
        {
            "id": new_request_id(),
            "custom_id": custom_id,
            "response": response,
            "error": {"code": code, "message": message},
        }
    )
