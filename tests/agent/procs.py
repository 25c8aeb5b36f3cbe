"""Run `edgefleet agent run` as a real subprocess, so tests can kill -9 it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.agent.hubstub import ENROLL_TOKEN, HubStub


def write_config(path: Path, data_dir: Path, hub: HubStub, root: str, **extra: Any) -> Path:
    """An agent.toml for a test device."""
    values: dict[str, Any] = {
        "profile": "x86_gateway",
        "data_dir": str(data_dir),
        "hub_url": hub.url,
        "allow_insecure_http": hub.tls_files is None,  # the stub serves plain HTTP on loopback unless given a cert
        "enrollment_token": ENROLL_TOKEN,
        "device_id": "dev-1",
        "topic_root": root,
        "probation_s": 0.0,
        "retry_base_s": 0.05,
        "retry_window_s": 0.0,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "api_enabled": False,
        "latency_basis": "device",
        "log_level": "WARNING",
        **extra,
    }
    lines = [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {str(v).lower()}" for k, v in values.items()]
    path.write_text("\n".join(line.replace("'", '"') for line in lines) + "\n")
    return path


def _env() -> dict[str, str]:
    """This environment without EDGEFLEET_AGENT_* (the test's agent.toml is the whole config)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}


def run_agent(config: Path) -> subprocess.CompletedProcess[str]:
    """`edgefleet agent run` to completion (for starts that must be refused: stderr holds the refusal alone,
    without the warnings logged before it, such as the stub hub's plain HTTP)."""
    env = {**_env(), "EDGEFLEET_AGENT_LOG_LEVEL": "ERROR"}
    return subprocess.run([sys.executable, "-m", "edgefleet", "agent", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip


def start_agent(config: Path, log: Path, pause: str | None = None) -> subprocess.Popen[bytes]:
    """Start the daemon; `pause="state@version"` makes it stop after persisting that state."""
    env = _env()
    entry = ["-m", "tests.agent.paused_agent", pause] if pause else ["-m", "edgefleet"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *entry, "agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill9(proc)


def assert_one_complete_active(models_dir: Path, name: str) -> int | None:
    """The store invariant: `active` is absent or points at a complete version whose artifact matches its manifest."""
    import json

    link = models_dir / name / "active"
    if not link.is_symlink():
        return None
    version_dir = link.resolve()
    manifest = json.loads((version_dir / "manifest.json").read_text())
    artifact = version_dir / manifest["artifact"]["file"]
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == manifest["artifact"]["sha256"]
    return int(manifest["version"])
