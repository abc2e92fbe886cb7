"""``/ui/``: the dashboard, one page of HTML, CSS and JavaScript from ``static/`` (package
data; no build step). The page signs in with an API key held in the tab's sessionStorage
and calls the API with it; it routes within itself by the URL's fragment (``#/batches/ID``),
so the server has only the page and its assets to serve."""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter
from starlette.responses import RedirectResponse, Response

from barge.exceptions import NotFound
from barge.ui.security import DASHBOARD_CSP, page_headers

router = APIRouter(prefix="/ui", include_in_schema=False)

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@functools.cache
def assets() -> dict[str, tuple[bytes, str]]:
    """Every file of ``static/`` by name, with its media type (read once; a few KiB)."""
    found: dict[str, tuple[bytes, str]] = {}
    for entry in (resources.files("barge.ui") / "static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in MEDIA_TYPES:
            found[entry.name] = (entry.read_bytes(), MEDIA_TYPES[suffix])
    return found


def _serve(name: str) -> Response:
    asset = assets().get(name)
    if asset is None:
        raise NotFound(f"No such dashboard file: {name}")
    body, media_type = asset
    return Response(body, media_type=media_type, headers=page_headers(DASHBOARD_CSP))


@router.get("")
async def dashboard_root() -> Response:
    # Relative, so that a proxy's path prefix is kept: /ui -> /ui/.
    return RedirectResponse("ui/", status_code=307, headers=page_headers(DASHBOARD_CSP))


@router.get("/")
async def dashboard_page() -> Response:
    return _serve("index.html")


@router.get("/assets/{name}")
async def dashboard_asset(name: str) -> Response:
    if name == "index.html":
        raise NotFound(f"No such dashboard file: {name}")
    return _serve(name)
