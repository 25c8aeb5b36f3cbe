"""A second model for the dashboard fleet, `meter`: a classifier whose baseline has realistic bin edges, and
telemetry from every source spread over ten hours, uploaded over MQTT as agents upload it.

Baseline edges come from quantiles, as the converter makes them: repeated edges (many zeros, a point mass at
the maximum), negative values, edges from 0 to 100,000 (bin labels must be rounded, unique and never cut).

Telemetry of meter v1 (`WINDOWS`, the ground truth the tests check the pages and the API against):
- every hour from 9 to 2 hours ago, a device window from pi-1 and from pi-3 (errors, low-confidence cloud
  answers, latency and labels that change from hour to hour);
- 3 and 5 hours ago, "no model" windows from pi-3 (cloud answers while no version served there), uploaded and
  rolled up *before* that hour's device windows: the hourly rollup then starts with a window without bins and
  leaves the device windows out (what hid the devices on the demo's v1 page), which the API must make good;
- in the last hour, a window every 10 minutes from pi-1 and pi-3 (large: the fleet as a whole does not drift),
  and two from gw-1 (group edge) whose predicted classes are all class 2 while the inputs look like the
  baseline: drift alerts raised by the predicted classes alone (their FEATURES column was empty).
meter v2 is pushed too, with no telemetry at all.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, select

from hub.db.schema import telemetry
from protocol.layout import MANIFEST_FILE
from protocol.manifest import BaselineStats, GoldenCase, GoldenSet, HistogramBaseline, TensorSpec
from protocol.telemetry import LATENCY_BUCKETS_MS, FeatureWindow, TelemetryMessage, TelemetrySummary, encode_message
from protocol.topics import Channel
from tests.hub.e2e import Fleet
from tests.hub.support import make_manifest, tar_gz

NAME = "meter"
PROFILES = ["raspberry_pi_4", "x86_gateway"]
EDGES = {
    "sensors[0]": [0.0, 0.0, 0.0, 0.0625, 0.1875, 0.3125, 0.5, 0.8125, 1.0, 1.0],
    "sensors[1]": [-12.3456, -3.21, 0.0, 4.5678, 21.09876, 38.5],
    "sensors[2]": [0.0, 125.5, 1250.25, 12500.125, 99999.5],
}
COUNTS = {  # validation counts per bin (zero-width middle bins never get a value)
    "sensors[0]": [0, 0, 40, 10, 10, 10, 10, 10, 20],
    "sensors[1]": [10, 20, 30, 25, 15],
    "sensors[2]": [25, 25, 25, 25],
}
LABELS = {  # what the feature cards must show, one row per bin with a width (and the point mass at 1)
    "sensors[0]": ["0\u20130.06", "0.06\u20130.19", "0.19\u20130.31", "0.31\u20130.5", "0.5\u20130.81", "0.81\u20131",
                   "1"],
    "sensors[1]": ["\u221212.3 \u2013 \u22123.2", "\u22123.2\u20130", "0\u20134.6", "4.6\u201321.1", "21.1\u201338.5"],
    "sensors[2]": ["0\u2013126", "126\u20131250", "1250\u201312.5k", "12.5k\u2013100k"],
}  # fmt: skip
CLASSES = [30, 50, 20]
HISTORY_HOURS = range(2, 10)
NO_MODEL_HOURS = (3, 5)
WINDOWS: list[TelemetrySummary] = []  # every window sent, filled by `send`


STD = {"sensors[0]": 0.35, "sensors[1]": 12.0, "sensors[2]": 30000.0}


def baseline() -> BaselineStats:
    hists = [HistogramBaseline(name=k, edges=e, counts=COUNTS[k], mean=e[len(e) // 2], std=STD[k], min=e[0],
                               max=e[-1]) for k, e in EDGES.items()]  # fmt: skip
    return BaselineStats(n_samples=100, inputs=hists, class_counts=CLASSES)


def folder(out: Path, version: int, profiles: list[str]) -> Path:
    """A converter-style output folder of meter vN, with the realistic baseline."""
    for profile in profiles:
        artifact = f"meter-{version}-{profile}".encode()
        manifest = make_manifest(NAME, version, profile, artifact).model_copy(update={
            "baseline": baseline(), "inputs": [TensorSpec(name="sensors", shape=[None, 3], dtype="float32")],
            "outputs": [TensorSpec(name="scores", shape=[None, 3], dtype="float32")],
            "golden": GoldenSet(cases=[GoldenCase(inputs={"sensors": [0.1, 2.0, 300.0]},
                                                  expected={"scores": [0.2, 0.3, 0.5]})], atol=0.01),
        })  # fmt: skip
        (out / profile).mkdir(parents=True, exist_ok=True)
        (out / profile / "model.tflite").write_bytes(artifact)
        (out / profile / MANIFEST_FILE).write_bytes(manifest.to_bytes())
    (out / "report.json").write_text("{}")
    return out


def push(fleet: Fleet, version: int, profiles: list[str]) -> None:
    """meter vN through the push API."""
    out = folder(fleet.workdir / f"out-{NAME}-{version}", version, profiles)
    r = fleet.api("POST", "/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(out))})
    assert r.status_code in (200, 201), r.text


def _like_baseline(n: int, counts: list[int]) -> list[int]:
    """n values spread over the bins in the baseline's proportions (the last bin takes the rest)."""
    total = sum(counts)
    shares = [n * c // total for c in counts]
    shares[-1] += n - sum(shares)
    return shares


def window(device_id: str, profile: str, start: datetime, n: int, *, errors: int = 0, low_confidence: int = 0,
            bucket: int = 6, classes: list[int] | None = None,
            correct: int | None = None) -> TelemetrySummary:  # fmt: skip
    """A window of a device serving meter v1: inputs like the baseline, latency in one bucket, labels for half."""
    latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    latency[bucket] = n - errors
    classes = classes or _like_baseline(n - errors, CLASSES)
    labelled = (n - errors) // 2
    right = labelled * 9 // 10 if correct is None else correct
    confusion = [[right, labelled - right, 0], [0, 0, 0], [0, 0, 0]]
    return TelemetrySummary(
        device_id=device_id, model=NAME, version=1, profile=profile, window_start=start,
        window_end=start + timedelta(minutes=5), n=n, errors=errors,
        fallback={"low_confidence": low_confidence} if low_confidence else {}, latency_buckets=latency,
        inputs=[FeatureWindow(name=k, counts=_like_baseline(n - errors, COUNTS[k])) for k in EDGES],
        class_counts=classes, confusion=confusion,
    )  # fmt: skip


def no_model(device_id: str, profile: str, start: datetime, calls: int, failed: int) -> TelemetrySummary:
    """Cloud answers (and failed cloud calls) while no version of meter served on the device."""
    fallback_latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    fallback_latency[12] = calls
    return TelemetrySummary(
        device_id=device_id, model=NAME, version=1, profile=profile, window_start=start,
        window_end=start + timedelta(minutes=3), n=calls, errors=failed, fallback={"no_model": calls},
        fallback_errors={"no_model": failed} if failed else {}, fallback_latency_buckets=fallback_latency,
    )  # fmt: skip


def _publish(fleet: Fleet, summaries: list[TelemetrySummary], first_id: int) -> None:
    for i, s in enumerate(summaries):
        device = fleet.devices[s.device_id]
        assert device.client is not None
        message = TelemetryMessage(id=first_id + i, device_id=s.device_id, summary=s)
        device.client.publish(device.topic(Channel.TELEMETRY), encode_message(message), qos=1).wait_for_publish(10)
    WINDOWS.extend(summaries)


def _wait_rolled_up(fleet: Fleet, expected: int) -> None:
    """Until the hub stored `expected` meter windows and its monitor folded every one into the hourly rollups."""
    engine = create_engine(fleet.db_url)
    t = telemetry.c
    q = select(func.count(), func.count().filter(t.rolled_up.is_(True))).where(t.model == NAME)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                stored, rolled = conn.execute(q).one()
            if stored == expected and rolled == expected:
                return
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError(f"meter windows not stored and rolled up: {stored}/{expected} stored, {rolled} rolled up")


def send(fleet: Fleet, now: datetime) -> None:
    """Upload meter v1's telemetry (see the module docstring): no-model windows first, rolled up on their own."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    pi = {d: fleet.devices[d].profile for d in ("pi-1", "pi-3")}
    cloud_only = [no_model("pi-3", pi["pi-3"], hour - timedelta(hours=h) + timedelta(minutes=2), 30, 2)
                for h in NO_MODEL_HOURS]  # fmt: skip
    _publish(fleet, cloud_only, 100)
    _wait_rolled_up(fleet, len(cloud_only))
    history = [
        window(d, pi[d], hour - timedelta(hours=h) + timedelta(minutes=10 + 20 * k), 100 + 10 * h, errors=h % 3,
                low_confidence=2 * (h % 2), bucket=5 + h % 4, correct=(45 + 10 * h) * (5 + k) // 10)
        for h in HISTORY_HOURS for k, d in enumerate(pi)
    ]  # fmt: skip
    recent = [window(d, pi[d], now - timedelta(minutes=55 - 10 * m), 600, bucket=6 + m % 2)
              for m in range(5) for d in pi]  # fmt: skip
    edge = [window("gw-1", "x86_gateway", now - timedelta(minutes=25 - 10 * m), 40, classes=[0, 0, 40], bucket=5)
            for m in range(2)]  # fmt: skip
    for device_id in ("pi-1", "pi-3", "gw-1"):
        mine = [s for s in [*history, *recent, *edge] if s.device_id == device_id]
        _publish(fleet, mine, 200)
    _wait_rolled_up(fleet, len(WINDOWS))


def utc(text: str) -> datetime:
    """An API timestamp as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
