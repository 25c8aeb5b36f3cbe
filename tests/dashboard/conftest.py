"""Dashboard fixtures: one fleet per session, Debian's Chromium for Playwright, a signed-in page."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.dashboard import scenario
from tests.hub.e2e import ADMIN_TOKEN, Fleet

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The hub, broker and devices of `scenario`, shared by every dashboard test."""
    root = f"edgefleet-dash-{uuid.uuid4().hex[:8]}/v1"
    workdir = tmp_path_factory.mktemp("dashboard-fleet")
    f = Fleet(workdir=workdir, root=root, db_url=f"sqlite:///{workdir / 'hub.db'}")
    f.start_broker(**scenario.MONITOR)
    f.start_hub()
    try:
        scenario.build(f)
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="session")
def base_url(fleet: Fleet) -> str:
    return fleet.url


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Debian's chromium (never `playwright install`), headless, without background chatter."""
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "headless": True,
        "args": CHROMIUM_ARGS,
    }


@pytest.fixture
def signed_in(page: Page, base_url: str) -> Iterator[Page]:
    """A page signed in through the login form; afterwards, no console errors (e.g. a CSP violation) allowed."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "response", lambda r: errors.append(f"{r.status} {r.url}") if "/static/" in r.url and r.status >= 400 else None
    )
    page.goto(f"{base_url}/dashboard/login")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/dashboard")
    yield page
    # a page answered with 404/409 on purpose logs "Failed to load resource"; static files are checked above
    unexpected = [e for e in errors if not e.startswith("Failed to load resource: the server responded")]
    assert not unexpected, unexpected


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/dashboard/ (gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path
