"""Chaos: 10 real agents take a rollout while the broker is killed -9, an agent is killed -9 and the
network in front of the hub flaps. The rollout still completes and nothing acknowledged is lost.

The hub and a private Mosquitto (per-device passwords and ACLs) come from the demo's environment;
every device is a real `edgefleet agent run` process. The hub's public URL is a flapping TCP proxy
(tests/agent/proxy.py), so enrollment, TUF metadata and artifact downloads all cross it; MQTT goes
to the broker directly. "Nothing lost" is checked against what each device numbered itself:
events by their per-device seq (`events.seq`), telemetry by its outbox's AUTOINCREMENT ids.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.brokers import MOSQUITTO, Broker
from edgefleet.demo.environment import TOPIC_ROOT, DemoEnvironment
from edgefleet.demo.fleet import AgentProcess
from edgefleet.demo.models import NAME, PROFILES
from edgefleet.demo.traffic import Traffic
from edgefleet.samples import Digits, digits, train_keras_cnn
from protocol.messages import Command, CommandKind
from protocol.topics import Channel, device_topic
from tests.agent.proxy import FlappingProxy

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DEVICES = 10
FINAL = ("completed", "aborted", "rolled_back", "paused")
IDLE_STATES = ("idle", "committed", "failed", "rolled_back")  # the agent's terminal lifecycle states
AGENT_SETTINGS: dict[str, Any] = {
    "allow_insecure_http": True,  # the hub (and the flapping proxy in front of it) serve plain HTTP on loopback
    "topic_root": TOPIC_ROOT, "probation_s": 1.0, "latency_basis": "host", "log_level": "INFO",
    "reconnect_min_s": 0.3, "reconnect_max_s": 2.0, "keepalive_s": 5,
    "connect_timeout_s": 2.0, "read_timeout_s": 5.0, "retry_base_s": 0.2, "retry_max_s": 1.0,
    "retry_failed_after_s": 5.0,
    # The default retry_window_s (15 min) holds: a link that flaps never fails an update.
    # Short windows and quick resends: telemetry flows (and is acknowledged) within the test's seconds.
    "telemetry": {"window_s": 2.0, "tick_s": 0.5, "ack_timeout_s": 5.0},
}  # fmt: skip


def build_models(root: Path) -> tuple[Digits, dict[int, Path]]:
    """Two small digits CNNs (v1, v2), converted for the demo's two profiles (LiteRT and onnxruntime)."""
    from converter.pipeline import ConvertRequest, convert

    data = digits()
    calib, val = data.write(root)
    outs: dict[int, Path] = {}
    for version, epochs in ((1, 4), (2, 6)):
        model = train_keras_cnn(root / f"digits-v{version}.keras", data, epochs=epochs, width=8)
        result = convert(ConvertRequest(model=model, profiles=list(PROFILES), calibration=calib, validation=val,
                                        out=root / f"out-v{version}", name=NAME, version=version, latency_runs=20,
                                        force=True))  # fmt: skip
        assert all(r.manifest is not None for r in result.results), f"v{version}: a profile has no artifact"
        outs[version] = result.out
    return data, outs


def tail(path: Path, chars: int = 1500) -> str:
    if not path.exists():
        return f"--- {path.name}: (missing)\n"
    return f"--- {path} (tail)\n{path.read_text(errors='replace')[-chars:]}\n"


def count_rows(db: Path, sql: str) -> int:
    """One number from an agent's SQLite outbox (read next to the running agent; WAL allows it)."""
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=10) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


