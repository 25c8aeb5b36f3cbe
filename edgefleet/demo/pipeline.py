"""The demo's pipeline `digit-reader`: find a digit on a larger canvas, crop it, classify it.

Two models and two built-in steps, rolled out as one unit the way a model version is:

    image [1, 24, 24, 1] -> locate (digit-locator v1) -> boxes -> crop (crop_resize to 8x8) -> classify
    (digits v2) -> pick (argmax) -> digit

The locator is an ONNX graph built without training (`edgefleet.samples.digit_locator_onnx`) that reaches both
demo profiles through the real converter (TFLite through onnx2tf for raspberry_pi_4, ONNX for x86_gateway);
the classifier stage is the demo's own digits v2, as converted for the single-model rollouts. The application
then asks every device to read canvases and the digits model to read the same digits bare, so the demo shows
what the two stages cost and what locating loses, both from the devices' own answers.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgefleet.demo.environment import FINAL, DemoEnvironment, DemoError
from edgefleet.demo.fleet import AgentProcess
from edgefleet.demo.models import NAME, PROFILES
from edgefleet.demo.view import rollout_line, wave_released_line
from edgefleet.samples import Digits, digit_canvases, digit_locator_onnx
from protocol import layout
from protocol.pipeline import PipelineSpec, spec_from_toml

PIPELINE = "digit-reader"
LOCATOR = "digit-locator"
CLASSIFIER_VERSION = 2
CANVAS = 24
NODES = ("locate", "crop", "classify", "pick")
CANVAS_SEED = 20  # the canvases the application sends (the converter's calibration and validation use others)
BARE_BATCH = 10
PROGRESS_S = 3.0

Say = Callable[[str], None]

SPEC = """
name = "{name}"
version = {version}
description = "find a digit on a {size}x{size} canvas, crop it to 8x8, classify it"

[[inputs]]
name = "image"
shape = [1, {size}, {size}, 1]
dtype = "float32"

[[stages]]
name = "locate"
model = "{locator}"
version = 1
inputs = {{ canvas = "inputs.image" }}

[[steps]]
name = "crop"
op = "crop_resize"
params = {{ size = [8, 8], max_crops = 1 }}
inputs = {{ image = "inputs.image", boxes = "locate.boxes" }}

[[stages]]
name = "classify"
model = "{classifier}"
version = {classifier_version}
inputs = {{ {classifier_input} = "crop.crops" }}

[[steps]]
name = "pick"
op = "argmax"
inputs = {{ x = "classify.{classifier_output}" }}

[outputs]
digit = "pick.out"
"""


def build_locator(root: Path, data: Digits) -> Path:
    """The locator, converted for every demo profile (float reference and budgets checked as for any model)."""
    from converter.pipeline import ConvertRequest, convert

    root.mkdir(parents=True, exist_ok=True)
    calib, val = root / "canvas-calib.npy", root / "canvas-val.npz"
    np.save(calib, digit_canvases(data.x_train[:200], CANVAS, seed=1)[0])
    np.savez(val, x=digit_canvases(data.x_val, CANVAS, seed=2)[0])
    model = digit_locator_onnx(root / f"{LOCATOR}.onnx", CANVAS)
    result = convert(
        ConvertRequest(
            model=model,
            profiles=list(PROFILES),
            calibration=calib,
            validation=val,
            out=root / f"out-{LOCATOR}",
            name=LOCATOR,
            version=1,
            task="regression",
            latency_runs=50,
            cloud=False,
            force=True,
        )
    )
    missing = [r.profile.name for r in result.results if r.manifest is None]
    if missing:
        raise DemoError(f"{LOCATOR}: no artifact for {missing}: {[r.refused for r in result.refused_profiles]}")
    return result.out


def pipeline_spec(classifier_out: Path, version: int = 1) -> PipelineSpec:
    """digit-reader, wired to the classifier's own input and output names (read from its converted manifest)."""
    manifest = json.loads((classifier_out / PROFILES[0] / layout.MANIFEST_FILE).read_text())
    return spec_from_toml(
        SPEC.format(
            name=PIPELINE,
            version=version,
            size=CANVAS,
            locator=LOCATOR,
            classifier=NAME,
            classifier_version=CLASSIFIER_VERSION,
            classifier_input=manifest["inputs"][0]["name"],
            classifier_output=manifest["outputs"][0]["name"],
        )
    )


def roll_out(env: DemoEnvironment, say: Say, version: int = 1, canary: float = 20.0) -> dict[str, Any]:
    """Canary, then the rest; gated by each device's self-test (the pipeline's end-to-end golden cases)."""
    rollout_id = f"{PIPELINE}-v{version}"
    env.api(
        "POST",
        "/api/v1/rollouts",
        json={
            "id": rollout_id,
            "pipeline": PIPELINE,
            "version": version,
            "canary_percent": canary,
            "stages": [100],
            "probation_s": 2.0,
            "timeout_s": 120.0,
            "gates": ["self_test"],
            "success_threshold": 1.0,
            "error_threshold": 0.0,
        },
    )
    say(
        f"rollout {PIPELINE} v{version}: wave 0 (canary) {canary:g}% of the fleet, then wave 1 to the rest; gate "
        "self_test (each device runs the pipeline's end-to-end golden cases)"
    )
    wave, deadline = 0, time.monotonic() + 240
    while time.monotonic() < deadline:
        ro: dict[str, Any] = env.api("GET", f"/api/v1/rollouts/{rollout_id}")
        for done in range(wave, ro["current_wave"]):
            say(f"rollout {PIPELINE} v{version}: {wave_released_line(ro, done)}")
        wave = ro["current_wave"]
        if ro["state"] in FINAL:
            reason = f" ({ro['reason']})" if ro.get("reason") and ro["state"] != "completed" else ""
            say(f"rollout {PIPELINE} v{version}: {rollout_line(ro)}{reason}")
            return ro
        time.sleep(0.5)
    raise DemoError(f"rollout {PIPELINE} v{version} did not finish in 240 s; logs under {env.root.parent}")


