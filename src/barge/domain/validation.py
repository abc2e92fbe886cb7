"""Checks on what clients send: input-file lines, batch parameters, metadata."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from barge.domain.models import LineError

METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
# Bounds of ``expires_after.seconds`` on files and ``output_expires_after.seconds``.
MIN_EXPIRY_SECONDS, MAX_EXPIRY_SECONDS = 3600, 2_592_000

_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class LineCodes:
    """Error codes of the per-line checks; each names one kind of bad line."""

    INVALID_JSON = "invalid_json_line"
    MISSING_CUSTOM_ID = "missing_custom_id"
    DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
    INVALID_METHOD = "invalid_method"
    INVALID_URL = "invalid_url"
    INVALID_BODY = "invalid_body"
    MISSING_MODEL = "missing_model"
    MODEL_NOT_FOUND = "model_not_found"  # no upstream serves the line's model
    TOO_MANY_REQUESTS = "too_many_requests"
    FILE_TOO_LARGE = "file_too_large"
    EMPTY_FILE = "empty_file"
    INPUT_FILE_MISSING = "input_file_missing"
    HASH_MISMATCH = "hash_mismatch"  # the input file's SHA-256 is not the one given


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """A valid request line, parsed."""

    custom_id: str
    model: str
    body: dict[str, Any]


UTF8_BOM = b"\xef\xbb\xbf"


def bom_length(head: bytes) -> int:
    """Bytes of a UTF-8 byte-order mark at the start of a file (``head``: its first
    bytes). The mark is no part of the first line: slices start after it, so every
    reader of lines (validation, dispatch, expiry) skips it, while the file's bytes (and
    their SHA-256) stay as uploaded."""
    return len(UTF8_BOM) if head.startswith(UTF8_BOM) else 0


def is_blank(raw: bytes) -> bool:
    """Whitespace-only lines carry no request and are skipped, not counted."""
    return not raw.strip()


def parse_line(raw: bytes, line_no: int, endpoint: str) -> ParsedLine | LineError:
    """Check one non-blank input line against the batch's endpoint; ``line_no`` is 1-based."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return LineError(LineCodes.INVALID_JSON, "Line is not valid JSON.", line_no)
    if not isinstance(obj, dict):
        return LineError(LineCodes.INVALID_JSON, "Line is not a JSON object.", line_no)
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(
            LineCodes.MISSING_CUSTOM_ID,
            "Each line needs a non-empty string 'custom_id'.",
            line_no,
            "custom_id",
        )
    if obj.get("method") != "POST":
        return LineError(
            LineCodes.INVALID_METHOD, "Only the 'POST' method is supported.", line_no, "method"
        )
    if obj.get("url") != endpoint:
        return LineError(
            LineCodes.INVALID_URL,
            f"The 'url' must be the batch's endpoint {endpoint!r}.",
            line_no,
            "url",
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return LineError(
            LineCodes.INVALID_BODY, "The 'body' must be a JSON object.", line_no, "body"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return LineError(
            LineCodes.MISSING_MODEL, "The 'body' needs a string 'model'.", line_no, "body.model"
        )
    return ParsedLine(custom_id, model, body)


def duplicate_error(custom_id: str, line_no: int) -> LineError:
    """The error of a line (``line_no``, 1-based) whose custom_id an earlier line had;
    finding such lines in bounded memory is ``barge.engine.duplicates``' work."""
    return LineError(
        LineCodes.DUPLICATE_CUSTOM_ID,
        f"The custom_id {custom_id!r} appears more than once.",
        line_no,
        "custom_id",
    )


def window_seconds(window: str) -> int | None:
    """Seconds in a completion window such as ``24h``; None when it is not of that form."""
    m = _WINDOW.fullmatch(window)
    if m is None:
        return None
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def metadata_problem(metadata: Mapping[str, Any]) -> str | None:
    """Why ``metadata`` breaks the OpenAI limits, or None when it is fine."""
    if len(metadata) > METADATA_MAX_PAIRS:
        return f"metadata may hold at most {METADATA_MAX_PAIRS} pairs."
    for key, value in metadata.items():
        if not isinstance(key, str) or len(key) > METADATA_MAX_KEY:
            return f"metadata keys must be strings of at most {METADATA_MAX_KEY} characters."
        if not isinstance(value, str) or len(value) > METADATA_MAX_VALUE:
            return f"metadata values must be strings of at most {METADATA_MAX_VALUE} characters."
    return None
