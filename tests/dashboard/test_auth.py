"""Dashboard sign-in and form protection against the running hub (plain HTTP, no browser needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from hub.dashboard.auth import COOKIE, SESSION_S, csrf_token, issue_session, safe_next, session_valid
from tests.dashboard import scenario
from tests.hub.e2e import ADMIN_TOKEN, Fleet

pytestmark = [pytest.mark.integration]


def _login(fleet: Fleet, token: str = ADMIN_TOKEN, next_path: str = "/dashboard") -> httpx.Response:
    return httpx.post(f"{fleet.url}/dashboard/login", data={"token": token, "next": next_path}, timeout=30)


def test_pages_require_a_session_and_the_cookie_is_not_the_token(fleet: Fleet) -> None:
    r = httpx.get(f"{fleet.url}/dashboard/rollouts", timeout=30)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login?next=/dashboard/rollouts"
    bad = _login(fleet, "not-the-token")
    assert bad.status_code == 401 and COOKIE not in bad.cookies and "not the admin token" in bad.text
    ok = _login(fleet, next_path="/dashboard/models")
    assert ok.status_code == 303 and ok.headers["location"] == "/dashboard/models"
    set_cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie and "Path=/dashboard" in set_cookie
    value = ok.cookies[COOKIE]
    assert ADMIN_TOKEN not in value and ADMIN_TOKEN not in ok.headers["location"]
    page = httpx.get(f"{fleet.url}/dashboard/models", cookies={COOKIE: value}, timeout=30)
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert ADMIN_TOKEN not in page.text
    forged = httpx.get(f"{fleet.url}/dashboard", cookies={COOKIE: value[:-4] + "0000"}, timeout=30)
    assert forged.status_code == 303


def test_actions_need_the_form_token_and_same_origin(fleet: Fleet) -> None:
    value = _login(fleet).cookies[COOKIE]
    url = f"{fleet.url}/dashboard/rollouts/{scenario.ROLLOUT_RUNNING}/pause"
    before = fleet.rollout(scenario.ROLLOUT_RUNNING)["state"]
    no_token = httpx.post(url, cookies={COOKIE: value}, data={}, timeout=30)
    assert no_token.status_code == 403 and "form token" in no_token.text
    good = csrf_token(value, ADMIN_TOKEN)
    cross = httpx.post(url, cookies={COOKIE: value}, data={"csrf": good}, headers={"Origin": "http://evil.test"},
                       timeout=30)  # fmt: skip
    assert cross.status_code == 403 and "cross-origin" in cross.text
    assert fleet.rollout(scenario.ROLLOUT_RUNNING)["state"] == before
    no_session = httpx.post(url, data={"csrf": good}, timeout=30)
    assert no_session.status_code == 303 and fleet.rollout(scenario.ROLLOUT_RUNNING)["state"] == before


def test_sessions_expire_and_die_with_the_admin_token() -> None:
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    value = issue_session("tok-a", now)
    assert session_valid(value, "tok-a", now + timedelta(seconds=SESSION_S - 1))
    assert not session_valid(value, "tok-a", now + timedelta(seconds=SESSION_S + 1))
    assert not session_valid(value, "tok-b", now)  # rotated admin token
    assert not session_valid("v1.notanumber.abc", "tok-a", now) and not session_valid(None, "tok-a", now)
    assert safe_next("//evil.test/x") == "/dashboard" and safe_next("https://evil.test") == "/dashboard"
    assert safe_next("/dashboard/audit?offset=50") == "/dashboard/audit?offset=50"
