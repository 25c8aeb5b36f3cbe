"""A fleet of real agents: one `edgefleet agent run` process per device, each with its own data dir and API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgefleet.brokers import free_port

_API_PORTS: set[int] = set()


def unique_api_port() -> int:
    """A free port that no other agent of this process was given.

    `free_port()` only knows what is bound now; agents bind theirs when they start, so ten agents
    created in a row could draw the same port and one would die with "address already in use".
    """
    while True:
        port = free_port()
        if port not in _API_PORTS:
            _API_PORTS.add(port)
            return port


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, values: dict[str, Any]) -> None:
    """A flat agent.toml (tables for dict values) — checked by parsing it back."""
    text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if v is not None)
    tomllib.loads(text)
    path.write_text(text)


@dataclass
class AgentProcess:
    """One device: a real agent daemon (LiteRT / onnxruntime, A/B store, outbox) in its own process."""

    device_id: str
    profile: str
    workdir: Path
    settings: dict[str, Any]
    api_port: int = field(default_factory=unique_api_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "agent.toml"
        write_toml(
            config,
            {
                **self.settings,
                "profile": self.profile,
                "device_id": self.device_id,
                "data_dir": str(self.workdir / "data"),
                "api_port": self.api_port,
            },
        )
        log = (self.workdir / "agent.log").open("ab")
        cmd = [sys.executable, "-m", "edgefleet", "agent", "run", "--config", str(config)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: the device drops off the network without a goodbye (the broker sends its last will)."""
        if self.running and self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.running and self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def predict(self, model: str, input_name: str, x: np.ndarray, client: httpx.Client) -> dict[str, Any] | None:
        """One call to the device's local API; None when the agent is down or not listening yet."""
        if not self.running:
            return None
        try:
            r = client.post(
                f"{self.api}/v1/models/{model}/predict", json={"inputs": {input_name: x.tolist()}}, timeout=5
            )
        except httpx.HTTPError:
            return None
        body: dict[str, Any] = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        body["status_code"] = r.status_code
        return body

    def models(self, client: httpx.Client) -> list[dict[str, Any]]:
        if not self.running:
            return []
        try:
            data = client.get(f"{self.api}/v1/models", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return []
        return list(data.get("models", []))
