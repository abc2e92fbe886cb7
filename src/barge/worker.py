"""``barge worker``: the engine without the API. Its web app has one route, ``GET
/healthz``, for whatever watches the node; its lifespan owns the ``App``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from barge.api.responses import JSON
from barge.app import App
from barge.settings import Settings


def create_worker_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(web: Starlette) -> AsyncIterator[None]:
        async with App(settings) as app:
            web.state.barge = app
            yield

    async def healthz(request: Request) -> JSON:
        # As the API's, and a worker also says which node it is.
        app: App = request.app.state.barge
        return JSON({**await app.check_health(), "node": app.node, "role": "worker"})

    return Starlette(routes=[Route("/healthz", healthz, methods=["GET"])], lifespan=lifespan)
