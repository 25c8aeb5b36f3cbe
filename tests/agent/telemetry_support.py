"""Telemetry test helpers: the real hub MQTT bridge on SQLite, a small classifier with a baseline."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select

from hub.db.engine import make_engine
from hub.db.schema import events, metadata, telemetry
from hub.metrics import HubMetrics
from hub.mqtt.bridge import MqttBridge
from protocol.manifest import BaselineStats, HistogramBaseline, Manifest, Task
from protocol.telemetry import TelemetryMessage, decode_message
from protocol.topics import Channel
from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer
from tests.agent.hubstub import HubStub
from tests.support.broker import Broker


def hub_engine(path: Path) -> Engine:
    """The hub's real schema on a SQLite file (no migrations: hub/db is another team's moving target)."""
    engine = make_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    return engine


def start_bridge(engine: Engine, broker: Broker, root: str) -> MqttBridge:
    """The hub's real MQTT bridge: stores each (device, outbox id) once and acks it on `.../ack`."""
    bridge = MqttBridge(
        host="127.0.0.1",
        port=broker.port,
        username=None,
        password=None,
        topic_root=root,
        engine=engine,
        clock=lambda: datetime.now(UTC),
        metrics=HubMetrics(),
    )
    bridge.start()
    assert bridge.connected.wait(15), "the hub's bridge did not connect"
    return bridge


def stored_ids(engine: Engine) -> list[int]:
    """Outbox ids the hub stored, in the order it stored them."""
    with engine.connect() as conn:
        return [int(r[0]) for r in conn.execute(select(telemetry.c.msg_id).order_by(telemetry.c.id))]


def stored_events(engine: Engine, device_id: str = "dev-1") -> list[tuple[int, str, str | None]]:
    """(seq, kind, reason) of the events the hub stored for a device, in seq order."""
    with engine.connect() as conn:
        q = select(events.c.seq, events.c.kind, events.c.payload).where(events.c.device_id == device_id)
        rows = conn.execute(q.order_by(events.c.seq)).all()
    return [(int(r.seq), str(r.kind), r.payload.get("reason")) for r in rows]


def stored_summaries(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r[0]) for r in conn.execute(select(telemetry.c.summary).order_by(telemetry.c.id))]


def observed(observer: Observer) -> list[TelemetryMessage]:
    """Telemetry messages a plain subscriber saw on the broker (zlib canonical JSON), in arrival order."""
    with observer._lock:
        raw = [p for t, p in observer.messages if t.endswith("/" + Channel.TELEMETRY.value)]
    return [decode_message(p) for p in raw]


def classifier_manifest(artifact: Path, version: int = 1) -> Manifest:
    """onnx_linear as a 3-class classifier with a per-feature baseline (so windows carry drift and labels)."""
    base = make_manifest(artifact, name="demo", version=version)
    hists = [
        HistogramBaseline(
            name=f"x[{i}]", edges=[-3.0, -1.0, 0.0, 1.0, 3.0], counts=[16, 34, 34, 16], mean=0.0, std=1.0, min=-3, max=3
        )
        for i in range(4)
    ]
    baseline = BaselineStats(n_samples=100, inputs=hists, class_counts=[33, 33, 34])
    return Manifest.model_validate(
        {**base.model_dump(), "task": Task.CLASSIFICATION, "baseline": baseline.model_dump()}
    )


def install_classifier(hub: HubStub, observer: Observer, tmp_path: Path, device_id: str = "dev-1") -> Manifest:
    """Publish the classifier as version 1 and return its manifest (the caller waits for the commit)."""
    art = onnx_linear(tmp_path / "clf_v1.onnx", seed=1)
    manifest = classifier_manifest(art)
    observer.desire(device_id, 1, [("demo", 1, hub.publish(manifest, art), False)])
    return manifest
