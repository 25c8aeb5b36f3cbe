"""The story the demo plays: v1 everywhere, v2 by canary, a two-stage pipeline built on v2, v3 caught by the
drift gate and rolled back.

Along the way one device drops off mid-rollout and converges when it returns, the application keeps getting
answers from the cloud while devices have no model yet, and it asks the pipeline to read digits off canvases.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgefleet.demo.cloud import CloudServer
from edgefleet.demo.environment import FINAL, TOPIC_ROOT, DemoEnvironment, DemoError
from edgefleet.demo.fleet import AgentProcess
from edgefleet.demo.models import NAME, PROFILES, build_versions
from edgefleet.demo.pipeline import (
    CLASSIFIER_VERSION,
    LOCATOR,
    NODES,
    PIPELINE,
    PipelineReading,
    build_locator,
    pipeline_spec,
    read_canvases,
    roll_out,
)
from edgefleet.demo.progress import Progress
from edgefleet.demo.traffic import Traffic
from edgefleet.demo.view import enrolled_status, rollout_line, rollout_status, wave_released_line
from protocol import layout

Say = Callable[[str], None]


@dataclass
class StoryResult:
    """What happened, as the hub's API and the application saw it."""

    rollouts: dict[int, dict[str, Any]] = field(default_factory=dict)
    offline_device: str | None = None
    offline_converged: bool = False
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    cloud_calls: int = 0
    pipeline_rollout: dict[str, Any] | None = None
    pipeline: PipelineReading | None = None


