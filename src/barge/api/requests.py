"""What every router needs from a request: the App it serves, and a JSON object body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Request

from barge.exceptions import InvalidRequest, PayloadTooLarge

if TYPE_CHECKING:
    from barge.app import App


def app_of(request: Request) -> App:
    app: App = request.app.state.barge
    return app


def public_base(request: Request) -> str:
    """The base, ending in '/', of links this server hands out: ``--public-url`` when set
    (a server behind a proxy), else the host the request came to."""
    base = app_of(request).settings.public_url or str(request.base_url)
    return base if base.endswith("/") else base + "/"


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying why not (413 when it is over
    ``--max-json-bytes``: reading stops there, nothing more is held)."""
    limit = app_of(request).settings.max_json_bytes
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest("The request body is not valid JSON.") from e
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.",
                           code="request_too_large")