@dataclass
class Fleet:
    """The hub + broker, the flapping proxy in front of the hub, and the real agents."""

    root: Path
    env: DemoEnvironment
    proxy: FlappingProxy
    data: Digits
    agents: list[AgentProcess] = field(default_factory=list)

    @property
    def broker(self) -> Broker:
        assert isinstance(self.env.broker, Broker)
        return self.env.broker

    def agent(self, device_id: str) -> AgentProcess:
        return next(a for a in self.agents if a.device_id == device_id)

    def dead(self) -> list[str]:
        return [a.device_id for a in self.agents if not a.running]

    def logs(self, device_ids: list[str] | None = None) -> str:
        """Tails of the hub's and the broker's logs and of some agents' (dead ones first), for failures."""
        wanted = [*self.dead(), *(device_ids or [])] or [a.device_id for a in self.agents[:2]]
        chosen = [self.agent(d) for d in dict.fromkeys(wanted)][:4]
        return "".join([tail(self.env.root / "hub.log", 2500), tail(self.broker.log_path, 800),
                        *(tail(a.workdir / "agent.log", 1500) for a in chosen)])  # fmt: skip

    def wait(self, check: Callable[[], bool], timeout: float, what: str,
             details: Callable[[], str] = lambda: "", device_ids: Callable[[], list[str]] = list) -> None:  # fmt: skip
        """Poll `check` until it holds; fail with what was awaited, `details` and the logs' tails (at once if
        an agent died: none is meant to, outside the one kill -9 this test does itself)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.dead():
                pytest.fail(f"agents {self.dead()} exited while waiting for {what}\n{self.logs()}")
            try:
                if check():
                    return
            except (httpx.HTTPError, sqlite3.Error, OSError):
                pass  # the hub, the API or a file may be busy this instant; the deadline decides
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{details()}\n{self.logs(device_ids())}")

    def unhealthy(self, rollout_id: str) -> list[str]:
        """Members of the rollout not healthy yet, failed ones first."""
        members = [d for d in self.rollout_view(rollout_id)["devices"] or [] if d["state"] != "healthy"]
        return [d["device_id"] for d in sorted(members, key=lambda d: d["state"] != "failed")]

    # --- the hub, as the operator sees it ---------------------------------------------------------
    def rollout(self, version: int, *, canary: float, stages: list[float]) -> str:
        rollout_id = f"digits-v{version}"
        self.env.api("POST", "/api/v1/rollouts", json={
            "id": rollout_id, "model": NAME, "version": version, "canary_percent": canary, "stages": stages,
            "probation_s": 2.0, "timeout_s": 90.0, "gates": ["self_test"], "success_threshold": 1.0,
            "error_threshold": 0.0})  # fmt: skip
        return rollout_id

    def rollout_view(self, rollout_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self.env.api("GET", f"/api/v1/rollouts/{rollout_id}")
        return view

    def versions(self) -> dict[str, int | None]:
        return {d["id"]: d["current_versions"].get(NAME) for d in self.env.api("GET", "/api/v1/devices")}

    def hub_event_seqs(self, device_id: str) -> list[int]:
        events = self.env.api("GET", f"/api/v1/devices/{device_id}/events", params={"limit": 1000})
        assert len(events) < 1000, "more events than one page: raise the limit"
        return sorted(int(e["seq"]) for e in events)

    def hub_telemetry_ids(self) -> dict[str, list[int]]:
        """device -> the outbox ids of the telemetry messages the hub stored (the API exposes no ids)."""
        out: dict[str, list[int]] = {a.device_id: [] for a in self.agents}
        with sqlite3.connect(self.env.root / "hub" / "hub.db", timeout=10) as conn:
            for device_id, msg_id in conn.execute("SELECT device_id, msg_id FROM telemetry ORDER BY msg_id"):
                out.setdefault(device_id, []).append(int(msg_id))
        return out

    # --- each device, as its own files say ---------------------------------------------------------
    def event_seq(self, agent: AgentProcess) -> int:
        path = agent.workdir / "data" / "events.seq"
        return int(path.read_text() or 0) if path.exists() else 0

    def outbox(self, agent: AgentProcess) -> dict[str, int]:
        db = agent.workdir / "data" / "outbox.sqlite"
        return {
            "rows": count_rows(db, "SELECT COUNT(*) FROM rows"),
            "max_id": count_rows(db, "SELECT seq FROM sqlite_sequence WHERE name = 'rows'"),
            "dropped": count_rows(db, "SELECT value FROM meta WHERE key = 'dropped'"),
            "refused": count_rows(db, "SELECT value FROM meta WHERE key = 'refused'"),
            "pending_events": count_rows(agent.workdir / "data" / "events.sqlite", "SELECT COUNT(*) FROM rows"),
        }

    def flush_telemetry(self) -> None:
        """The `flush_telemetry` command to every device, published with the hub's broker account."""
        from hub.mqtt.auth import HUB_USERNAME

        password = (self.env.root / "hub" / "mqtt_hub_password").read_text().strip()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"chaos-test-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5)  # fmt: skip
        client.username_pw_set(HUB_USERNAME, password)
        client.connect(self.broker.host, self.broker.port, keepalive=10)
        client.loop_start()
        try:
            infos = []
            for a in self.agents:
                cmd = Command(command_id=f"flush-{uuid.uuid4().hex[:8]}", kind=CommandKind.FLUSH_TELEMETRY,
                              issued_at=datetime.now(UTC))  # fmt: skip
                infos.append(client.publish(device_topic(a.device_id, Channel.CMD, TOPIC_ROOT), cmd.to_bytes(), qos=1))
            for info in infos:
                info.wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()

    def stop(self) -> None:
        self.proxy.steady()
        for a in self.agents:
            if a.running and a.proc is not None:
                a.proc.terminate()
        for a in self.agents:
            a.stop()
        self.env.stop()
        self.proxy.close()


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    assert Path(MOSQUITTO).exists(), "needs mosquitto (the chaos test kills and restarts a private broker)"
    monkeypatch.delenv("EDGEFLEET_MQTT_URL", raising=False)  # a broker of our own, to kill
    data, outs = build_models(tmp_path / "models")
    env = DemoEnvironment(tmp_path / "env")
    proxy = FlappingProxy(env.hub_port, seed=1)
    env.public_url = proxy.url  # what enrollment hands out: TUF metadata and artifacts cross the proxy
    env.root.mkdir(parents=True)
    fleet = Fleet(tmp_path, env, proxy, data)
    try:
        env.start()
        from hub.ops_cli import archive

        for out in outs.values():
            env.api("POST", "/api/v1/models", files={"archive": ("out.tar.gz", archive(out))})
        token = env.api("POST", "/api/v1/enrollment-tokens", json={"uses": DEVICES})["token"]
        for i in range(DEVICES):
            device_id = f"dev-{i:02d}"
            agent = AgentProcess(device_id, PROFILES[i % len(PROFILES)], tmp_path / "fleet" / device_id,
                                 {**AGENT_SETTINGS, "hub_url": proxy.url, "enrollment_token": token})  # fmt: skip
            agent.start()
            fleet.agents.append(agent)
        yield fleet
    finally:
        fleet.stop()


