"""`edgefleet demo --once --devices 10`: the whole chain, and a summary that matches the hub's API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgefleet.brokers import free_port
from tests.support.procs import alive, descendants

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[1]


def _hub_api(data_dir: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    """The demo's hub, started again on its data dir (MQTT off) to read what it recorded."""
    port = free_port()
    env = {
        **os.environ,
        "EDGEFLEET_HUB_DATA_DIR": str(data_dir),
        "EDGEFLEET_HUB_ADMIN_TOKEN": token,
        "EDGEFLEET_HUB_MQTT_ENABLED": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet", "hub", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code < 500:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("hub did not restart")


def test_demo_once_ten_devices(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet", "demo", "--once", "--devices", "10", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "EdgeFleet demo: summary" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rollouts"]["1"]["state"] == "completed"
    assert summary["rollouts"]["2"]["state"] == "completed"
    assert summary["rollouts"]["3"]["state"] == "rolled_back"
    assert "drift" in summary["rollouts"]["3"]["reason"] or "self-test" in summary["rollouts"]["3"]["reason"]
    assert summary["offline_converged"] is True
    assert summary["answers"].get("cloud:1", 0) > 0  # answered by the cloud while devices had no model
    assert summary["versions"] == {"v2": 10}
    pipeline_rollout = summary["pipeline_rollout"]
    assert (pipeline_rollout["state"], pipeline_rollout["healthy"], pipeline_rollout["total"]) == ("completed", 10, 10)
    _check_pipeline_reading(summary["pipeline"], done.stdout, tmp_path)

    from edgefleet.demo.environment import DemoEnvironment

    proc, url = _hub_api(tmp_path / "env" / "hub", DemoEnvironment(tmp_path).admin_token)
    try:
        headers = {"Authorization": f"Bearer {DemoEnvironment(tmp_path).admin_token}"}
        listed = httpx.get(f"{url}/api/v1/rollouts", headers=headers).json()
        rollouts = {r["version"]: r for r in listed if r["kind"] == "model"}
        for version, entry in summary["rollouts"].items():
            assert rollouts[int(version)]["state"] == entry["state"]
            assert rollouts[int(version)]["reason"] == entry["reason"]
        (listed_pipeline,) = [r for r in listed if r["kind"] == "pipeline"]
        assert (listed_pipeline["model"], listed_pipeline["version"]) == ("digit-reader", 1)
        assert listed_pipeline["state"] == pipeline_rollout["state"]
        assert listed_pipeline["reason"] == pipeline_rollout["reason"]
        assert [w["total"] for w in listed_pipeline["waves"]] == [2, 8]  # canary, then the rest
        assert [w["counts"] for w in listed_pipeline["waves"]] == [{"healthy": 2}, {"healthy": 8}]
        devices = httpx.get(f"{url}/api/v1/devices", headers=headers).json()
        assert len(devices) == 10
        assert {d["current_versions"]["digits"] for d in devices} == {2}
        assert [d["current_pipelines"] for d in devices] == [{"digit-reader": 1}] * 10
        assert next(d for d in devices if d["id"] == summary["offline_device"])["current_versions"]["digits"] == 2
    finally:
        proc.terminate()
        proc.wait(10)


def _check_pipeline_reading(reading: dict[str, Any], stdout: str, workdir: Path) -> None:
    """The pipeline's lines come from the devices' answers: every canvas answered by v1 on every device, stage
    timings for every node, and as many read right as the same artifacts read here, run locally."""
    from agent.pipeline.local import local_runner
    from edgefleet.demo.models import PROFILES
    from edgefleet.demo.pipeline import CANVAS, CANVAS_SEED, LOCATOR, NODES, pipeline_spec
    from edgefleet.samples import digit_canvases, digits

    data = digits()
    assert reading["canvases"] == reading["answered"] == len(data.y_val)
    assert reading["versions"] == {"v1": len(data.y_val)} and reading["errors"] == {}
    assert len(reading["devices"]) == 10
    assert reading["accuracy"] == pytest.approx(reading["right"] / reading["answered"])
    assert reading["accuracy"] >= 0.85
    assert reading["bare_answered"] == len(data.y_val) and reading["bare_accuracy"] >= 0.85
    assert list(reading["timings_ms"]) == list(NODES) and all(ms > 0 for ms in reading["timings_ms"].values())
    text = " ".join(stdout.split())  # the console wraps long lines
    timings = re.search(r"pipeline digit-reader v1 on 10 devices, mean time per node: (.*?) > ", text)
    assert timings is not None, text[-3000:]
    assert all(re.search(rf"\b{node} \d+\.\d+ ms", timings.group(1)) for node in NODES), timings.group(1)
    assert f"digit-reader read {reading['right']}/{reading['answered']} canvases right" in text

    # Canvas i went to device i % 10, which runs profile i % 2 (the demo's fleet), on the artifacts pushed.
    models = workdir / "models"
    spec = pipeline_spec(models / "out-v2")
    canvases, _ = digit_canvases(data.x_val, CANVAS, seed=CANVAS_SEED)
    right = 0
    for p, profile in enumerate(PROFILES):
        stages = {"locate": models / f"out-{LOCATOR}" / profile, "classify": models / "out-v2" / profile}
        runner = local_runner(spec, stages)
        for i in range(p, len(canvases), len(PROFILES)):
            digit = runner.run({"image": canvases[i : i + 1]}).outputs["digit"]
            right += int(np.asarray(digit).ravel()[0] == data.y_val[i])
    assert abs(right - reading["right"]) <= 2, (right, reading["right"])  # thread counts may flip a near-tie


def test_sigterm_stops_everything_the_demo_started(tmp_path: Path) -> None:
    """`kill` / `timeout` / a closed terminal end the demo as Ctrl-C does: hub, broker and agents stop with it."""
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "demo", "--devices", "3", "--workdir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "COLUMNS": "160"})  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "real agents enrolled" in line:
                break
        started = descendants(proc.pid)
        # the hub, the broker and three agents at least (the demo's own helpers may add more)
        assert len(started) >= 5, "".join(seen)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    assert "Traceback" not in rest, rest
    left = {pid for pid in started if alive(pid)}
    for pid in left:  # not to leave them to the rest of the suite should the demo have orphaned them
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the demo ended: {left}"


def test_the_digit_locator_finds_each_digit_on_its_canvas(tmp_path: Path) -> None:
    """The pipeline's first stage as built (before conversion): the row exactly, the column within a pixel or so."""
    import onnxruntime as ort

    from edgefleet.samples import digit_canvases, digit_locator_onnx, digits

    canvases, corners = digit_canvases(digits().x_val, 24, seed=5)
    session = ort.InferenceSession(str(digit_locator_onnx(tmp_path / "locator.onnx", 24)))
    boxes = session.run(["boxes"], {"canvas": canvases})[0] * 23  # normalised by size - 1
    assert boxes.shape == (len(canvases), 4)
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 7, atol=1e-4)  # 8 rows, pixel centre to pixel centre
    np.testing.assert_allclose(boxes[:, 0], corners[:, 0], atol=1e-4)
    column_error = np.abs(boxes[:, 1] - corners[:, 1])
    assert column_error.max() < 1.5 and np.median(column_error) < 0.25, np.percentile(column_error, [50, 90, 100])
    blank = session.run(["boxes"], {"canvas": np.zeros((1, 24, 24, 1), np.float32)})[0]
    assert np.isfinite(blank).all()
