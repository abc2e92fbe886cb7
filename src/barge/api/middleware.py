"""Headers every response carries, added where the response starts (a pure ASGI wrapper:
nothing is buffered, so streamed downloads stream as before).

- ``x-request-id``: a fresh id per request (the SDK shows it as ``_request_id``). An id the
  client sent is not echoed: like OpenAI's, the id is the server's own.
- ``x-should-retry: false`` on answers a retry cannot change, which the SDK then does
  not retry (by itself it retries every 409, for instance).
"""

from __future__ import annotations

import itertools
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Answers that the same request, sent again, gets again.
FINAL_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 413, 422, 431})

REQUEST_ID = b"x-request-id"
SHOULD_RETRY = (b"x-should-retry", b"false")

# Unique, not secret: a random per-process half and a counter (as batch request ids).
_base = f"req_{secrets.randbits(80):020x}"
_counter = itertools.count(secrets.randbits(32))


def new_http_request_id() -> str:
    return f"{_base}{next(_counter) & 0xFFFFFFFFFFFF:012x}"


class ResponseHeaders:
    """Wraps the whole app, error handlers included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_http_request_id().encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((REQUEST_ID, request_id))
                if message["status"] in FINAL_STATUSES:
                    headers.append(SHOULD_RETRY)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
