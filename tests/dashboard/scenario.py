"""One fleet for every dashboard test: a real hub under uvicorn, a private Mosquitto, simulated devices.

Devices pi-0..pi-3 (raspberry_pi_4, group lab) and gw-0, gw-1 (x86_gateway, group edge; gw-1 fails v2's
self-test). Rollouts: `r-v1` (v1 to all, completed), `r-edge` (v2 to edge with auto-rollback and its own
gate limits: rolled back), `r-lab` (v2 to lab, a canary on probation for an hour: stays running, for
pause/resume). Telemetry: digits v1 from pi-0, pi-2 and gw-1, digits v2 from the lab canary, and a second
model, `meter` (meter.py), with every source of answers over ten hours. gw-0 drops off the network
afterwards, so the fleet shows one offline device.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from protocol.telemetry import LATENCY_BUCKETS_MS, FeatureWindow, TelemetryMessage, TelemetrySummary, encode_message
from protocol.topics import Channel
from tests.dashboard import meter
from tests.hub.e2e import Fleet

LAB = [f"pi-{i}" for i in range(4)]
EDGE = ["gw-0", "gw-1"]
OFFLINE = "gw-0"
ROLLOUT_RUNNING = "r-lab"


def build(fleet: Fleet) -> None:
    """Push models, enroll devices, play three rollouts; returns when the fleet is in the state above."""
    fleet.push("digits", 1, ["raspberry_pi_4", "x86_gateway"])
    fleet.push("digits", 2, ["raspberry_pi_4", "x86_gateway"])
    meter.push(fleet, 1, meter.PROFILES)
    meter.push(fleet, 2, ["raspberry_pi_4"])
    for device_id in LAB:
        fleet.enroll(device_id, group="lab")
    fleet.enroll("gw-0", profile="x86_gateway", group="edge")
    fleet.enroll("gw-1", profile="x86_gateway", group="edge", failing={2})
    quick = {"model": "digits", "canary_percent": 0, "stages": [100], "probation_s": 0}
    _create(fleet, {**quick, "id": "r-v1", "version": 1})
    fleet.wait_rollout("r-v1", "completed")
    _create(fleet, {**quick, "id": "r-edge", "version": 2, "target": {"group": "edge"}, "auto_rollback": True,
                    "gate_limits": EDGE_LIMITS})  # fmt: skip
    fleet.wait_rollout("r-edge", "rolled_back")
    _wait(lambda: all(fleet.devices[d].active == {"digits": 1} for d in EDGE), "edge back on v1")
    _create(fleet, {"id": ROLLOUT_RUNNING, "model": "digits", "version": 2, "target": {"group": "lab"},
                    "canary_percent": 25, "stages": [100], "probation_s": 3600})  # fmt: skip
    _wait(lambda: _device_state(fleet, ROLLOUT_RUNNING) == {"probation": 1, "pending": 3}, "lab canary on probation")
    send_telemetry(fleet)
    meter.send(fleet, datetime.now(UTC))
    _wait(lambda: any(a["model"] == meter.NAME for a in _open_alerts(fleet)), "a meter drift alert")
    fleet.devices[OFFLINE].crash()
    _wait(lambda: not fleet.api("GET", f"/api/v1/devices/{OFFLINE}").json()["online"], f"{OFFLINE} offline")


# The hub's monitor runs every 0.5 s and alerts from 50 inferences on (conftest), so group edge (gw-1 alone,
# every value in the upper bin) opens a drift alert while the fleet as a whole does not drift.
MONITOR = {"telemetry_eval_s": 0.5, "telemetry_alert_min_n": 50}
EDGE_LIMITS = {"latency_p95_max_ms": 50, "error_rate_increase": 0.02}  # r-edge's gate limits (others: defaults)
# device -> (inferences, errors, fallbacks, latency bucket, counts of feature x over the baseline's 2 bins)
TELEMETRY = {"pi-0": (200, 4, 10, 6, [100, 100]), "pi-2": (100, 0, 0, 9, [10, 90]), "gw-1": (50, 1, 0, 5, [0, 50])}
CONFUSION = {"pi-0": [[40, 10], [5, 45]]}  # delayed labels arrived on pi-0 only
CANARY_V2 = (80, 7, [40, 40])  # the lab canary's window of digits v2: inferences, latency bucket, counts of x


def send_telemetry(fleet: Fleet) -> None:
    """Each device in TELEMETRY uploads one window of digits v1 over MQTT, as the agent's outbox does, and the
    lab canary one of v2; the windows start when r-lab was created (its page's trend shows both versions)."""
    end = datetime.now(UTC)
    start = datetime.fromisoformat(fleet.rollout(ROLLOUT_RUNNING)["created_at"].replace("Z", "+00:00"))
    canary = next(d["device_id"] for d in fleet.rollout(ROLLOUT_RUNNING)["devices"] if d["state"] == "probation")
    windows = [(device_id, 1, n, errors, fallbacks, bucket, counts)
               for device_id, (n, errors, fallbacks, bucket, counts) in TELEMETRY.items()]  # fmt: skip
    windows.append((canary, 2, CANARY_V2[0], 0, 0, CANARY_V2[1], CANARY_V2[2]))
    for seq, (device_id, version, n, errors, fallbacks, bucket, counts) in enumerate(windows, start=1):
        latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        latency[bucket] = n
        device = fleet.devices[device_id]
        summary = TelemetrySummary(
            device_id=device_id, model="digits", version=version, profile=device.profile,
            window_start=start, window_end=end, n=n, errors=errors,
            fallback={"no_model": fallbacks} if fallbacks else {}, latency_buckets=latency,
            inputs=[FeatureWindow(name="x", counts=counts)],
            confusion=CONFUSION.get(device_id) if version == 1 else None,
        )  # fmt: skip
        assert device.client is not None
        message = TelemetryMessage(id=seq, device_id=device_id, summary=summary)
        device.client.publish(device.topic(Channel.TELEMETRY), encode_message(message), qos=1).wait_for_publish(10)
    _wait(lambda: fleet.api("GET", "/api/v1/telemetry/digits/1").json()["rows"] == len(TELEMETRY), "telemetry stored")
    _wait(lambda: fleet.api("GET", "/api/v1/telemetry/digits/2").json()["rows"] == 1, "the canary's v2 window stored")
    _wait(lambda: fleet.api("GET", "/api/v1/telemetry/alerts", params={"state": "open"}).json(), "a drift alert")


def _open_alerts(fleet: Fleet) -> list[dict[str, object]]:
    alerts: list[dict[str, object]] = fleet.api("GET", "/api/v1/telemetry/alerts", params={"state": "open"}).json()
    return alerts


def _create(fleet: Fleet, body: dict[str, object]) -> None:
    r = fleet.api("POST", "/api/v1/rollouts", json=body)
    assert r.status_code == 201, r.text


def _device_state(fleet: Fleet, rollout_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in fleet.rollout(rollout_id)["devices"]:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    return counts


def _wait(predicate: object, what: str, timeout: float = 30) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")
