"""A pipeline version rolled out in waves to real agents through a real broker and the real hub process:
stage models pushed as converter folders, the pipeline pushed (`POST /api/v1/pipelines`), `rollouts create
--pipeline`; then a version whose stage fails its self-test on the devices is rolled back as a whole set."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgefleet.demo.environment import TOPIC_ROOT, DemoEnvironment
from edgefleet.demo.fleet import AgentProcess
from hub.ops_cli import archive
from protocol.layout import MANIFEST_FILE
from protocol.manifest import Manifest
from protocol.pipeline import spec_from_toml
from tests.agent.builders import make_manifest, onnx_linear, tflite_models
from tests.agent.pipelines import PROFILE, SPEC

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENT_SETTINGS: dict[str, Any] = {
    "allow_insecure_http": True, "topic_root": TOPIC_ROOT, "probation_s": 0.5, "latency_basis": "device",
    "log_level": "INFO", "reconnect_min_s": 0.3, "reconnect_max_s": 2.0, "retry_base_s": 0.2,
    "retry_failed_after_s": 5.0,
}  # fmt: skip
FINAL = ("completed", "aborted", "rolled_back", "paused")


def folder(out: Path, manifest: Manifest, artifact: Path) -> Path:
    """A converter output folder (DIR/<profile>/manifest.json + artifact) for `models push`."""
    profile_dir = out / manifest.profile
    profile_dir.mkdir(parents=True)
    (profile_dir / manifest.artifact.file).write_bytes(artifact.read_bytes())
    (profile_dir / MANIFEST_FILE).write_bytes(manifest.to_bytes())
    return out


def wait(predicate: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {detail()}")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[DemoEnvironment]:
    environment = DemoEnvironment(tmp_path / "env")
    environment.root.mkdir(parents=True)
    try:
        environment.start()
        yield environment
    finally:
        environment.stop()


def test_a_pipeline_rollout_reaches_real_agents_and_a_failing_stage_rolls_the_set_back(
    tmp_path: Path, env: DemoEnvironment
) -> None:
    (tmp_path / "tflite").mkdir()
    tflite = tflite_models(tmp_path / "tflite")["float"]
    head_v1 = onnx_linear(tmp_path / "head_v1.onnx", n_in=3, n_out=4, seed=1)
    head_v2 = onnx_linear(tmp_path / "head_v2.onnx", n_in=3, n_out=4, seed=2)
    wrong_reference = onnx_linear(tmp_path / "head_ref.onnx", n_in=3, n_out=4, seed=99)
    pushes = [
        ("dense-1", make_manifest(tflite, name="dense", version=1, profile=PROFILE), tflite),
        ("linear-1", make_manifest(head_v1, name="linear", version=1, profile=PROFILE), head_v1),
        # v2's own golden cases come from another model: its self-test fails on the device (the hub's end-to-end
        # cases are computed on the artifact itself at push, so the push passes).
        ("linear-2", make_manifest(head_v2, name="linear", version=2, profile=PROFILE, golden_from=wrong_reference),
         head_v2),
    ]  # fmt: skip
    for label, manifest, artifact in pushes:
        env.api("POST", "/api/v1/models", files={"archive": ("o.tar.gz", archive(folder(tmp_path / label, manifest,
                                                                                           artifact)))})  # fmt: skip
    spec_v1 = spec_from_toml(SPEC.format(version=1))
    spec_v2 = spec_from_toml(
        SPEC.format(version=2).replace('model = "dense"\nversion = 2', 'model = "dense"\nversion = 1')
    )
    for spec in (spec_v1, spec_v2):
        pushed = env.api("POST", "/api/v1/pipelines", json={"spec": spec.model_dump(mode="json")})
        assert pushed["stored"] or pushed["unchanged"], pushed

    token = env.api("POST", "/api/v1/enrollment-tokens", json={"uses": 2})["token"]
    agents = [
        AgentProcess(
            f"pipe-{i}",
            PROFILE,
            tmp_path / "fleet" / f"pipe-{i}",
            {**AGENT_SETTINGS, "hub_url": env.hub_url, "enrollment_token": token},
        )
        for i in range(2)
    ]
    try:
        for agent in agents:
            agent.start()
        wait(lambda: len(env.api("GET", "/api/v1/devices")) == 2, 90, "2 devices to enroll")

        def rollout(version: int, **extra: Any) -> dict[str, Any]:
            body = {"pipeline": "mixed", "version": version, "canary_percent": 50, "stages": [100],
                    "probation_s": 0.5, "timeout_s": 120, **extra}  # fmt: skip
            created: dict[str, Any] = env.api("POST", "/api/v1/rollouts", json=body)
            assert created["kind"] == "pipeline"
            return created

        def view(rollout_id: str) -> dict[str, Any]:
            got: dict[str, Any] = env.api("GET", f"/api/v1/rollouts/{rollout_id}")
            return got

        def logs() -> str:
            return "\n".join((a.workdir / "agent.log").read_text(errors="replace")[-1500:] for a in agents)

        r1 = rollout(1)
        wait(
            lambda: view(r1["id"])["state"] in FINAL,
            120,
            "rollout of pipeline v1",
            lambda: str(view(r1["id"])) + logs(),
        )
        done = view(r1["id"])
        assert done["state"] == "completed", done
        assert [w["total"] for w in done["waves"]] == [1, 1]  # canary, then the rest: each wave once
        x = np.random.default_rng(0).normal(size=(1, 6)).astype(np.float32)
        with httpx.Client() as client:
            answers = [client.post(f"{a.api}/v1/pipelines/mixed/predict", json={"inputs": {"features": x.tolist()}},
                                   timeout=10).json() for a in agents]  # fmt: skip
        assert [(a["version"], a["source"]) for a in answers] == [(1, "device"), (1, "device")]
        assert answers[0]["outputs"] == answers[1]["outputs"]
        assert set(answers[0]["timings_ms"]) == {"embed", "head", "label"}
        devices = env.api("GET", "/api/v1/devices")
        assert [(d["desired_pipelines"], d["current_pipelines"]) for d in devices] == [({"mixed": 1}, {"mixed": 1})] * 2

        r2 = rollout(2, auto_rollback=True)
        wait(
            lambda: view(r2["id"])["state"] in FINAL,
            120,
            "rollout of pipeline v2",
            lambda: str(view(r2["id"])) + logs(),
        )
        failed = view(r2["id"])
        assert failed["state"] == "rolled_back", failed
        assert "stage 'head' (linear v2)" in (failed["reason"] or ""), failed
        with httpx.Client() as client:
            for agent in agents:
                served = client.get(f"{agent.api}/v1/pipelines", timeout=10).json()["pipelines"][0]
                assert served["serving_version"] == 1 and served["stages"]["head"]["version"] == 1, served
    finally:
        for agent in agents:
            agent.stop()
