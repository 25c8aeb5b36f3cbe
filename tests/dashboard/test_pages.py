"""Every dashboard page in headless Chromium against a running hub: the numbers shown equal the JSON API's."""

from __future__ import annotations

from collections import Counter

import pytest
from playwright.sync_api import Page

from tests.dashboard.conftest import screenshot
from tests.hub.e2e import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fleet_overview_matches_devices_api(signed_in: Page, fleet: Fleet) -> None:
    page = signed_in
    devices = fleet.api("GET", "/api/v1/devices").json()
    online = sum(1 for d in devices if d["online"])
    assert page.get_by_test_id("devices-total").inner_text() == str(len(devices)) == "6"
    assert page.get_by_test_id("devices-online").inner_text() == str(online) == "5"
    assert page.get_by_test_id("devices-offline").inner_text() == str(len(devices) - online) == "1"
    rows = page.locator("[data-testid=devices-table] tbody tr")
    assert rows.count() == len(devices)
    for d in devices:
        row = page.locator(f"[data-testid=devices-table] tr[data-device='{d['id']}']")
        assert row.get_by_test_id("online").inner_text() == ("online" if d["online"] else "offline")
        shown = ", ".join(f"{n} v{v}" for n, v in sorted(d["current_versions"].items())) or "\u2013"  # an en dash
        assert row.get_by_test_id("current").inner_text() == shown
    expected: dict[str, Counter[str]] = {}
    for d in devices:
        for name, version in d["current_versions"].items():
            expected.setdefault(d["profile"], Counter())[f"{name} v{version}"] += 1
    for profile, counts in expected.items():
        row = page.locator(f"[data-testid=versions-table] tr[data-profile='{profile}']")
        chips = row.locator(".chip")
        shown_counts = {chips.nth(i).get_attribute("data-version"): int(chips.nth(i).get_attribute("data-count") or 0)
                        for i in range(chips.count())}  # fmt: skip
        assert shown_counts == dict(counts)
    assert expected["raspberry_pi_4"] == {"digits v1": 3, "digits v2": 1}
    screenshot(page, "fleet")


def _chips(page: Page, selector: str) -> dict[str, int]:
    chips = page.locator(selector)
    return {chips.nth(i).get_attribute("data-state") or "": int(chips.nth(i).get_attribute("data-count") or 0)
            for i in range(chips.count())}  # fmt: skip


