"""A two-stage pipeline for agent tests (a LiteRT stage, an onnxruntime stage, an argmax step): published into
the stub hub's real TUF repository and asked for over the real broker."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.pipeline.golden import make_golden
from agent.pipeline.local import local_runner
from protocol.messages import DesiredPipeline, DesiredState
from protocol.pipeline import PipelineManifest, PipelineStage, pipeline_target, spec_from_toml
from protocol.topics import Channel
from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer
from tests.agent.hubstub import HubStub

PROFILE = "raspberry_pi_5"  # runs TFLite and ONNX: one LiteRT stage and one onnxruntime stage
SPEC = """
name = "mixed"
version = {version}

[[inputs]]
name = "features"
shape = [1, 6]
dtype = "float32"

[[stages]]
name = "embed"
model = "dense"
version = {version}
inputs = {{ features = "inputs.features" }}

[[stages]]
name = "head"
model = "linear"
version = {version}
inputs = {{ x = "embed.output_0" }}

[[steps]]
name = "label"
op = "argmax"
inputs = {{ x = "head.y" }}

[outputs]
label = "label.out"
scores = "head.y"
"""
SAMPLES = [{"features": np.random.default_rng(i).normal(size=(1, 6)).astype(np.float32)} for i in range(3)]


def publish_pipeline(
    hub: HubStub, tmp_path: Path, tflite: Path, version: int, broken_head: bool = False
) -> tuple[str, dict[str, Path]]:
    """Both stage models (`dense`, `linear` at `version`) and the pipeline manifest, signed into the TUF repo."""
    head_good = onnx_linear(tmp_path / f"head_ref_v{version}.onnx", n_in=3, n_out=4, seed=version)
    head = (
        onnx_linear(tmp_path / f"head_v{version}.onnx", n_in=3, n_out=4, seed=version, poison="nan")
        if broken_head
        else head_good
    )
    embed_manifest = make_manifest(tflite, name="dense", version=version, profile=PROFILE)
    head_manifest = make_manifest(head, name="linear", version=version, profile=PROFILE, golden_from=head_good)
    stages = {
        "embed": PipelineStage(model="dense", version=version, manifest_target=hub.publish(embed_manifest, tflite)),
        "head": PipelineStage(model="linear", version=version, manifest_target=hub.publish(head_manifest, head)),
    }
    spec = spec_from_toml(SPEC.format(version=version))
    # The end-to-end cases come from the good artifacts, as the hub computes them at push.
    golden = make_golden(local_runner(spec, {"embed": tflite, "head": head_good}), SAMPLES, atol=1e-4)
    manifest = PipelineManifest(spec=spec, profile=PROFILE, stages=stages, golden=golden)
    target = pipeline_target("mixed", version, PROFILE)
    hub.repo.add_targets({target: manifest.to_bytes()})
    return target, {"embed": tflite, "head": head}


def desire(observer: Observer, generation: int, pipelines: list[tuple[int, str]]) -> None:
    state = DesiredState(
        device_id="dev-1",
        generation=generation,
        pipelines=[DesiredPipeline(name="mixed", version=v, pipeline_target=t) for v, t in pipelines],
        issued_at=datetime.now(UTC),
    )
    observer.publish("dev-1", Channel.DESIRED, state.to_bytes(), retain=True)


def pipeline_report(observer: Observer) -> dict[str, Any] | None:
    reported = observer.last_reported()
    if reported is None:
        return None
    return next((p for p in reported.get("pipelines", []) if p["name"] == "mixed"), None)


def settled(observer: Observer, state: str, version: int | None) -> Callable[[], bool]:
    def check() -> bool:
        p = pipeline_report(observer)
        return p is not None and p["state"] == state and p["active_version"] == version

    return check
