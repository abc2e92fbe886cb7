"""Output- and error-file lines, built as bytes.

Every line has the OpenAI shape ``{"id", "custom_id", "response", "error"}``:

- an answer the upstream gave — a success (output file) or an HTTP error that is final
  (error file) — is ``response: {status_code, request_id, body}`` with ``error: null``,
  as OpenAI's own error files carry a 4xx: the upstream's answer *is* the result;
- where no usable answer exists (timeout, broken connection, an answer over the size
  cap, expiry, a Barge failure) ``error: {code, message}`` says why, ``response: null``;
- a 2xx whose body is not JSON is both: Barge has the upstream's answer (kept in
  ``response``, body as text) but refused it, so ``error`` names the reason.

An upstream's JSON body goes into the line as the bytes it sent (``json_fragment``), not
parsed and dumped again, so no value changes on the way through (integers beyond 64
bits, floats with more digits than a double holds).
"""

from __future__ import annotations

from typing import Any

import orjson

from barge.domain.ids import new_request_id


class ResultCodes:
    """Error codes written to the error file."""

    # No longer written: a final non-2xx (3xx included) is the upstream's response with
    # error null. Kept as the name of that outcome.
    UPSTREAM_HTTP_ERROR = "upstream_http_error"
    INVALID_UPSTREAM_RESPONSE = "invalid_upstream_response"  # 2xx but not a JSON body
    UPSTREAM_TIMEOUT = "upstream_timeout"  # no full answer within the request timeout
    UPSTREAM_CONNECTION_ERROR = "upstream_connection_error"  # refused, reset, closed mid-body
    UPSTREAM_RESPONSE_TOO_LARGE = "upstream_response_too_large"  # over --max-response-bytes
    BATCH_EXPIRED = "batch_expired"  # the batch's completion window ran out first
    INTERNAL_ERROR = "internal_error"  # Barge itself failed on this request


_CRLF_TO_SPACE = bytes.maketrans(b"\r\n", b"  ")


def json_fragment(data: bytes) -> orjson.Fragment:
    """A JSON text the caller has checked is valid, to embed verbatim in a line. Raw CR
    and LF can only be insignificant whitespace in valid JSON (inside strings they must
    be escaped), so turning them into spaces keeps the line one line and every value as
    the upstream sent it."""
    if 10 in data or 13 in data:  # LF, CR: an int looks up by memchr, faster than b"\n"
        data = data.translate(_CRLF_TO_SPACE)
    return orjson.Fragment(data)


def output_line(custom_id: str, status_code: int, request_id: str, body: Any) -> bytes:
    """The line of an upstream answer: ``body`` is a value or a ``json_fragment``. Used
    for successes and for final HTTP errors alike (``error: null``)."""
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
    """A line with ``error: {code, message}``; ``response`` only where Barge has an
    answer it refused (``status_code`` given)."""
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
