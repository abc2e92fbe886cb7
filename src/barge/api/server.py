"""Builds the FastAPI application around an ``App``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from barge import __version__
from barge.api import admin, batches, compact, downloads, errors, files
from barge.api.responses import JSON
from barge.app import App
from barge.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(web: FastAPI) -> AsyncIterator[None]:
        async with App(settings) as app:
            web.state.barge = app
            yield

    web = FastAPI(title="Barge", version=__version__, lifespan=lifespan,
                  default_response_class=JSON)
    errors.install(web)
    web.include_router(files.router)
    web.include_router(batches.router)
    web.include_router(admin.router)
    web.include_router(downloads.router)
    web.include_router(compact.router)

    @web.get("/healthz", include_in_schema=False)
    async def healthz() -> JSON:
        return JSON({"status": "ok"})

    return web
