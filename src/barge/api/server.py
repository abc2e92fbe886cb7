"""Builds the FastAPI application around an ``App``."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp

from barge import __version__
from barge.api import admin, batches, compact, downloads, errors, files, me, webhooks
from barge.api.middleware import ResponseHeaders
from barge.api.responses import JSON
from barge.app import App
from barge.exceptions import Unauthenticated
from barge.settings import Settings
from barge.ui import install as install_ui


class BargeAPI(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Outermost, so that answers of the error handlers get the headers too.
        return ResponseHeaders(super().build_middleware_stack())


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(web: FastAPI) -> AsyncIterator[None]:
        async with App(settings) as app:
            web.state.barge = app
            yield

    web = BargeAPI(title="Barge", version=__version__, lifespan=lifespan,
                   default_response_class=JSON, docs_url=None, redoc_url=None)
    errors.install(web)
    web.include_router(files.router)
    web.include_router(batches.router)
    web.include_router(admin.router)
    web.include_router(downloads.router)
    web.include_router(compact.router)
    web.include_router(me.router)
    web.include_router(webhooks.router)
    install_ui(web)  # /ui/ and the API docs (/docs), served without a CDN

    @web.get("/healthz", include_in_schema=False)
    async def healthz() -> JSON:
        app: App = web.state.barge
        return JSON(await app.check_health())

    @web.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # Prometheus text format; with --metrics-key, that key as a Bearer token.
        app: App = web.state.barge
        key = app.settings.metrics_key
        if key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                raise Unauthenticated("Send the metrics key as 'Authorization: Bearer <key>'.",
                                      code="invalid_api_key")
        return Response(await app.metrics.render(app.store), media_type=CONTENT_TYPE_LATEST)

    return web
