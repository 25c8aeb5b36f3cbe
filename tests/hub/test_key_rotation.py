"""`edgefleet hub rotate-keys` against a serving hub process: clients keep verifying, chain through roots, and
refuse what a retired key signs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from tuf.api.metadata import Metadata, TargetFile

from agent.errors import MetadataRefused
from agent.tufclient import TufClient
from edgefleet.cli import cli
from hub.errors import TufRepositoryError
from hub.tuf_repo import TufRepository
from protocol.http import manifest_target
from protocol.manifest import Manifest
from tests.hub.support import tar_gz, write_folder
from tests.support.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKEN = "rotation-admin-token-0123456789"


@dataclass
class ServedHub:
    """`edgefleet hub serve` in a subprocess (no broker), its data dir and an admin HTTP client."""

    data: Path
    url: str
    proc: subprocess.Popen[bytes]
    work: Path

    @property
    def repo(self) -> TufRepository:
        return TufRepository(self.data / "tuf")

    def push(self, name: str, version: int) -> str:
        folder = write_folder(self.work / f"out-{name}-{version}", name, version, ["raspberry_pi_4"])
        r = httpx.post(f"{self.url}/api/v1/models", files={"archive": ("o.tgz", tar_gz(folder))},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)  # fmt: skip
        assert r.status_code == 201, r.text
        return manifest_target(name, version, "raspberry_pi_4")

    def client(self, meta: Path, trusted_root: bytes) -> TufClient:
        """A device's view (the agent's TufClient; the admin token may read every target)."""
        http = httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        return TufClient(meta, self.url, http, trusted_root)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedHub]:
    port = free_port()
    env = {**os.environ, "EDGEFLEET_HUB_DATA_DIR": str(tmp_path / "data"), "EDGEFLEET_HUB_ADMIN_TOKEN": TOKEN,
           "EDGEFLEET_HUB_MQTT_ENABLED": "false", "EDGEFLEET_HUB_PUBLIC_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    log = (tmp_path / "hub.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "hub", "serve", "--port", str(port)],
                            env=env, stdout=log, stderr=log)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, (tmp_path / "hub.log").read_text()[-3000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, (tmp_path / "hub.log").read_text()[-3000:]
        time.sleep(0.1)
    yield ServedHub(data=tmp_path / "data", url=url, proc=proc, work=tmp_path)
    proc.terminate()
    proc.wait(15)
    assert "Traceback" not in (tmp_path / "hub.log").read_text()


def rotate(data: Path, *args: str) -> tuple[int, str]:
    """`edgefleet hub rotate-keys` as its own process, beside the serving hub."""
    done = subprocess.run([sys.executable, "-m", "edgefleet", "hub", "rotate-keys", "--data-dir", str(data), *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def keyid(pem: Path) -> str:
    from hub.tuf_keys import load_signer

    return str(load_signer(pem, "any").public_key.keyid)


def test_each_role_rotated_while_serving_and_a_current_client_follows(served: ServedHub, tmp_path: Path) -> None:
    first_root = served.repo.root_bytes()
    client_dir = tmp_path / "device"
    first = served.push("digits", 1)
    served.client(client_dir, first_root).fetch_small_target(first, tmp_path / "m1.json")
    keys = served.data / "tuf" / "keys"
    for n, role in enumerate(["timestamp", "snapshot", "targets", "root"], start=2):
        old = keyid(keys / f"{role}.pem")
        code, out = rotate(served.data, "--role", role)
        assert code == 0, out
        assert f"{n}.root.json trusts only the new one" in out and "take a new backup" in out
        root = served.repo.load("root").signed
        assert root.version == n and root.roles[role].keyids == [keyid(keys / f"{role}.pem")] != [old]
        assert (keys / f"{role}.pem").stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in keys.iterdir()) == ["root.pem", "snapshot.pem", "targets.pem", "timestamp.pem"]
        target = served.push("digits", n)  # the serving hub signs with the new key at once
        client = served.client(client_dir, first_root)
        manifest = client.fetch_small_target(target, tmp_path / f"m{n}.json")
        assert Manifest.from_json(manifest).version == n
        trusted = Metadata.from_file(str(client_dir / "root.json")).signed
        assert trusted.version == n and old not in trusted.roles[role].keyids


def test_agent_offline_through_two_root_rotations_still_updates(served: ServedHub, tmp_path: Path) -> None:
    root_v1 = served.repo.root_bytes()
    served.client(tmp_path / "offline", root_v1).refresh()  # trusts root 1, then goes away
    assert rotate(served.data, "--role", "root")[0] == 0
    # the second rotation with the root key kept offline (moved out of keys/, as docs/hub.md advises)
    usb = tmp_path / "usb"
    usb.mkdir()
    (served.data / "tuf" / "keys" / "root.pem").rename(usb / "root.pem")
    code, out = rotate(served.data, "--role", "root")
    assert code == 1 and out.count("\n") == 1 and "the root key is not at" in out  # one readable line
    code, out = rotate(served.data, "--role", "root", "--root-key", str(usb / "root.pem"),
                       "--new-root-key", str(usb / "root-2.pem"))  # fmt: skip
    assert code == 0, out
    assert "no longer trusted: destroy it" in out and (usb / "root-2.pem").stat().st_mode & 0o777 == 0o600
    assert rotate(served.data, "--role", "targets", "--root-key", str(usb / "root-2.pem"))[0] == 0
    assert served.repo.load("root").signed.version == 4
    for n in (1, 2, 3, 4):
        assert httpx.get(f"{served.url}/tuf/metadata/{n}.root.json",
                         headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200  # fmt: skip
    target = served.push("digits", 7)
    client = served.client(tmp_path / "offline", root_v1)  # its cached trusted root is still version 1
    assert client.fetch_small_target(target, tmp_path / "m.json")
    assert Metadata.from_file(str(tmp_path / "offline" / "root.json")).signed.version == 4


def test_metadata_signed_with_the_retired_targets_key_is_refused(served: ServedHub, tmp_path: Path) -> None:
    root_v1 = served.repo.root_bytes()
    served.push("digits", 1)
    client_dir = tmp_path / "device"
    served.client(client_dir, root_v1).refresh()  # trusts the old targets key
    keys = served.data / "tuf" / "keys"
    stolen = (keys / "targets.pem").read_bytes()  # what an attacker kept of the key being rotated away
    assert rotate(served.data, "--role", "targets")[0] == 0
    # The hub itself refuses to sign with the retired key.
    (tmp_path / "old-targets.pem").write_bytes(stolen)
    repo = served.repo
    with pytest.raises(TufRepositoryError, match=r"is not the targets key root\.json"):
        repo._signer("targets", tmp_path / "old-targets.pem")
    # An attacker with the old key and the server: a new targets version naming an evil file, signed with
    # the old key, under a snapshot and timestamp that are otherwise perfectly valid.
    evil = b"evil model"
    forged = repo.load("targets")
    forged.signed.version += 1
    forged.signed.targets["models/digits/1/raspberry_pi_4/model.tflite"] = TargetFile.from_data(
        "models/digits/1/raspberry_pi_4/model.tflite", evil, ["sha256"])  # fmt: skip
    from hub.tuf_keys import signer_from_pem

    forged.sign(signer_from_pem(stolen, source="stolen"))
    (repo.metadata_dir / f"{forged.signed.version}.targets.json").write_bytes(forged.to_bytes())
    with repo.locked():
        repo._republish_snapshot(targets_version=forged.signed.version)
    with pytest.raises(MetadataRefused, match="UnsignedMetadataError"):
        served.client(client_dir, root_v1).target_info("models/digits/1/raspberry_pi_4/model.tflite")
    fresh = tmp_path / "fresh"  # a device enrolled after the rotation is refused just the same
    with pytest.raises(MetadataRefused, match="UnsignedMetadataError"):
        served.client(fresh, root_v1).refresh()


def test_rotate_keys_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["hub", "rotate-keys", "--role", "targets", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 1 and result.output.startswith("Error: no TUF repository in")
    assert result.output.count("\n") == 1
    TufRepository.create(tmp_path / "d" / "tuf")
    result = runner.invoke(cli, ["hub", "rotate-keys", "--role", "targets", "--data-dir", str(tmp_path / "d"),
                                 "--new-root-key", str(tmp_path / "k.pem")])  # fmt: skip
    assert result.exit_code == 1 and "--new-root-key goes with --role root and --root-key" in result.output
    result = runner.invoke(cli, ["hub", "rotate-keys", "--role", "bogus", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2 and "'bogus' is not one of" in result.output


def test_interrupted_rotation_is_finished_or_dropped(tmp_path: Path) -> None:
    repo = TufRepository.create(tmp_path / "tuf")
    from hub.tuf_keys import create_key_file

    stray = create_key_file(repo.keys_dir / "snapshot.pem.next")  # cut before its root was published
    TufRepository.open_or_create(repo.path)
    assert not (repo.keys_dir / "snapshot.pem.next").exists()
    assert stray.public_key.keyid not in repo.load("root").signed.roles["snapshot"].keyids
    # cut after the new root but before the rename: the hub's start finishes it and re-signs with the new key
    new = create_key_file(repo.keys_dir / "timestamp.pem.next")
    root = repo.load("root").signed
    root.revoke_key(root.roles["timestamp"].keyids[0], "timestamp")
    root.add_key(new.public_key, "timestamp")
    root.version += 1
    with repo.locked():
        repo._publish("root", root)
    TufRepository.open_or_create(repo.path)
    assert keyid(repo.keys_dir / "timestamp.pem") == new.public_key.keyid
    timestamp = repo.load("timestamp")
    repo.load("root").signed.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
