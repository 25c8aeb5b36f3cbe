"""/docs (Swagger UI) and /redoc (ReDoc) work with no network beyond the hub: every asset is the hub's own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import Page, Route

from edgefleet.brokers import free_port, wait_port
from hub.api import docs
from hub.api.docs import install_docs
from hub.api.main import create_app
from hub.errors import HubError
from hub.settings import HubSettings

CDN_HOSTS = ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com", "fonts.googleapis.com", "fonts.gstatic.com",
             "fastapi.tiangolo.com", "cdn.redoc.ly", "validator.swagger.io")  # fmt: skip
# What each asset must be: its content type, and a name only the real bundle defines.
ASSETS = {
    "swagger-ui-bundle.js": ("javascript", b"SwaggerUIBundle"),
    "swagger-ui.css": ("text/css", b".swagger-ui"),
    "redoc.standalone.js": ("javascript", b"Redoc"),
    "favicon.png": ("image/png", b"\x89PNG"),
}


class Links(HTMLParser):
    """Every src and href on a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]


def links(html: str) -> list[str]:
    parser = Links()
    parser.feed(html)
    return parser.urls


def small_app() -> FastAPI:
    """An app built as create_app builds the hub's, with two operations for the pages to show."""
    app = FastAPI(title="Docs test", docs_url=None, redoc_url=None)

    @app.get("/api/v1/things", summary="List things")
    def list_things() -> list[str]:
        return []

    @app.post("/api/v1/things", summary="Add a thing")
    def add_thing(name: str) -> str:
        return name

    install_docs(app)
    return app


@pytest.fixture(params=["install_docs", "create_app"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """A small app with install_docs, and the hub's own app (which calls it once create_app is wired)."""
    if request.param == "install_docs":
        app = small_app()
    else:
        settings = HubSettings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'hub.db'}",
                               admin_token="admin-secret-token", mqtt_enabled=False)  # fmt: skip
        app = create_app(settings, background=False)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_reference_nothing_outside_the_hub(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = links(r.text)
    assert urls, "the page references no assets at all"
    assert [u for u in urls if urlsplit(u).scheme or u.startswith("//")] == []
    assert "http://" not in r.text and "https://" not in r.text
    assert [h for h in CDN_HOSTS if h in r.text] == []
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "http" not in csp


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_every_asset_a_docs_page_references_is_served(client: TestClient, path: str) -> None:
    page = client.get(path).text
    assets = [u for u in links(page) if u.startswith("/docs-assets/")]
    assert len(assets) == (3 if path == "/docs" else 2)  # Swagger: JS, CSS, favicon; ReDoc: JS, favicon
    for url in assets:
        r = client.get(url)
        content_type, marker = ASSETS[url.rsplit("/", 1)[1]]
        assert r.status_code == 200, url
        assert content_type in r.headers["content-type"], (url, r.headers["content-type"])
        assert len(r.content) > 4000 and marker in r.content, url


def test_swagger_ui_starts_from_the_hubs_schema_without_the_validator_badge(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "url: '/openapi.json'" in page
    assert '"validatorUrl": null' in page  # Swagger UI's default puts a validator.swagger.io image on the page
    assert client.get("/openapi.json").status_code == 200


def test_oauth2_redirect_page_and_docs_are_not_in_the_schema(client: TestClient) -> None:
    r = client.get("/docs/oauth2-redirect")
    assert r.status_code == 200 and "oauth2" in r.text
    assert "http://" not in r.text and "https://" not in r.text
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


def test_docs_behind_a_path_prefix_load_their_assets_under_it() -> None:
    with TestClient(small_app(), root_path="/fleet") as c:
        urls = links(c.get("/docs").text) + links(c.get("/redoc").text)
    assert urls and all(u.startswith("/fleet/docs-assets/") for u in urls)


def test_missing_assets_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docs, "ASSETS_PACKAGE", "no_such_docs_assets_package")
    with pytest.raises(HubError, match="fastapi-offline"):
        install_docs(FastAPI(docs_url=None, redoc_url=None))


# A real browser with every request off this machine refused: the pages must still render the operations.


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    """small_app under uvicorn on a loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(small_app(), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_port("127.0.0.1", port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, object]) -> dict[str, object]:
    """Debian's chromium (never `playwright install`), as the dashboard tests launch it."""
    from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS

    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True, "args": CHROMIUM_ARGS}


@pytest.mark.integration
@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".opblock"), ("/redoc", "text=Add a thing")])
def test_docs_render_offline_in_a_browser(page: Page, live_url: str, path: str, rendered: str) -> None:
    off_host: list[str] = []
    problems: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            off_host.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)  # e.g. a CSP violation
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(live_url + path)
    page.locator(rendered).first.wait_for(state="visible", timeout=15_000)
    if path == "/docs":
        assert page.locator(".opblock").count() == 2
    # ReDoc's bundle asks Redocly's CDN for its logo; the docs CSP stops it in the browser (and the logo hides).
    blocked_logo = [p for p in problems if "cdn.redoc.ly/redoc/logo-mini.svg" in p and "has been blocked" in p]
    assert len(blocked_logo) == (1 if path == "/redoc" else 0)
    assert off_host == [] and [p for p in problems if p not in blocked_logo] == [], (off_host, problems)
