"""``/docs``: Swagger UI from files shipped in a Python package (``fastapi-offline``'s
Swagger UI 5, which reads the OpenAPI 3.1 that FastAPI writes) instead of FastAPI's
default CDN links: the docs work on a machine with no way out, and load nothing from
anywhere but this server. There is no ``/redoc``: ReDoc's bundle fetches its logo from
its maker's CDN, whatever its options."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from barge.ui.security import docs_csp, page_headers

ASSETS = "/docs/assets"
FAVICON = "/ui/assets/favicon.svg"


def _with_headers(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(page_headers(docs_csp(bytes(page.body).decode())))
    return page


def install(web: FastAPI) -> None:
    openapi_url = web.openapi_url or "/openapi.json"
    static = resources.files("fastapi_offline") / "static"
    web.mount(ASSETS, StaticFiles(directory=str(static)), name="docs-assets")

    @web.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_headers(get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{web.title} API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=root + FAVICON,
            # No online validator badge (it would call validator.swagger.io).
            swagger_ui_parameters={"validatorUrl": None},
        ))

