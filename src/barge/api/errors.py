"""Every error leaves as the OpenAI shape ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from barge.api.responses import JSON
from barge.exceptions import BargeError

log = logging.getLogger("barge.api")


def error_response(
    status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> JSON:
    return JSON(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status_code=status,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(BargeError)
    async def barge_error(_: Request, exc: BargeError) -> JSON:
        if exc.status_code >= 500:
            log.error("%s: %s", type(exc).__name__, exc.message)
        return error_response(
            exc.status_code, exc.message, type_=exc.error_type, param=exc.param, code=exc.code
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSON:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else (
            f"Invalid request: {first.get('msg', 'invalid')}."
        )
        return error_response(400, message, type_="invalid_request_error", param=param,
                              code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSON:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), type_="invalid_request_error",
                              code=code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSON:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "The server had an internal error.", type_="server_error")
