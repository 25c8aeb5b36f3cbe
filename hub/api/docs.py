"""`install_docs(app)`: Swagger UI at /docs and ReDoc at /redoc, served from the hub itself.

FastAPI's own docs pages load Swagger UI and ReDoc from a CDN (and ReDoc's from Google Fonts), so a hub on an
air-gapped network shows a blank page. Here the same pages point at a StaticFiles mount of the assets that the
`fastapi-offline` package ships (Swagger UI 5 and the ReDoc 2 standalone bundle, as package data; we use its
files, not its `FastAPIOffline` factory). The pages also carry a CSP that lets the browser load nothing from
another origin: the ReDoc bundle itself fetches Redocly's logo from its CDN, which the CSP stops (the logo hides
itself when it cannot load)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from hub.errors import HubError

ASSETS_PACKAGE = "fastapi_offline"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
DOCS_HEADERS = {
    # 'unsafe-inline': FastAPI's pages start Swagger UI with an inline script and style ReDoc inline.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Swagger UI's default validatorUrl puts a badge from validator.swagger.io on the page: off.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def assets_dir() -> Path:
    """The directory of Swagger UI and ReDoc files inside the installed `fastapi-offline` package."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or spec.origin is None:
        raise HubError("the API docs need the fastapi-offline package: pip install 'edgefleet[hub]'")
    directory = Path(spec.origin).parent / "static"
    missing = [name for name in ASSET_FILES if not (directory / name).is_file()]
    if missing:
        raise HubError(f"fastapi-offline at {directory.parent} lacks {', '.join(missing)}: reinstall it")
    return directory


def install_docs(
    app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc", assets_url: str = "/docs-assets"
) -> None:
    """Add /docs, its OAuth2 redirect and /redoc to an app built with `docs_url=None, redoc_url=None`."""
    openapi_url = app.openapi_url
    if openapi_url is None:  # no schema, no docs (as FastAPI does)
        return
    app.mount(assets_url, StaticFiles(directory=assets_dir()), name="docs-assets")
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    swagger_ui_parameters = {**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})}

    async def swagger_ui_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        response = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{assets_url}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{assets_url}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets_url}/favicon.png",
            oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=swagger_ui_parameters,
        )
        response.headers.update(DOCS_HEADERS)
        return response

    async def redoc_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        response = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{assets_url}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{assets_url}/favicon.png",
            with_google_fonts=False,
        )
        response.headers.update(DOCS_HEADERS)
        return response

    app.add_route(docs_url, swagger_ui_html, include_in_schema=False)
    if oauth2_redirect_url:

        async def swagger_ui_redirect(_request: Request) -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

        app.add_route(oauth2_redirect_url, swagger_ui_redirect, include_in_schema=False)
    app.add_route(redoc_url, redoc_html, include_in_schema=False)