def test_rollout_survives_broker_kill_agent_kill_and_flapping_network(fleet: Fleet) -> None:
    env = fleet.env
    fleet.wait(lambda: len(env.api("GET", "/api/v1/devices")) == DEVICES, 120, f"{DEVICES} devices to enroll")
    with httpx.Client() as client:
        fleet.wait(lambda: all(client.get(f"{a.api}/healthz", timeout=2).status_code == 200 for a in fleet.agents),
                   60, "every agent's local API")  # fmt: skip

    # v1 everywhere, calmly (the proxy forwards everything).
    v1 = fleet.rollout(1, canary=10, stages=[100])
    fleet.wait(lambda: fleet.rollout_view(v1)["state"] in FINAL, 120, "rollout v1 to finish",
               lambda: str(fleet.rollout_view(v1)), lambda: fleet.unhealthy(v1))  # fmt: skip
    assert fleet.rollout_view(v1)["state"] == "completed", fleet.rollout_view(v1)

    # Application traffic on every device from now on: telemetry windows close every 2 s.
    traffic = Traffic(fleet.agents, fleet.data, NAME, rate_hz=1.0)
    traffic.start()
    try:
        fleet.proxy.start_flapping()
        time.sleep(2)
        v2 = fleet.rollout(2, canary=20, stages=[60, 100])
        victim = chaos_during(fleet, v2)
        fleet.wait(lambda: fleet.rollout_view(v2)["state"] in FINAL, 120, "rollout v2 to finish",
                   lambda: str(fleet.rollout_view(v2)), lambda: fleet.unhealthy(v2))  # fmt: skip
        ro = fleet.rollout_view(v2)
        assert ro["state"] == "completed", (
            f"{ro['state']}: {ro['reason']}\n{ro['devices']}\n{fleet.logs(fleet.unhealthy(v2))}")  # fmt: skip
        fleet.wait(lambda: set(fleet.versions().values()) == {2}, 60, "every device to report v2 active",
                   lambda: str(fleet.versions()))  # fmt: skip
        with httpx.Client() as client:
            local = {a.device_id: [m.get("active_version") for m in a.models(client)] for a in fleet.agents}
        assert all(v == [2] for v in local.values()), local
        assert traffic.answers, f"no prediction was answered: {traffic.errors}"
    finally:
        traffic.stop()
        fleet.proxy.steady()
    # The chaos really happened: the link went down and connections were cut; the victim is back.
    assert fleet.proxy.downs >= 3 and fleet.proxy.cuts > 0, (fleet.proxy.downs, fleet.proxy.cuts)
    assert fleet.agent(victim).running

    # Nothing acknowledged is lost: close every window, let the outboxes drain, compare ids.
    fleet.flush_telemetry()

    def drained() -> bool:
        stored = fleet.hub_telemetry_ids()
        for a in fleet.agents:
            box = fleet.outbox(a)
            if box["rows"] or box["pending_events"] or stored[a.device_id] != list(range(1, box["max_id"] + 1)):
                return False
            if fleet.hub_event_seqs(a.device_id) != list(range(1, fleet.event_seq(a) + 1)):
                return False
        return True

    fleet.wait(drained, 60, "outboxes to drain and the hub to hold every event and telemetry id",
               lambda: loss_report(fleet))  # fmt: skip
    telemetry = fleet.hub_telemetry_ids()
    for a in fleet.agents:
        box = fleet.outbox(a)
        assert box["dropped"] == 0 and box["refused"] == 0, (a.device_id, box)
        assert box["max_id"] > 0, f"{a.device_id} sent no telemetry"
        assert telemetry[a.device_id] == list(range(1, box["max_id"] + 1)), a.device_id
        assert fleet.hub_event_seqs(a.device_id) == list(range(1, fleet.event_seq(a) + 1)), a.device_id


