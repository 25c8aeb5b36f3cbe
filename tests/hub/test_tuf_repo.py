"""TufRepository against a real python-tuf ngclient Updater over HTTP."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tuf.api import exceptions
from tuf.ngclient import Updater

from hub.errors import SigningKeyMissing, TufRepositoryError
from hub.tuf_repo import Expiry, TufRepository
from protocol.http import manifest_target


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    return TufRepository.create(tmp_path / "tuf")


@pytest.fixture
def base_url(repo: TufRepository) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(repo.path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _updater(repo: TufRepository, base_url: str, client: Path, bootstrap: bytes | None) -> Updater:
    (client / "meta").mkdir(parents=True, exist_ok=True)
    (client / "dl").mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(client / "meta"),
        metadata_base_url=f"{base_url}/metadata/",
        target_dir=str(client / "dl"),
        target_base_url=f"{base_url}/targets/",
        bootstrap=bootstrap,
    )


def test_refresh_and_download_verified_target(repo: TufRepository, base_url: str, tmp_path: Path) -> None:
    path = manifest_target("digits", 1, "raspberry_pi_4")
    version = repo.add_targets({path: b'{"hello": 1}', "models/digits/1/raspberry_pi_4/m.tflite": b"x" * 5000})
    assert version == 2
    updater = _updater(repo, base_url, tmp_path / "c", repo.root_bytes())
    updater.refresh()
    info = updater.get_targetinfo(path)
    assert info is not None and info.length == len(b'{"hello": 1}')
    out = updater.download_target(info)
    assert Path(out).read_bytes() == b'{"hello": 1}'
    assert repo.target_file(path).name.endswith(".manifest.json")


def test_tampered_target_is_refused(repo: TufRepository, base_url: str, tmp_path: Path) -> None:
    path = "models/digits/1/p/model.onnx"
    repo.add_targets({path: b"A" * 100})
    repo.target_file(path).write_bytes(b"B" * 100)
    updater = _updater(repo, base_url, tmp_path / "c", repo.root_bytes())
    updater.refresh()
    info = updater.get_targetinfo(path)
    assert info is not None
    with pytest.raises(exceptions.LengthOrHashMismatchError):
        updater.download_target(info)


def test_replayed_older_metadata_is_refused(repo: TufRepository, base_url: str, tmp_path: Path) -> None:
    repo.copy_metadata(tmp_path / "old")
    repo.add_targets({"models/a/2/p/manifest.json": b"new"})
    _updater(repo, base_url, tmp_path / "c", repo.root_bytes()).refresh()
    repo.restore_metadata(tmp_path / "old")
    with pytest.raises(exceptions.BadVersionNumberError):
        _updater(repo, base_url, tmp_path / "c", None).refresh()


def test_expired_timestamp_is_refused_then_refresh_fixes_it(repo: TufRepository, base_url: str, tmp_path: Path) -> None:
    repo.refresh_timestamp(expires=datetime.now(UTC) - timedelta(minutes=1))
    with pytest.raises(exceptions.ExpiredMetadataError):
        _updater(repo, base_url, tmp_path / "c", repo.root_bytes()).refresh()
    assert repo.refresh_expiring() == ["timestamp"]
    _updater(repo, base_url, tmp_path / "c2", repo.root_bytes()).refresh()


def test_refresh_expiring_follows_the_clock(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    repo = TufRepository.create(tmp_path / "tuf", expiry=Expiry(timestamp=timedelta(hours=2)), clock=lambda: now[0])
    assert repo.refresh_expiring() == []
    now[0] += timedelta(hours=1, minutes=1)
    assert repo.refresh_expiring() == ["timestamp"]
    assert repo.load("timestamp").signed.expires == datetime(2026, 1, 1, 3, 1, tzinfo=UTC)
    now[0] += timedelta(days=20)
    assert repo.refresh_expiring() == ["snapshot", "timestamp"]


def test_new_root_version_reaches_clients_and_offline_root_key(
    repo: TufRepository, base_url: str, tmp_path: Path
) -> None:
    first_root = repo.root_bytes()
    assert repo.bump_root() == 2
    updater = _updater(repo, base_url, tmp_path / "c", first_root)
    updater.refresh()
    assert (tmp_path / "c" / "meta" / "root.json").read_bytes() == repo.root_bytes()
    (repo.keys_dir / "root.pem").rename(tmp_path / "root.pem.offline")
    repo.add_targets({"models/a/1/p/manifest.json": b"still works without the root key"})
    with pytest.raises(SigningKeyMissing):
        repo.bump_root()


def test_targets_are_content_addressed_and_paths_checked(repo: TufRepository, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(b"z" * 70000)
    repo.add_targets({"models/a/1/p/big.bin": src})
    assert repo.target_file("models/a/1/p/big.bin").read_bytes() == src.read_bytes()
    assert repo.targets()["models/a/1/p/big.bin"].length == 70000
    for bad in ("../etc/passwd", "/abs", "a//b"):
        with pytest.raises(TufRepositoryError):
            repo.add_targets({bad: b"x"})
    with pytest.raises(TufRepositoryError):
        TufRepository.create(repo.path)


def test_hub_background_job_resigns_expiring_timestamp(tmp_path: Path) -> None:
    from hub.services import Hub
    from hub.settings import HubSettings

    hub = Hub(settings=HubSettings(data_dir=tmp_path / "d", admin_token="t" * 20, mqtt_enabled=False,
                                   tuf_refresh_s=0.05))  # fmt: skip
    version = hub.repo.refresh_timestamp(expires=datetime.now(UTC) + timedelta(minutes=1))
    hub.start()
    try:
        deadline = time.monotonic() + 10
        while hub.repo.load("timestamp").signed.version == version and time.monotonic() < deadline:
            time.sleep(0.02)
        ts = hub.repo.load("timestamp").signed
        assert ts.version > version and ts.expires > datetime.now(UTC) + timedelta(hours=23)
    finally:
        hub.stop()
