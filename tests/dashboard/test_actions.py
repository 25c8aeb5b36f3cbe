"""Pause and resume a rollout from its page in the browser; the hub's API shows each change."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.dashboard import scenario
from tests.dashboard.conftest import screenshot
from tests.hub.e2e import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_pause_then_resume_changes_the_rollout_state(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    rollout_id = scenario.ROLLOUT_RUNNING
    page.goto(f"{base_url}/dashboard/rollouts/{rollout_id}")
    assert fleet.rollout(rollout_id)["state"] == "running"
    assert page.get_by_test_id("btn-resume").count() == 0
    page.get_by_test_id("btn-pause").click()
    page.wait_for_url(lambda url: url.endswith(f"/dashboard/rollouts/{rollout_id}?done=pause"))
    assert fleet.rollout(rollout_id)["state"] == "paused"
    assert page.get_by_test_id("rollout-state").inner_text() == "paused"
    assert page.get_by_test_id("action-done").inner_text() == "Pause accepted."
    screenshot(page, "rollout-paused")
    page.get_by_test_id("btn-resume").click()
    page.wait_for_url(lambda url: url.endswith(f"/dashboard/rollouts/{rollout_id}?done=resume"))
    assert fleet.rollout(rollout_id)["state"] == "running"
    assert page.get_by_test_id("rollout-state").inner_text() == "running"
    assert page.get_by_test_id("btn-pause").is_visible()
    audit = [(e["action"], e["target"]) for e in fleet.api("GET", "/api/v1/audit", params={"limit": 10}).json()]
    assert ("rollout.pause", rollout_id) in audit and ("rollout.resume", rollout_id) in audit


def test_a_refused_verb_shows_the_api_message(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    """A stale page (the rollout changed meanwhile): the hub's 409 is shown, nothing changes."""
    page = signed_in
    rollout_id = scenario.ROLLOUT_RUNNING
    page.goto(f"{base_url}/dashboard/rollouts/{rollout_id}")
    assert fleet.api("POST", f"/api/v1/rollouts/{rollout_id}/pause").status_code == 200
    try:
        page.get_by_test_id("btn-pause").click()  # the page still offers pause
        error = page.get_by_test_id("action-error")
        assert error.inner_text() == "cannot pause a rollout that is paused"
        assert fleet.rollout(rollout_id)["state"] == "paused"
    finally:
        assert fleet.api("POST", f"/api/v1/rollouts/{rollout_id}/resume").status_code == 200