@dataclass
class PipelineReading:
    """What the application saw: the pipeline's answers on canvases, the digits model's on the same digits bare."""

    version: int
    sent: int = 0
    answered: int = 0
    right: int = 0
    bare_answered: int = 0
    bare_right: int = 0
    devices: set[str] = field(default_factory=set)
    timings_ms: dict[str, list[float]] = field(default_factory=dict)
    versions: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def accuracy(self) -> float:
        return self.right / self.answered if self.answered else 0.0

    @property
    def bare_accuracy(self) -> float:
        return self.bare_right / self.bare_answered if self.bare_answered else 0.0

    def mean_timings(self) -> dict[str, float]:
        """Mean time per node in milliseconds, as the agents measured it (pipeline order)."""
        return {node: float(np.mean(ms)) for node, ms in self.timings_ms.items() if ms}

    def timings_line(self) -> str:
        stages = ", ".join(f"{node} {ms:.3f} ms" for node, ms in self.mean_timings().items())
        return f"pipeline {PIPELINE} v{self.version} on {len(self.devices)} devices, mean time per node: {stages}"

    def accuracy_line(self) -> str:
        return (
            f"{PIPELINE} read {self.right}/{self.answered} canvases right ({self.accuracy:.1%}); {NAME} "
            f"v{CLASSIFIER_VERSION} alone read {self.bare_right}/{self.bare_answered} of the same digits bare "
            f"({self.bare_accuracy:.1%})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": PIPELINE,
            "version": self.version,
            "canvases": self.sent,
            "answered": self.answered,
            "right": self.right,
            "accuracy": self.accuracy,
            "bare_answered": self.bare_answered,
            "bare_right": self.bare_right,
            "bare_accuracy": self.bare_accuracy,
            "devices": sorted(self.devices),
            "timings_ms": self.mean_timings(),
            "versions": dict(self.versions),
            "errors": dict(self.errors),
        }


def read_canvases(agents: list[AgentProcess], data: Digits, say: Say, version: int = 1) -> PipelineReading:
    """Every validation digit on a canvas, round robin over the devices; then the same digits bare, in batches."""
    canvases, _ = digit_canvases(data.x_val, CANVAS, seed=CANVAS_SEED)
    reading = PipelineReading(version=version, timings_ms={node: [] for node in NODES})
    last_said = time.monotonic()
    with httpx.Client() as client:
        for i, (canvas, label) in enumerate(zip(canvases, data.y_val, strict=True)):
            _read_one(agents[i % len(agents)], canvas[None], int(label), reading, client)
            if time.monotonic() - last_said >= PROGRESS_S:
                say(f"pipeline requests: {reading.answered}/{len(canvases)} answered")
                last_said = time.monotonic()
        for n, agent in enumerate(agents):
            for start in range(n * BARE_BATCH, len(data.x_val), len(agents) * BARE_BATCH):
                idx = slice(start, start + BARE_BATCH)
                answer = agent.predict(NAME, "pixels", data.x_val[idx], client)
                if answer is None or answer["status_code"] != 200:
                    reading.errors[f"{NAME}: {'device down' if answer is None else answer['status_code']}"] += 1
                    continue
                if answer.get("source") != "device" or answer.get("version") != CLASSIFIER_VERSION:
                    reading.errors[f"{NAME}: answered by {answer.get('source')} v{answer.get('version')}"] += 1
                    continue
                got = np.asarray(next(iter(answer["outputs"].values()))).argmax(axis=-1)
                reading.bare_answered += len(got)
                reading.bare_right += int(np.sum(got == data.y_val[idx]))
    return reading


def _read_one(
    agent: AgentProcess, canvas: np.ndarray, label: int, reading: PipelineReading, client: httpx.Client
) -> None:
    reading.sent += 1
    try:
        r = client.post(
            f"{agent.api}/v1/pipelines/{PIPELINE}/predict", json={"inputs": {"image": canvas.tolist()}}, timeout=10
        )
        answer = r.json()
    except (httpx.HTTPError, ValueError):
        reading.errors["device down"] += 1
        return
    if r.status_code != 200:
        reading.errors[str(answer.get("error", r.status_code))[:60]] += 1
        return
    reading.answered += 1
    reading.devices.add(agent.device_id)
    reading.versions[f"v{answer.get('version')}"] += 1
    reading.right += int(np.asarray(answer["outputs"]["digit"]).ravel()[0] == label)
    for node, ms in answer.get("timings_ms", {}).items():
        reading.timings_ms.setdefault(node, []).append(float(ms))
