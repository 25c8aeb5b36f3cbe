"""`edgefleet agent run` as a real subprocess: the local API on a unix socket (`api_uds`: predict, status and
rollback through it, its file mode, a socket left by kill -9 replaced, one served by another agent refused),
one daemon per data_dir, a port in use refused before anything starts, SIGTERM as a clean stop."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from agent.errors import ConfigError
from agent.httpserver import bind_unix_socket
from edgefleet.cli import cli
from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer, wait_for
from tests.agent.hubstub import HubStub
from tests.agent.procs import kill9, run_agent, start_agent, stop, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="ef-uds-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _client(sock: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://agent", timeout=10)


def _answers(sock: Path) -> bool:
    try:
        with _client(sock) as client:
            return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_local_api_on_a_unix_socket(
    tmp_path: Path, short_dir: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:
    sock = short_dir / "agent.sock"
    config = write_config(
        tmp_path / "agent.toml", tmp_path / "device", hub, unique_root, api_enabled=True, api_uds=str(sock)
    )
    log = tmp_path / "agent.log"
    proc = start_agent(config, log)
    try:
        wait_for(lambda: _answers(sock), timeout=60, what="the API on the unix socket")
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o660
        for version in (1, 2):
            art = onnx_linear(tmp_path / f"lin_v{version}.onnx", seed=version)
            target = hub.publish(make_manifest(art, name="demo", version=version), art)
            observer.desire("dev-1", version, [("demo", version, target, False)])
            wait_for(lambda v=version: any(e["version"] == v for e in observer.events("committed")), what=f"v{version}")

        with _client(sock) as client:
            r = client.post("/v1/models/demo/predict", json={"inputs": {"x": [[1, 2, 3, 4]]}})
            assert r.status_code == 200, r.text
            assert r.json()["version"] == 2
            assert client.post("/v1/models/demo/predict", content=b"{").status_code == 400

        # A second agent (another data_dir) on the same socket stops before it starts anything, with one line.
        other = write_config(tmp_path / "other.toml", tmp_path / "other", hub, unique_root, api_enabled=True,
                             api_uds=str(sock), device_id="dev-2")  # fmt: skip
        second = run_agent(other)
        assert second.returncode == 1
        assert second.stderr.strip() == f"Error: api_uds: another process is serving on {sock}", second.stderr
        assert _answers(sock), "the first agent still serves"

        # The operator CLI finds the daemon through the same config.
        res = CliRunner().invoke(cli, ["agent", "status", "--config", str(config)])
        assert res.exit_code == 0 and "demo: active v2, previous v1, state committed" in res.output, res.output
        res = CliRunner().invoke(cli, ["agent", "rollback", "demo", "--config", str(config)])
        assert res.exit_code == 0 and "rollback of demo queued" in res.output, res.output
        wait_for(lambda: _client(sock).get("/v1/models").json()["models"][0]["active_version"] == 1, what="rollback")

        # kill -9 leaves the socket file behind; the next start replaces it and serves again (v1: a version
        # rolled back by hand is not reinstalled until the hub publishes a new desired generation).
        kill9(proc)
        assert sock.is_socket() and not _answers(sock)
        proc = start_agent(config, log)
        wait_for(lambda: _answers(sock), timeout=60, what="the API after a restart")
        with _client(sock) as client:
            r = client.post("/v1/models/demo/predict", json={"inputs": {"x": [[1, 2, 3, 4]]}})
            assert r.status_code == 200 and r.json()["version"] == 1, r.text

        # SIGTERM (systemctl stop) is a clean stop: the daemon stops its parts, the open telemetry window
        # (the one prediction above) goes to the outbox to be sent after the next start, the socket file goes.
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        assert not sock.exists()
        assert observer.payloads_status()[-1]["status"] == "offline"  # said before disconnecting, no last will
        with sqlite3.connect(tmp_path / "device" / "outbox.sqlite") as db:
            rows = [json.loads(p) for (p,) in db.execute("SELECT payload FROM rows WHERE channel = 'telemetry'")]
        assert any(r["model"] == "demo" and r["version"] == 1 and r["n"] == 1 for r in rows), rows
    finally:
        stop(proc)

    res = CliRunner().invoke(cli, ["agent", "status", "--config", str(config)])
    assert res.exit_code == 1 and f"the agent's local API at unix socket {sock} does not answer" in res.output


def test_unix_socket_refusals(short_dir: Path) -> None:
    not_a_socket = short_dir / "file"
    not_a_socket.write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        bind_unix_socket(not_a_socket)
    assert not_a_socket.read_text() == "keep me"
    with pytest.raises(ConfigError, match="does not exist"):
        bind_unix_socket(short_dir / "missing" / "agent.sock")
    sock = bind_unix_socket(short_dir / "a.sock", mode=0o600)
    try:
        assert stat.S_IMODE((short_dir / "a.sock").stat().st_mode) == 0o600
        with pytest.raises(ConfigError, match="another process is serving"):
            bind_unix_socket(short_dir / "a.sock")
    finally:
        sock.close()


def test_operator_cli_with_the_local_api_off(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('profile = "x86_gateway"\napi_enabled = false\n')
    for args in (["rollback", "demo"], ["status"]):
        res = CliRunner().invoke(cli, ["agent", *args, "--config", str(config)])
        assert res.exit_code == 1
        assert "the local API is off in this config (api_enabled = false)" in res.output


@pytest.mark.parametrize("api", ["tcp", "off"])
def test_one_daemon_per_data_dir_and_sigterm_is_a_clean_stop(
    api: str, tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:
    from tests.agent.ports import listen_port

    port = listen_port()
    extra: dict[str, object] = {"api_enabled": True, "api_port": port} if api == "tcp" else {}
    config = write_config(tmp_path / "agent.toml", tmp_path / "device", hub, unique_root, **extra)
    proc = start_agent(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: any(p["status"] == "online" for p in observer.payloads_status()), timeout=60, what="online")
        second = run_agent(config)
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"Error: data_dir: another agent (pid {proc.pid}) is running on {tmp_path / 'device'}"
        ), second.stderr
        if api == "tcp":  # another device's agent on the same port stops before it enrolls or connects
            other = write_config(tmp_path / "other.toml", tmp_path / "other", hub, unique_root, device_id="dev-2",
                                 api_enabled=True, api_port=port)  # fmt: skip
            third = run_agent(other)
            assert third.returncode == 1
            assert third.stderr.strip().startswith(f"Error: api_host/api_port: cannot listen on 127.0.0.1:{port}: ")
            assert not (tmp_path / "other" / "identity.json").exists()
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert observer.payloads_status()[-1]["status"] == "offline"
        # the lock goes with the process: the next start takes it
        proc = start_agent(config, tmp_path / "agent.log")
        wait_for(lambda: observer.payloads_status()[-1]["status"] == "online", timeout=60, what="online again")
    finally:
        stop(proc)


def test_an_unusable_outbox_stops_the_start_with_one_line(tmp_path: Path, hub: HubStub, unique_root: str) -> None:
    config = write_config(tmp_path / "agent.toml", tmp_path / "device", hub, unique_root)
    (tmp_path / "device" / "outbox.sqlite").mkdir(parents=True)  # cannot be opened as a database
    res = run_agent(config)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        f"Error: {tmp_path / 'device' / 'outbox.sqlite'}: unable to open database file"
    ), res.stderr


def test_an_unreachable_hub_at_first_start_is_one_line(tmp_path: Path, hub: HubStub, unique_root: str) -> None:
    from tests.agent.ports import listen_port

    config = write_config(tmp_path / "agent.toml", tmp_path / "device", hub, unique_root,
                          hub_url=f"http://127.0.0.1:{listen_port()}")  # fmt: skip  # nothing listens there
    res = run_agent(config)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach the hub at http://127.0.0.1:"), res.stderr
    assert not (tmp_path / "device" / "identity.json").exists()


def test_a_too_short_enrollment_token_is_one_line(tmp_path: Path, hub: HubStub, unique_root: str) -> None:
    config = write_config(tmp_path / "agent.toml", tmp_path / "device", hub, unique_root, enrollment_token="x")
    res = run_agent(config)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: enrollment_token: String should have at least 8"), res.stderr
    assert "validation error for EnrollRequest" not in res.stderr
