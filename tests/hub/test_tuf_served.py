"""A device's view: enroll over HTTP, then a real tuf.ngclient Updater (bearer-token fetcher) against the hub."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface, Updater

from hub.api.main import create_app
from hub.settings import HubSettings
from protocol.http import ENROLL_PATH, TUF_METADATA_PATH, TUF_TARGETS_PATH, EnrollResponse, manifest_target
from protocol.manifest import Manifest
from tests.hub.support import tar_gz, write_folder
from tests.support.broker import free_port

TOKEN = "tuf-served-admin-token"


class BearerFetcher(FetcherInterface):
    """What the agent does: every TUF request carries the device token."""

    def __init__(self, token: str) -> None:
        self.client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def _fetch(self, url: str) -> Iterator[bytes]:
        r = self.client.get(url)
        if r.status_code != 200:
            raise exceptions.DownloadHTTPError(f"{url}: {r.status_code}", r.status_code)
        return iter([r.content])


@pytest.fixture
def hub_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    settings = HubSettings(data_dir=tmp_path / "data", admin_token=TOKEN, mqtt_enabled=False,
                           public_url=f"http://127.0.0.1:{port}")  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(20)


def test_enrolled_device_refreshes_and_downloads_verified_manifest(hub_url: str, tmp_path: Path) -> None:
    admin = {"Authorization": f"Bearer {TOKEN}"}
    folder = write_folder(tmp_path / "out", "digits", 4, ["raspberry_pi_4"])
    assert httpx.post(f"{hub_url}/api/v1/models", files={"archive": ("o.tgz", tar_gz(folder))},
                      headers=admin).status_code == 201  # fmt: skip
    tok = httpx.post(f"{hub_url}/api/v1/enrollment-tokens", json={}, headers=admin).json()["token"]
    r = httpx.post(f"{hub_url}{ENROLL_PATH}", json={"enrollment_token": tok, "profile": "raspberry_pi_4"})
    enrolled = EnrollResponse.model_validate(r.json())
    rollout = {"model": "digits", "version": 4, "target": {"devices": [enrolled.device_id]}, "canary_percent": 0}
    assert httpx.post(f"{hub_url}/api/v1/rollouts", json=rollout, headers=admin).status_code == 201
    (tmp_path / "meta").mkdir()
    (tmp_path / "dl").mkdir()
    updater = Updater(
        metadata_dir=str(tmp_path / "meta"),
        metadata_base_url=f"{enrolled.hub_url}{TUF_METADATA_PATH}",
        target_dir=str(tmp_path / "dl"),
        target_base_url=f"{enrolled.hub_url}{TUF_TARGETS_PATH}",
        fetcher=BearerFetcher(enrolled.device_token),
        bootstrap=enrolled.tuf_root.encode(),
    )
    updater.refresh()
    info = updater.get_targetinfo(manifest_target("digits", 4, "raspberry_pi_4"))
    assert info is not None
    manifest = Manifest.from_json(Path(updater.download_target(info)).read_bytes())
    artifact = updater.get_targetinfo(f"models/digits/4/raspberry_pi_4/{manifest.artifact.file}")
    assert artifact is not None and artifact.hashes["sha256"] == manifest.artifact.sha256
    assert Path(updater.download_target(artifact)).stat().st_size == manifest.artifact.size
    stranger = Updater(
        metadata_dir=str(tmp_path / "meta"), metadata_base_url=f"{hub_url}{TUF_METADATA_PATH}",
        target_dir=str(tmp_path / "dl"), target_base_url=f"{hub_url}{TUF_TARGETS_PATH}",
        fetcher=BearerFetcher("not-a-device-token"), bootstrap=None,
    )  # fmt: skip
    with pytest.raises(exceptions.DownloadHTTPError):
        stranger.refresh()
