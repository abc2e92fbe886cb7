"""The browser side of Barge, served by Barge itself with nothing loaded from elsewhere:
the dashboard at ``/ui/`` (plain HTML, CSS and JavaScript shipped in ``static/``) and the
API docs at ``/docs`` (Swagger UI from the ``fastapi-offline`` package instead of a
CDN). Every page carries a Content-Security-Policy that keeps it to
this server."""

from __future__ import annotations

from fastapi import FastAPI

from barge.ui import dashboard, docs


def install(web: FastAPI) -> None:
    """Add the dashboard and the docs page to ``web`` (built with ``docs_url=None`` and
    ``redoc_url=None``, so FastAPI's CDN-backed pages are not there)."""
    web.include_router(dashboard.router)
    docs.install(web)