def test_rollouts_list_and_rollout_page_match_rollouts_api(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    page.click("header nav >> text=Rollouts")
    listed = fleet.api("GET", "/api/v1/rollouts").json()
    assert {r["id"] for r in listed} == {"r-v1", "r-edge", "r-lab"}
    for r in listed:
        row = page.locator(f"[data-testid=rollouts-table] tr[data-rollout='{r['id']}']")
        assert row.get_by_test_id("state").inner_text() == r["state"].replace("_", " ")
        healthy = sum(w["counts"].get("healthy", 0) for w in r["waves"])
        assert row.get_by_test_id("healthy").inner_text() == str(healthy)
        assert row.get_by_test_id("total").inner_text() == str(sum(w["total"] for w in r["waves"]))
        last = len(r["waves"]) - 1  # waves counted from 0, as the API's current_wave and the reasons count them
        canary = " (canary)" if r["current_wave"] == 0 and r["spec"]["canary_percent"] else ""
        position = f"wave {r['current_wave']}{canary}" + (f" of 0-{last}" if last > 0 else "")
        assert row.get_by_test_id("wave").inner_text() == position
    lab = page.locator("[data-testid=rollouts-table] tr[data-rollout='r-lab']").get_by_test_id("wave")
    assert lab.inner_text() == "wave 0 (canary) of 0-1"  # the lab canary is on probation
    screenshot(page, "rollouts")
    for rollout_id in ("r-edge", "r-lab"):
        page.goto(f"{base_url}/dashboard/rollouts/{rollout_id}")
        api = fleet.rollout(rollout_id)
        assert page.get_by_test_id("rollout-state").inner_text() == api["state"].replace("_", " ")
        for wave in api["waves"]:
            row = page.locator(f"[data-testid=waves-table] tr[data-wave='{wave['wave']}']")
            assert row.get_by_test_id("wave-total").inner_text() == str(wave["total"])
            assert _chips(page, f"[data-testid=waves-table] tr[data-wave='{wave['wave']}'] .chip") == wave["counts"]
            canary = wave["wave"] == 0 and api["spec"]["canary_percent"] > 0
            assert row.get_by_test_id("wave-name").inner_text() == f"wave {wave['wave']}" + " (canary)" * canary
        for d in api["devices"]:
            row = page.locator(f"[data-testid=rollout-devices] tr[data-device='{d['device_id']}']")
            cell = row.get_by_test_id("device-state")
            assert cell.get_attribute("data-state") == d["state"]
            canary = d["wave"] == 0 and api["spec"]["canary_percent"] > 0
            assert row.get_by_test_id("device-wave").inner_text() == f"{d['wave']}" + " (canary)" * canary
        screenshot(page, f"rollout-{rollout_id}")
    # r-edge rolled back automatically: the reason is shown and only rollback-free verbs are offered (none)
    page.goto(f"{base_url}/dashboard/rollouts/r-edge")
    reason = fleet.rollout("r-edge")["reason"]
    assert page.get_by_test_id("rollout-reason").inner_text() == reason
    assert reason.startswith("wave 0: ")  # the engine's words: the same wave as the page's "wave 0" row
    assert page.locator("[data-testid=waves-table] tr[data-wave='0']").get_by_test_id("wave-name").inner_text() == (
        "wave 0")  # fmt: skip
    assert page.get_by_test_id("rollout-wave").inner_text() == "wave 0"  # one wave: canary 0 %, stages [100]
    assert page.locator(".actions button").count() == 0


def test_models_page_lists_every_registry_version(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    page.goto(f"{base_url}/dashboard/models")
    rows = fleet.api("GET", "/api/v1/models").json()
    assert len(rows) == 7  # digits v1, v2 and meter v1 for two profiles each, meter v2 for one
    shown = page.locator("[data-testid=models-table] tbody tr")
    assert shown.count() == len(rows)
    for r in rows:
        key = f"[data-model='{r['name']}'][data-version='{r['version']}'][data-profile='{r['profile']}']"
        row = page.locator(f"tr{key}")
        assert row.locator("code").get_attribute("title") == r["artifact_sha256"]
        assert row.locator("[data-size]").get_attribute("data-size") == str(r["artifact_size"])
    screenshot(page, "models")


def test_audit_page_shows_the_audit_api_newest_first(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    page.goto(f"{base_url}/dashboard/audit")
    entries = fleet.api("GET", "/api/v1/audit", params={"limit": 50}).json()
    shown = page.locator("[data-testid=audit-table] tbody tr")
    assert shown.count() == len(entries)
    ids = [shown.nth(i).get_attribute("data-id") for i in range(shown.count())]
    assert ids == [str(e["id"]) for e in entries]
    actions = [shown.nth(i).get_by_test_id("action").inner_text() for i in range(shown.count())]
    assert actions == [e["action"] for e in entries]
    assert actions[0] == "dashboard.login" and "rollout.create" in actions
    screenshot(page, "audit")


def test_device_page_shows_its_record_and_events(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    page.locator("[data-testid=devices-table] tr[data-device='gw-1'] a").click()
    page.wait_for_url(lambda url: url.endswith("/dashboard/devices/gw-1"))
    device = fleet.api("GET", "/api/v1/devices/gw-1").json()
    events = fleet.api("GET", "/api/v1/devices/gw-1/events", params={"limit": 50}).json()
    assert page.get_by_test_id("online").inner_text() == ("online" if device["online"] else "offline")
    row = page.locator("[data-testid=device-models] tr[data-model='digits']")
    assert row.get_by_test_id("current").inner_text() == f"v{device['current_versions']['digits']}" == "v1"
    kinds = page.locator("[data-testid=events-table] [data-testid=kind]")
    assert [kinds.nth(i).inner_text() for i in range(kinds.count())] == [e["kind"] for e in events]
    assert "self_test_failed" in [e["kind"] for e in events]  # gw-1 failed v2's self-test
    screenshot(page, "device-gw-1")
    missing = page.goto(f"{base_url}/dashboard/devices/nope")
    assert missing is not None and missing.status == 404
