"""The telemetry page of a model version shows what the hub's telemetry API merged, for any cohort."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.dashboard import scenario
from tests.dashboard.conftest import screenshot
from tests.hub.e2e import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def test_telemetry_page_matches_the_telemetry_api(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    page.goto(f"{base_url}/dashboard/telemetry/digits/1")
    s = fleet.api("GET", "/api/v1/telemetry/digits/1").json()
    assert s["n"] == sum(t[0] for t in scenario.TELEMETRY.values()) == 350
    assert page.get_by_test_id("inferences").inner_text() == str(s["n"])
    assert page.get_by_test_id("error-rate").inner_text() == pct(s["error_rate"])
    assert page.get_by_test_id("fallback-rate").inner_text() == pct(s["fallback_rate"])
    for q in ("p50", "p95", "p99"):
        assert page.get_by_test_id(q).inner_text() == f"{s['latency_ms'][q]:.2f}"
    assert page.get_by_test_id("accuracy").inner_text() == pct(s["labels"]["accuracy"]) == "85.0%"
    assert page.get_by_test_id("drift-score").inner_text() == f"{s['drift']['score']:.3f}"
    for f in s["drift"]["features"]:
        card = page.locator(f".feature[data-feature='{f['name']}']")
        assert card.get_attribute("data-drifted") == ("yes" if f["drifted"] else "no")
        assert card.get_by_test_id("psi").inner_text() == f"{f['psi']:.3f}"
        assert card.get_by_test_id("js").inner_text() == f"{f['js']:.3f}"
        shares = [float(card.locator("rect.win").nth(i).get_attribute("data-share") or "nan")
                  for i in range(card.locator("rect.win").count())]  # fmt: skip
        total = sum(f["window_counts"])
        assert shares == pytest.approx([c / total for c in f["window_counts"]], abs=1e-4)
    assert page.locator("[data-testid=latency-hist] rect.win").count() > 0
    screenshot(page, "telemetry-digits-v1")


def test_telemetry_cohort_filter_and_empty_and_unknown_versions(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    page.goto(f"{base_url}/dashboard/telemetry/digits/1")
    page.select_option("select[name=profile]", "x86_gateway")
    page.click("form.cohort button")
    page.wait_for_url(lambda url: "profile=x86_gateway" in url)
    cohort = fleet.api("GET", "/api/v1/telemetry/digits/1", params={"profile": "x86_gateway"}).json()
    assert page.get_by_test_id("inferences").inner_text() == str(cohort["n"]) == "50"
    assert page.get_by_test_id("accuracy").inner_text() == "no labels"
    page.goto(f"{base_url}/dashboard/telemetry/meter/2")
    assert fleet.api("GET", "/api/v1/telemetry/meter/2").json()["n"] == 0
    assert page.get_by_test_id("no-telemetry").is_visible()
    assert page.get_by_test_id("trend-requests-empty").is_visible()  # the trend says so too
    bad_tag = page.goto(f"{base_url}/dashboard/telemetry/digits/1?tag=no-equals-sign")
    assert bad_tag is not None and bad_tag.status == 422
    api_detail = fleet.api("GET", "/api/v1/telemetry/digits/1", params={"tag": "no-equals-sign"}).json()["detail"]
    assert page.get_by_test_id("error").inner_text() == api_detail
    response = page.goto(f"{base_url}/dashboard/telemetry/digits/9")
    assert response is not None and response.status == 404
    detail = fleet.api("GET", "/api/v1/telemetry/digits/9").json()["detail"]
    assert page.get_by_test_id("error").inner_text() == detail


def test_drift_alerts_on_the_fleet_page_and_the_drifting_cohort(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    page.reload()  # the monitor may have opened more alerts since sign-in
    open_alerts = fleet.api("GET", "/api/v1/telemetry/alerts", params={"state": "open"}).json()
    digits = {a["cohort"] for a in open_alerts if a["model"] == "digits"}
    assert digits >= {"group:edge"} and "fleet" not in digits  # gw-1 alone, every value in the upper bin
    assert page.get_by_test_id("alerts-open").inner_text() == str(len(open_alerts))
    rows = page.locator("[data-testid=alerts-table] tbody tr")
    assert rows.count() == len(open_alerts)
    edge = next(a for a in open_alerts if a["cohort"] == "group:edge" and a["model"] == "digits")
    page.locator(f"tr[data-alert='{edge['id']}'] a").click()
    page.wait_for_url(lambda url: url.endswith("/dashboard/telemetry/digits/1?group=edge"))
    cohort = fleet.api("GET", "/api/v1/telemetry/digits/1", params={"group": "edge"}).json()
    assert cohort["drift"]["dataset_drift"] is True
    assert page.locator(".feature[data-feature='x']").get_attribute("data-drifted") == "yes"
    assert page.get_by_test_id("drift-score").inner_text() == f"{cohort['drift']['score']:.3f}"
    assert page.locator(f"[data-testid=alerts-table] tr[data-alert='{edge['id']}']").count() == 1
    page.select_option("select[name=period]", "1h")
    page.click("form.cohort button")
    page.wait_for_url(lambda url: "period=1h" in url)
    assert page.get_by_test_id("inferences").inner_text() == str(cohort["n"])  # every window is minutes old
    screenshot(page, "telemetry-digits-v1-edge")
