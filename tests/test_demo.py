"""`edgefleet demo --once --devices 10`: the whole chain, and a summary that matches the hub's API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgefleet.brokers import free_port
from tests.support.procs import alive, descendants

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[1]


def _hub_api(data_dir: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    """The demo's hub, started again on its data dir (MQTT off) to read what it recorded."""
    port = free_port()
    env = {**os.environ, "EDGEFLEET_HUB_DATA_DIR": str(data_dir), "EDGEFLEET_HUB_ADMIN_TOKEN": token,
           "EDGEFLEET_HUB_MQTT_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "hub", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    done = subprocess.run([sys.executable, "-m", "edgefleet", "demo", "--once", "--devices", "10", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "160"})
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

    from edgefleet.demo.environment import DemoEnvironment

    proc, url = _hub_api(tmp_path / "env" / "hub", DemoEnvironment(tmp_path).admin_token)
    try:
        headers = {"Authorization": f"Bearer {DemoEnvironment(tmp_path).admin_token}"}
        rollouts = {r["version"]: r for r in httpx.get(f"{url}/api/v1/rollouts", headers=headers).json()}
        for version, entry in summary["rollouts"].items():
            assert rollouts[int(version)]["state"] == entry["state"]
            assert rollouts[int(version)]["reason"] == entry["reason"]
        devices = httpx.get(f"{url}/api/v1/devices", headers=headers).json()
        assert len(devices) == 10
        assert {d["current_versions"]["digits"] for d in devices} == {2}
        assert next(d for d in devices if d["id"] == summary["offline_device"])["current_versions"]["digits"] == 2
    finally:
        proc.terminate()
        proc.wait(10)


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