def chaos_during(fleet: Fleet, rollout_id: str) -> str:
    """While the rollout runs: kill -9 the broker as soon as a canary is mid-update (restart it 3 s
    later), then kill -9 a device of the next wave mid-update (restart it 3 s later). Returns its id."""
    deadline = time.monotonic() + 120
    broker_killed = False
    while time.monotonic() < deadline:
        ro = fleet.rollout_view(rollout_id)
        if ro["state"] in FINAL:
            break
        wave = ro["current_wave"]
        members = [fleet.agent(d["device_id"]) for d in ro["devices"] if d["wave"] == wave]
        if not broker_killed and wave == 0 and in_flight(members, until=time.monotonic() + 10) is not None:
            fleet.broker.stop(kill=True)
            time.sleep(3)
            fleet.broker.start()
            broker_killed = True
        elif broker_killed and wave >= 1:
            victim = in_flight(members, until=time.monotonic() + 10)
            if victim is not None:
                victim.kill()
                time.sleep(3)
                victim.start()
                return victim.device_id
        time.sleep(0.1)
    ro = fleet.rollout_view(rollout_id)
    pytest.fail(f"rollout {ro['state']} before the chaos was done (broker killed: {broker_killed}), "
                f"wave {ro['current_wave']}: {ro['reason']}\n{fleet.logs(fleet.unhealthy(rollout_id))}")  # fmt: skip


def in_flight(agents: list[AgentProcess], until: float) -> AgentProcess | None:
    """The first of `agents` seen with its update to v2 in a non-terminal lifecycle state (downloading
    ... probation, as its persisted record says); None if none is by `until`."""
    while time.monotonic() < until:
        for a in agents:
            try:
                record = json.loads((a.workdir / "data" / "lifecycle" / f"{NAME}.json").read_text())
            except (OSError, ValueError):
                continue
            if record.get("target_version") == 2 and record.get("state") not in IDLE_STATES:
                return a
        time.sleep(0.02)
    return None


def loss_report(fleet: Fleet) -> str:
    """Per device: what it numbered, what the hub holds, what is missing or extra."""
    lines = []
    telemetry = fleet.hub_telemetry_ids()
    for a in fleet.agents:
        box, seq = fleet.outbox(a), fleet.event_seq(a)
        events = fleet.hub_event_seqs(a.device_id)
        want_e, want_t, got_t = set(range(1, seq + 1)), set(range(1, box["max_id"] + 1)), telemetry[a.device_id]
        lines.append(
            f"{a.device_id}: events seq {seq}, hub {len(events)} (missing {sorted(want_e - set(events))}, "
            f"extra {sorted(set(events) - want_e)}, dup {len(events) - len(set(events))}); "
            f"telemetry outbox {box}, hub {len(got_t)} (missing {sorted(want_t - set(got_t))[:20]}, "
            f"dup {len(got_t) - len(set(got_t))})"
        )  # fmt: skip
    return "\n".join(lines)
