"""Every dashboard page in headless Chromium against a running hub: the numbers shown equal the JSON API's."""

from __future__ import annotations

from collections import Counter

import pytest
from playwright.sync_api import Page

from tests.dashboard import scenario
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
        shown = ", ".join(f"{n} v{v}" for n, v in sorted(d["current_versions"].items())) or "–"
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