@dataclass
class Story:
    root: Path
    devices: int
    say: Say
    progress: Progress = field(default_factory=lambda: Progress(lambda _line: None))  # started by the caller
    env: DemoEnvironment = field(init=False)
    agents: list[AgentProcess] = field(default_factory=list)
    cloud: CloudServer | None = None
    traffic: Traffic | None = None
    result: StoryResult = field(default_factory=StoryResult)

    def __post_init__(self) -> None:
        self.env = DemoEnvironment(self.root / "env")

    # --- set-up -------------------------------------------------------------------------------
    def _step(self, what: str, status: Callable[[], str] | None = None, *, say: bool = False) -> None:
        """The step the demo takes now (progress lines name it), and said as a line of the story if `say`."""
        self.progress.step(what, status)
        if say:
            self.say(what)

    def setup(self) -> None:
        self._step("training digits CNNs (v1, v2, v3) and converting them for " + ", ".join(PROFILES), say=True)
        data, outs = build_versions(self.root / "models")
        self.data, self.outs = data, outs
        self._step(f"building {LOCATOR} (an ONNX graph, no training) and converting it for " + ", ".join(PROFILES),
                   say=True)  # fmt: skip
        locator = build_locator(self.root / "models", data)
        self._step("starting the broker and the hub")
        self.env.root.mkdir(parents=True, exist_ok=True)
        self.env.start()
        self.say(f"hub at {self.env.hub_url} with {self.env.broker_kind}")
        from hub.ops_cli import archive

        self._step(f"pushing v1, v2, v3 and {LOCATOR} v1 to the hub")
        for out in [*outs.values(), locator]:
            self.env.api("POST", "/api/v1/models", files={"archive": ("out.tar.gz", archive(out))})
        self.say(f"pushed v1, v2, v3 and {LOCATOR} v1 to the hub (TUF-signed targets)")
        onnx = {(NAME, v): out / layout.TRITON_DIR / NAME / str(v) / "model.onnx" for v, out in outs.items()}
        self.cloud = CloudServer(onnx).start()
        token = self.env.api("POST", "/api/v1/enrollment-tokens", json={"uses": self.devices + 1})["token"]
        # The demo's hub serves plain HTTP on loopback: the agents must be told that is meant.
        settings = {
            "hub_url": self.env.hub_url,
            "allow_insecure_http": True,
            "enrollment_token": token,
            "topic_root": TOPIC_ROOT,
            "probation_s": 2.0,
            "latency_basis": "host",
            "log_level": "WARNING",
            "reconnect_min_s": 0.5,
            "reconnect_max_s": 2.0,
        }
        from agent.settings import AgentSettings

        if "telemetry" in AgentSettings.model_fields:
            settings["telemetry"] = {"window_s": 5.0}  # short windows: the gates see data within seconds
        if "fallback" in AgentSettings.model_fields:
            settings["fallback"] = {NAME: {"type": "kserve", "url": self.cloud.url, "model": NAME, "version": 1}}
        self._step(f"starting {self.devices} agents", lambda: enrolled_status(self.env, self.devices))
        for i in range(self.devices):
            profile = PROFILES[i % len(PROFILES)]
            agent = AgentProcess(
                f"dev-{i:02d}",
                profile,
                self.root / "fleet" / f"dev-{i:02d}",
                {**settings, "tags": {"site": "north" if i % 2 else "south"}},
            )
            agent.start()
            self.agents.append(agent)
        self._wait(lambda: len(self.env.api("GET", "/api/v1/devices")) >= self.devices, 90, "devices to enroll")
        self.say(f"{self.devices} real agents enrolled (LiteRT on raspberry_pi_4, onnxruntime on x86_gateway)")
        self.traffic = Traffic(self.agents, data, NAME)
        self.traffic.start()

    # --- the story ----------------------------------------------------------------------------
    def play(self) -> StoryResult:
        if self._fallback_configured():
            self._step("waiting for the first cloud answers", lambda: f"{self._answers('cloud')} cloud answers")
            self._wait(lambda: self._answers("cloud") > 0, 60, "the first cloud answers")
            self.say("no model on the devices yet: the application's requests are answered by the cloud")
        self._rollout(1, canary=10, stages=[50, 100], gates=["self_test"])
        self._rollout(2, canary=20, stages=[100], gates=self._gates(), drop_one=True)
        self._pipeline()
        self._rollout(3, canary=20, stages=[100], gates=self._gates(), auto_rollback=True)
        if self.result.rollouts[3]["state"] == "rolled_back":
            self._step("waiting for the canary devices to return to v2", self._versions_text)
            self._wait(lambda: self._fleet_versions() == {2}, 120, "the canary devices to return to v2")
            self.say("the canary devices are back on v2")
        self._step("collecting the summary")
        self.result.answers = self.traffic.answers if self.traffic else Counter()
        self.result.cloud_calls = self.cloud.calls if self.cloud else 0
        with httpx.Client() as client:
            for a in self.agents:
                for m in a.models(client):
                    if m.get("name") == NAME:
                        self.result.versions[f"v{m.get('active_version')}"] += 1
        return self.result

    def _pipeline(self) -> None:
        """digit-reader v1 on top of v2: pushed (the hub checks it and runs it on each profile's artifacts),
        rolled out by canary, then asked to read the validation digits off canvases."""
        spec = pipeline_spec(self.outs[CLASSIFIER_VERSION])
        self._step(f"pushing pipeline {PIPELINE} v1: the hub runs it on each profile's artifacts")
        pushed = self.env.api("POST", "/api/v1/pipelines", json={"spec": spec.model_dump(mode="json")})
        profiles = sorted(r["profile"] for r in pushed["stored"] + pushed["unchanged"])
        self.say(
            f"pushed pipeline {PIPELINE} v1 ({' -> '.join(NODES)}) for {', '.join(profiles)}: "
            "the hub ran it on each profile's artifacts for its golden cases"
        )
        self._step(f"rolling out {PIPELINE} v1", lambda: rollout_status(self.env, f"{PIPELINE}-v1"))
        ro = self.result.pipeline_rollout = roll_out(self.env, self.say)
        if ro["state"] != "completed":
            self.say(f"{PIPELINE} is not on every device: the application does not ask it")
            return
        self._step(f"asking {PIPELINE} to read canvases, as the application")
        reading = self.result.pipeline = read_canvases(self.agents, self.data, self.say)
        self.say(reading.timings_line())
        self.say(reading.accuracy_line())
        if reading.errors:
            self.say(f"{PIPELINE}: failed requests: {dict(reading.errors)}")

    def _fallback_configured(self) -> bool:
        from agent.settings import AgentSettings

        return "fallback" in AgentSettings.model_fields

    def _gates(self) -> list[str]:
        """The gates of v2 and v3, drift before latency and error rate: the telemetry gates reach their minimum
        sample on the same engine tick, and a device's reason is the first gate that fails in this order. v3's
        defect is what it predicts (every digit one class: the drift gate's finding); a p95 pushed past its
        slack by a busy machine at that same tick must not be what the story reports."""
        from hub.rollouts.gates import GATES

        return [g for g in ("self_test", "drift", "error_rate", "latency") if g in GATES]

    def _rollout(
        self,
        version: int,
        *,
        canary: float,
        stages: list[float],
        gates: list[str],
        drop_one: bool = False,
        auto_rollback: bool = False,
    ) -> None:
        spec = {
            "id": f"digits-v{version}",
            "model": NAME,
            "version": version,
            "canary_percent": canary,
            "stages": stages,
            "probation_s": 6.0,
            "timeout_s": 120.0,
            "gates": gates,
            "auto_rollback": auto_rollback,
            "success_threshold": 1.0,
            "error_threshold": 0.0,
            # Ten "devices" share this machine's cores with the hub and the traffic: sub-ms p95 latencies
            # jump by a millisecond or two when the scheduler is busy, which is not a slower model. The demo's
            # traffic is 16 rows/s per device: 100 rows (the default asks 200) give a verdict within seconds, and
            # are plenty for v3's defect (every digit one class: a divergence of 0.87 at any sample size).
            "gate_limits": {"latency_p95_slack_ms": 5.0, "min_inferences": 100},
        }
        self.env.api("POST", "/api/v1/rollouts", json=spec)
        waves = ", ".join(f"wave {i + 1} to {p:g}%" for i, p in enumerate(stages))
        self.say(f"rollout v{version}: wave 0 (canary) {canary:g}% of the fleet, then {waves}; gates "
                 f"{', '.join(gates)}")  # fmt: skip
        rollout_id = f"digits-v{version}"
        self._step(f"rolling out v{version}", lambda: rollout_status(self.env, rollout_id))
        dropped: AgentProcess | None = None
        if drop_one:
            # A device of the last wave: the canary must not wait for it; the last wave does.
            plan = self.env.api("GET", f"/api/v1/rollouts/digits-v{version}")
            last = max(d["wave"] for d in plan["devices"])
            victim = next(d["device_id"] for d in plan["devices"] if d["wave"] == last)
            dropped = next(a for a in self.agents if a.device_id == victim)
            dropped.kill()
            self.result.offline_device = dropped.device_id
            self.say(f"{dropped.device_id} lost power mid-rollout (kill -9)")
        deadline = time.monotonic() + 240
        restarted = False
        wave = 0
        while time.monotonic() < deadline:
            ro = self.env.api("GET", f"/api/v1/rollouts/{rollout_id}")
            for done in range(wave, ro["current_wave"]):
                self.say(f"rollout v{version}: {wave_released_line(ro, done)}")
            wave = ro["current_wave"]
            if dropped is not None and not restarted and ro["current_wave"] >= 1:
                time.sleep(3)
                dropped.start()
                restarted = True
                self.say(f"{dropped.device_id} is back")
            if ro["state"] in FINAL:
                self.result.rollouts[version] = ro
                reason = f" ({ro['reason']})" if ro.get("reason") and ro["state"] != "completed" else ""
                self.say(f"rollout v{version}: {rollout_line(ro)}{reason}")
                break
            time.sleep(0.5)
        else:
            raise DemoError(f"rollout v{version} did not finish in 240 s; logs under {self.root}")
        if dropped is not None:
            back = dropped.device_id
            self._step(f"waiting for {back} to converge to v{version}", lambda: f"on v{self._device_version(back)}")
            self._wait(lambda: self._device_version(back) == version, 90, f"{back} to converge")
            self.result.offline_converged = True
            self.say(f"{dropped.device_id} converged to v{version}")

    # --- helpers ------------------------------------------------------------------------------
    def _fleet_versions(self) -> set[int | None]:
        return {d["current_versions"].get(NAME) for d in self.env.api("GET", "/api/v1/devices")}

    def _versions_text(self) -> str:
        return "versions on the fleet: " + ", ".join(f"v{v}" for v in sorted(v or 0 for v in self._fleet_versions()))

    def _device_version(self, device_id: str) -> int | None:
        device = self.env.api("GET", f"/api/v1/devices/{device_id}")
        version = device.get("current_versions", {}).get(NAME)
        return int(version) if version is not None else None

    def _answers(self, source: str) -> int:
        if self.traffic is None:
            return 0
        return sum(n for (s, _), n in self.traffic.answers.items() if s == source)

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise DemoError(f"timed out after {timeout:g}s waiting for {what}; logs under {self.root}")

    def started(self) -> list[str]:
        """What the demo started, in words (what `stop` stops: also what a Ctrl-C to the whole terminal's
        process group may have ended first)."""
        agents = sum(a.proc is not None for a in self.agents)
        parts = self.env.started() + ([f"{agents} agents"] if agents else [])
        parts += ["the cloud stand-in"] if self.cloud is not None else []
        return parts + (["the application's traffic"] if self.traffic is not None else [])

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        for a in self.agents:
            a.stop()
        if self.cloud is not None:
            self.cloud.stop()
        self.env.stop()
