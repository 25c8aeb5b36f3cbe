"""Real serving processes for fallback tests: TorchServe, MLServer (KServe v2), a TF Serving stand-in."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from tests.agent.ports import listen_port
from tests.support.broker import wait_port

ROOT = Path(__file__).resolve().parents[2]
MLSERVER_VENV = Path(os.environ.get("EDGEFLEET_MLSERVER_VENV", ROOT / ".venv-mlserver"))


class DroppingEndpoint:
    """A cloud endpoint that accepts each connection and closes it at once, counting them: the proof that a
    caller did or did not go to the network."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def torchserve(workdir: Path, mar: Path, name: str) -> Iterator[str]:
    """TorchServe on loopback ports serving `mar`; yields the inference base URL once the model is READY."""
    store = workdir / "model-store"
    store.mkdir(parents=True)
    shutil.copy(mar, store / mar.name)
    inf, mgmt, met = listen_port(), listen_port(), listen_port()
    (workdir / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{inf}\nmanagement_address=http://127.0.0.1:{mgmt}\n"
        f"metrics_address=http://127.0.0.1:{met}\ngrpc_inference_port={listen_port()}\n"
        f"grpc_management_port={listen_port()}\ndefault_workers_per_model=1\n"
        # Workers talk over /tmp/.ts.sock.<port>, 9000 by default: two TorchServes on one host would share it.
        f"initial_worker_port={listen_port()}\n"
        "disable_token_authorization=true\nenable_envvars_config=false\ninstall_py_dep_per_model=false\n"
    )
    log = (workdir / "torchserve.log").open("wb")
    exe = Path(sys.executable).with_name("torchserve")
    env = {**os.environ, "LOG_LOCATION": str(workdir / "logs"), "METRICS_LOCATION": str(workdir / "logs")}
    proc = subprocess.Popen(
        [str(exe), "--start", "--foreground", "--ts-config", str(workdir / "config.properties"), "--model-store",
         str(store), "--models", f"{name}={mar.name}", "--disable-token-auth", "--ncs"],
        stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{mgmt}/models/{name}", proc, workdir / "torchserve.log")
        yield f"http://127.0.0.1:{inf}"
    finally:
        _stop(proc)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    """FACTS.md: /ping says Healthy before the worker is up; wait for a READY worker instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"torchserve exited: {log.read_text()[-2000:]}")
        try:
            info = httpx.get(url, timeout=1.0).json()
            if any(w.get("status") == "READY" for m in info for w in m.get("workers", [])):
                return
        except (httpx.HTTPError, json.JSONDecodeError, TypeError, AttributeError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"torchserve model not READY after {timeout}s: {log.read_text()[-2000:]}")


@contextmanager
def mlserver(workdir: Path, onnx_model: Path, name: str, version: int) -> Iterator[str]:
    """MLServer (its own venv) serving the converter's ONNX export with deploy/mlserver/edgefleet_onnx.py."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if not exe.exists():
        raise RuntimeError(f"{exe} missing: `make test` creates {MLSERVER_VENV} (mlserver + onnxruntime)")
    model_dir = workdir / "models" / name
    model_dir.mkdir(parents=True)
    shutil.copy(onnx_model, model_dir / "model.onnx")
    shutil.copy(ROOT / "deploy" / "mlserver" / "edgefleet_onnx.py", model_dir / "edgefleet_onnx.py")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "edgefleet_onnx.OnnxModel",
        "parameters": {"uri": "./model.onnx", "version": str(version)},
    }))
    http_port = listen_port()
    (workdir / "models" / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": listen_port(), "metrics_port": listen_port(),
        "parallel_workers": 0,
    }))
    log = (workdir / "mlserver.log").open("wb")
    proc = subprocess.Popen([str(exe), "start", str(workdir / "models")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=workdir, start_new_session=True)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlserver exited: {(workdir / 'mlserver.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/v2/models/{name}/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlserver not ready: {(workdir / 'mlserver.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield base
    finally:
        _stop(proc)


class ServerThread:
    """Any ASGI app under a real uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: object) -> None:
        self.port = listen_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_port("127.0.0.1", self.port)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
