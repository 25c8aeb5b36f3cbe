"""TUF metadata and artifacts every replica sees (issue 19, part 4): hub/storage/ backends against one contract,
the hub serving from PostgreSQL large objects (Range, python-tuf), two replicas with their own data dirs on one
schema, and a 100 MB artifact streamed out of PostgreSQL without the hub's memory growing with it."""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import uvicorn
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from tuf.ngclient import Updater

from hub.api.main import create_app
from hub.backup import backup, restore
from hub.cli import hub as hub_cli
from hub.db.engine import make_engine
from hub.errors import BlobNotFound, StorageError, TufRepositoryError
from hub.services import Hub
from hub.settings import HubSettings
from hub.storage import DirectoryStorage, PostgresStorage, Storage
from hub.tuf_repo import TufRepository
from protocol.http import ENROLL_PATH, TUF_METADATA_PATH, TUF_TARGETS_PATH, EnrollResponse, manifest_target
from protocol.manifest import Manifest
from tests.cluster.replicas import ADMIN_TOKEN, Cluster, Replica
from tests.hub.conftest import pg_schema_url
from tests.hub.support import tar_gz, write_folder
from tests.hub.test_tuf_served import BearerFetcher
from tests.support.broker import free_port

log = logging.getLogger(__name__)
MB = 1024 * 1024
SMALL_CHUNK = 4096  # the PostgreSQL backend under contract test moves 4 KiB per query: many chunk boundaries
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PI = "raspberry_pi_4"


@pytest.fixture(params=["directory", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend, empty."""
    if request.param == "directory":
        return DirectoryStorage(tmp_path / "tuf")
    engine: Engine = request.getfixturevalue("pg")
    return PostgresStorage(engine, chunk=SMALL_CHUNK)


# ---- the contract ------------------------------------------------------------------------------
def test_write_read_stat_exists(storage: Storage) -> None:
    assert not storage.exists("metadata/root.json") and storage.stat("metadata/root.json") is None
    storage.write_bytes("metadata/root.json", b'{"signed": 1}')
    assert storage.exists("metadata/root.json")
    assert storage.read_bytes("metadata/root.json") == b'{"signed": 1}'
    info = storage.stat("metadata/root.json")
    assert info is not None and info.size == 13 and info.key == "metadata/root.json"
    assert info.sha256 in (None, hashlib.sha256(b'{"signed": 1}').hexdigest())
    storage.write_bytes("metadata/empty.json", b"")
    assert storage.read_bytes("metadata/empty.json") == b"" and storage.stat("metadata/empty.json").size == 0  # type: ignore[union-attr]


def test_a_file_is_stored_streamed_and_read_back_by_any_range(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(5 * SMALL_CHUNK + 123)
    src = tmp_path / "model.bin"
    src.write_bytes(data)
    key = f"targets/models/m/1/p/{hashlib.sha256(data).hexdigest()}.model.bin"
    storage.write_file(key, src)
    assert storage.stat(key).size == len(data)  # type: ignore[union-attr]
    with storage.open(key) as blob:
        assert blob.info.size == len(data)
        assert b"".join(blob.chunks()) == data
        for start, end in [(0, 1), (SMALL_CHUNK - 1, SMALL_CHUNK + 1), (3 * SMALL_CHUNK, len(data)), (7, 7),
                           (len(data) - 1, len(data)), (100, 3 * SMALL_CHUNK + 5)]:  # fmt: skip
            assert b"".join(blob.chunks(start, end, size=1000)) == data[start:end], (start, end)
        blob.file.seek(2 * SMALL_CHUNK + 3)
        assert blob.file.read(10) == data[2 * SMALL_CHUNK + 3 : 2 * SMALL_CHUNK + 13]
    assert storage.read_bytes(key) == data


def test_overwrite_replaces_the_whole_blob(storage: Storage) -> None:
    storage.write_bytes("metadata/timestamp.json", b"one" * 5000)  # above the contract chunk: read by offset
    old = _objects(storage)
    storage.write_bytes("metadata/timestamp.json", b"two")
    assert storage.read_bytes("metadata/timestamp.json") == b"two"
    assert storage.stat("metadata/timestamp.json").size == 3  # type: ignore[union-attr]
    assert _alive(storage, set(old.values())) == set()  # PostgreSQL: the replaced large object is unlinked


def test_list_and_delete(storage: Storage) -> None:
    for key in ("metadata/2.root.json", "metadata/1.root.json", "targets/models/a/1/p/x.bin", "metadata_x/y"):
        storage.write_bytes(key, key.encode())
    assert storage.list("metadata/") == ["metadata/1.root.json", "metadata/2.root.json"]
    assert storage.list("targets/") == ["targets/models/a/1/p/x.bin"]
    assert storage.list("nothing/") == []
    storage.delete("metadata/1.root.json")
    storage.delete("metadata/never.json")  # nothing there: nothing happens
    assert storage.list("metadata/") == ["metadata/2.root.json"]
    named = set(_objects(storage).values())
    for key in ("metadata/2.root.json", "targets/models/a/1/p/x.bin", "metadata_x/y"):
        storage.delete(key)
    assert _alive(storage, named) == set()  # deleting a blob unlinks its large object


def test_missing_and_invalid_keys(storage: Storage) -> None:
    with pytest.raises(BlobNotFound):
        storage.read_bytes("metadata/9.root.json")
    with pytest.raises(BlobNotFound):
        storage.open("targets/none.bin")
    for bad in ("", "/etc/passwd", "metadata/../keys/root.pem", "a//b", "./a", "a\\b"):
        with pytest.raises(StorageError):
            storage.write_bytes(bad, b"x")
        with pytest.raises(StorageError):
            storage.read_bytes(bad)


def test_directory_writes_are_atomic_files_in_the_old_layout(tmp_path: Path) -> None:
    store = DirectoryStorage(tmp_path / "tuf")
    store.write_bytes("metadata/timestamp.json", b"{}")
    assert (tmp_path / "tuf" / "metadata" / "timestamp.json").read_bytes() == b"{}"
    (tmp_path / "tuf" / "metadata" / ".timestamp.json.abc123").write_bytes(b"half")  # a crash's temp file
    assert store.list("metadata/") == ["metadata/timestamp.json"]
    assert store.local_path("metadata/timestamp.json") == (tmp_path / "tuf" / "metadata" / "timestamp.json").resolve()


# ---- PostgreSQL specifics ----------------------------------------------------------------------
@pytest.mark.postgres
def test_postgresql_lock_is_exclusive_across_processes_engines(pg_url: str, pg: Engine) -> None:
    other = make_engine(pg_url)
    a, b = PostgresStorage(pg), PostgresStorage(other)
    got: list[float] = []
    try:
        with a.lock():

            def contend() -> None:
                with b.lock():
                    got.append(time.monotonic())

            t = threading.Thread(target=contend)
            t.start()
            time.sleep(0.5)
            assert not got  # b waits while a holds it
            released = time.monotonic()
        t.join(10)
        assert got and got[0] >= released
    finally:
        other.dispose()


def test_postgresql_backend_refuses_sqlite_with_one_line(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(StorageError) as e:
        PostgresStorage(engine)
    assert "\n" not in str(e.value) and "storage_backend=postgresql" in str(e.value)
    settings = HubSettings(data_dir=tmp_path / "d", storage_backend="postgresql", mqtt_enabled=False)
    for _ in range(2):  # the refusal gives the data dir back: the second try meets the same line, not "in use"
        with pytest.raises(StorageError, match="but the database is sqlite"):
            Hub(settings=settings)
    run = CliRunner().invoke(hub_cli, ["serve", "--data-dir", str(tmp_path / "d")],
                             env={"EDGEFLEET_HUB_STORAGE_BACKEND": "postgresql"})  # fmt: skip
    assert run.exit_code == 1 and run.output.count("\n") == 1 and "but the database is sqlite" in run.output, run.output


@pytest.mark.postgres
def test_tuf_repository_on_postgresql_and_a_replica_with_the_keys(tmp_path: Path, pg: Engine, pg_url: str) -> None:
    repo = TufRepository.open_or_create(tmp_path / "a" / "tuf", storage=PostgresStorage(pg))
    assert sorted(p.name for p in (tmp_path / "a" / "tuf").iterdir()) == ["keys", "publish.lock"]  # no files
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * MB + 5))
    version = repo.add_targets({"models/m/1/p/manifest.json": b'{"m": 1}', "models/m/1/p/big.bin": big})
    assert repo.load("targets").signed.version == version
    assert repo.storage.read_bytes(repo.target_key("models/m/1/p/big.bin")) == big.read_bytes()
    with pytest.raises(TufRepositoryError, match="keeps no files"):
        repo.target_file("models/m/1/p/big.bin")

    # Replica B: its own data dir, another engine; without the keys it refuses, with a copy it signs.
    other = make_engine(pg_url)
    try:
        b_store = PostgresStorage(other)
        with pytest.raises(TufRepositoryError, match="every replica needs the repository's keys"):
            TufRepository.open_or_create(tmp_path / "b" / "tuf", storage=b_store)
        (tmp_path / "b" / "tuf").mkdir(parents=True, exist_ok=True)
        for pem in (tmp_path / "a" / "tuf" / "keys").iterdir():
            (tmp_path / "b" / "tuf" / "keys").mkdir(mode=0o700, exist_ok=True)
            (tmp_path / "b" / "tuf" / "keys" / pem.name).write_bytes(pem.read_bytes())
        b = TufRepository.open_or_create(tmp_path / "b" / "tuf", storage=b_store)
        assert b.targets().keys() == repo.targets().keys() and b.root_bytes() == repo.root_bytes()
        assert b.refresh_timestamp() == repo.load("timestamp").signed.version  # B signs, A reads it
    finally:
        other.dispose()

    old = tmp_path / "old-metadata"
    repo.copy_metadata(old)
    repo.add_targets({"models/m/2/p/manifest.json": b'{"m": 2}'})
    repo.restore_metadata(old)  # the helpers the refusal tests use work on any backend
    assert "models/m/2/p/manifest.json" not in repo.targets()


@pytest.mark.postgres
def test_keys_without_metadata_are_never_overwritten(tmp_path: Path, pg: Engine) -> None:
    """A data dir whose keys belong to another database: refuse, rather than make new keys over them."""
    TufRepository.create(tmp_path / "tuf")  # a directory-backend repository: keys + files
    keys = {p.name: p.read_bytes() for p in (tmp_path / "tuf" / "keys").iterdir()}
    with pytest.raises(TufRepositoryError, match="holds signing keys but PostgreSQL"):
        TufRepository.open_or_create(tmp_path / "tuf", storage=PostgresStorage(pg))
    assert {p.name: p.read_bytes() for p in (tmp_path / "tuf" / "keys").iterdir()} == keys


@pytest.mark.postgres
def test_hub_commands_on_the_postgresql_backend(tmp_path: Path, pg_url: str) -> None:
    """init (migrates a new database), sign-root, rotate-keys and backup work on metadata that is not on disk."""
    env = {"EDGEFLEET_HUB_STORAGE_BACKEND": "postgresql", "EDGEFLEET_HUB_DATABASE_URL": pg_url}
    data = str(tmp_path / "d")

    def run(*args: str) -> str:
        result = CliRunner().invoke(hub_cli, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    assert "keys in" in run("init", "--data-dir", data)
    assert "signed 2.root.json" in run("sign-root", "--data-dir", data)
    out = run("rotate-keys", "--role", "timestamp", "--data-dir", data)
    assert "3.root.json" in out and "copy" in out and "every other replica" in out
    assert "root v3" in run("backup", str(tmp_path / "b.tgz"), "--data-dir", data)
    assert sorted(p.name for p in (tmp_path / "d" / "tuf").iterdir()) == ["keys", "publish.lock"]
    engine = make_engine(pg_url)
    try:
        repo = TufRepository(tmp_path / "d" / "tuf", storage=PostgresStorage(engine))
        assert repo.load("root").signed.version == 3 and repo.storage.exists("metadata/3.root.json")
    finally:
        engine.dispose()


# ---- the hub serving from each backend: same answers ---------------------------------------------
@pytest.fixture(params=["directory", pytest.param("postgresql", marks=pytest.mark.postgres)])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The hub app on SQLite + the directory backend, or on PostgreSQL + the postgresql backend."""
    if request.param == "directory":
        settings = HubSettings(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, mqtt_enabled=False)
    else:
        settings = HubSettings(data_dir=tmp_path / "data", database_url=request.getfixturevalue("pg_url"),
                               storage_backend="postgresql", admin_token=ADMIN_TOKEN, mqtt_enabled=False)  # fmt: skip
    with TestClient(create_app(settings, background=False)) as client:
        yield client


def _push(post: object, out: Path, version: int, payload: bytes) -> None:
    folder = write_folder(out / f"out-{version}", "digits", version, [PI], payload=payload)
    r = post("/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(folder))}, headers=ADMIN)  # type: ignore[operator]
    assert r.status_code == 201, r.text


def test_both_backends_answer_range_requests_alike(served: TestClient, tmp_path: Path) -> None:
    payload = os.urandom(2 * MB + 77)  # above the PostgreSQL backend's 1 MiB chunk
    _push(served.post, tmp_path, 1, payload)
    hub: Hub = served.app.state.hub  # type: ignore[attr-defined]
    info = hub.repo.targets()[f"models/digits/1/{PI}/model.tflite"]
    sha = info.hashes["sha256"]
    artifact = payload + PI.encode() + b"1"
    url = f"{TUF_TARGETS_PATH}models/digits/1/{PI}/{sha}.model.tflite"
    size = len(artifact)

    full = served.get(url, headers=ADMIN)
    assert full.status_code == 200 and full.content == artifact
    assert full.headers["etag"] == f'"{sha}"' and full.headers["content-length"] == str(size)
    assert full.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert full.headers["accept-ranges"] == "bytes" and full.headers["content-type"] == "application/octet-stream"
    assert "last-modified" in full.headers
    cases = {"bytes=5-": (5, size), f"bytes={MB - 3}-{MB + 3}": (MB - 3, MB + 4), "bytes=-10": (size - 10, size),
             f"bytes=0-{size + 100}": (0, size)}  # fmt: skip
    for header, (start, end) in cases.items():
        part = served.get(url, headers={**ADMIN, "Range": header})
        assert part.status_code == 206 and part.content == artifact[start:end], header
        assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{size}", header
        assert part.headers["content-length"] == str(end - start)
    past = served.get(url, headers={**ADMIN, "Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert served.get(url, headers={**ADMIN, "Range": "lines=1-2"}).status_code == 400
    multi = served.get(url, headers={**ADMIN, "Range": "bytes=0-1,10-11"})
    assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert int(multi.headers["content-length"]) == len(multi.content)
    assert artifact[0:2] in multi.content and artifact[10:12] in multi.content
    stale = served.get(url, headers={**ADMIN, "Range": "bytes=0-9", "If-Range": '"0000"'})
    assert stale.status_code == 200 and stale.content == artifact  # the validator changed: the whole blob
    fresh = served.get(url, headers={**ADMIN, "Range": "bytes=0-9", "If-Range": f'"{sha}"'})
    assert fresh.status_code == 206 and fresh.content == artifact[:10]

    meta = served.get(f"{TUF_METADATA_PATH}timestamp.json", headers=ADMIN)
    assert meta.status_code == 200 and meta.headers["cache-control"] == "no-cache"
    assert meta.headers["content-type"] == "application/json" and "etag" in meta.headers
    assert meta.content == hub.repo.storage.read_bytes("metadata/timestamp.json")
    assert served.get(f"{TUF_METADATA_PATH}99.root.json", headers=ADMIN).status_code == 404
    unknown = f"{TUF_TARGETS_PATH}models/digits/1/{PI}/{'0' * 64}.model.tflite"
    assert served.get(unknown, headers=ADMIN).status_code == 404
    assert served.get(f"{TUF_TARGETS_PATH}models//digits/{sha}.model.tflite", headers=ADMIN).status_code == 404


# ---- a hub on the postgresql backend, for a device -------------------------------------------------
@pytest.fixture
def pg_hub(tmp_path: Path, pg_url: str) -> Iterator[tuple[str, HubSettings]]:
    port = free_port()
    settings = HubSettings(data_dir=tmp_path / "data", database_url=pg_url, storage_backend="postgresql",
                           admin_token=ADMIN_TOKEN, mqtt_enabled=False,
                           public_url=f"http://127.0.0.1:{port}")  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", settings
    server.should_exit = True
    thread.join(20)


def _enroll(token_from: str, enroll_at: str) -> EnrollResponse:
    tok = httpx.post(f"{token_from}/api/v1/enrollment-tokens", json={}, headers=ADMIN, timeout=30).json()["token"]
    r = httpx.post(f"{enroll_at}{ENROLL_PATH}", json={"enrollment_token": tok, "profile": PI}, timeout=30)
    assert r.status_code == 201, r.text
    return EnrollResponse.model_validate(r.json())


def _roll_out(url: str, version: int, device_id: str) -> None:
    body = {"model": "digits", "version": version, "target": {"devices": [device_id]}, "canary_percent": 0}
    r = httpx.post(f"{url}/api/v1/rollouts", json=body, headers=ADMIN, timeout=30)
    assert r.status_code == 201, r.text


def _updater(workdir: Path, url: str, enrolled: EnrollResponse) -> Updater:
    (workdir / "meta").mkdir(parents=True, exist_ok=True)
    (workdir / "dl").mkdir(parents=True, exist_ok=True)
    root = None if (workdir / "meta" / "root.json").exists() else enrolled.tuf_root.encode()
    return Updater(metadata_dir=str(workdir / "meta"), metadata_base_url=f"{url}{TUF_METADATA_PATH}",
                   target_dir=str(workdir / "dl"), target_base_url=f"{url}{TUF_TARGETS_PATH}",
                   fetcher=BearerFetcher(enrolled.device_token), bootstrap=root)  # fmt: skip


def _device_downloads(workdir: Path, url: str, enrolled: EnrollResponse, version: int) -> bytes:
    """What the agent does: TUF refresh, the verified manifest, the artifact by Range in two halves, verified."""
    updater = _updater(workdir, url, enrolled)
    updater.refresh()
    info = updater.get_targetinfo(manifest_target("digits", version, PI))
    assert info is not None
    manifest = Manifest.from_json(Path(updater.download_target(info)).read_bytes())
    target = updater.get_targetinfo(f"models/digits/{version}/{PI}/{manifest.artifact.file}")
    assert target is not None and target.hashes["sha256"] == manifest.artifact.sha256
    hashed = f"{manifest.artifact.sha256}.{manifest.artifact.file}"
    url_path = f"{url}{TUF_TARGETS_PATH}models/digits/{version}/{PI}/{hashed}"
    auth = {"Authorization": f"Bearer {enrolled.device_token}"}
    half = target.length // 2
    first = httpx.get(url_path, headers={**auth, "Range": f"bytes=0-{half - 1}"}, timeout=60)
    rest = httpx.get(url_path, headers={**auth, "Range": f"bytes={half}-"}, timeout=60)
    assert (first.status_code, rest.status_code) == (206, 206)
    assert rest.headers["content-range"] == f"bytes {half}-{target.length - 1}/{target.length}"
    part = workdir / "artifact.part"
    part.write_bytes(first.content + rest.content)
    assert updater.find_cached_target(target, str(part)) == str(part)  # python-tuf checks length and sha256
    return part.read_bytes()


@pytest.mark.postgres
@pytest.mark.integration
def test_a_device_updates_from_a_hub_on_the_postgresql_backend(pg_hub: tuple[str, HubSettings], tmp_path: Path) -> None:
    url, settings = pg_hub
    folder = write_folder(tmp_path / "out", "digits", 4, [PI], payload=os.urandom(3 * MB))
    r = httpx.post(f"{url}/api/v1/models", files={"archive": ("o.tgz", tar_gz(folder))}, headers=ADMIN, timeout=60)
    assert r.status_code == 201, r.text
    enrolled = _enroll(url, url)
    _roll_out(url, 4, enrolled.device_id)
    got = _device_downloads(tmp_path / "device", url, enrolled, 4)
    assert got == (folder / PI / "model.tflite").read_bytes()
    stranger = httpx.get(f"{url}{TUF_METADATA_PATH}timestamp.json", headers={"Authorization": "Bearer nope"})
    assert stranger.status_code == 401
    assert sorted(p.name for p in settings.tuf_dir.iterdir()) == ["keys", "publish.lock"]  # nothing else on disk


@pytest.mark.postgres
def test_backup_and_restore_through_the_postgresql_storage(tmp_path: Path, pg_url: str) -> None:
    src = HubSettings(data_dir=tmp_path / "a", database_url=pg_url, storage_backend="postgresql",
                      admin_token=ADMIN_TOKEN, mqtt_enabled=False)  # fmt: skip
    with TestClient(create_app(src, background=False)) as client:
        _push(client.post, tmp_path, 1, os.urandom(MB + 11))
        before = client.app.state.hub.repo  # type: ignore[attr-defined]
        artifact_key = before.target_key(f"models/digits/1/{PI}/model.tflite")
        artifact = before.storage.read_bytes(artifact_key)
        done = backup(src, tmp_path / "hub.tgz")
    assert done.targets == 2 and done.model_versions == 1
    for dest_url in pg_schema_url():  # into an empty schema and data dir, on the postgresql backend...
        dest = HubSettings(data_dir=tmp_path / "b", database_url=dest_url, storage_backend="postgresql")
        restored = restore(dest, tmp_path / "hub.tgz")
        assert restored.targets == 2 and restored.model_versions == 1
        assert sorted(p.name for p in dest.tuf_dir.iterdir()) == ["keys", "publish.lock"]
        engine = make_engine(dest_url)
        try:
            repo = TufRepository(dest.tuf_dir, storage=PostgresStorage(engine))
            assert repo.storage.read_bytes(artifact_key) == artifact
            assert repo.load("timestamp").signed.version == restored.version
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM blobs WHERE path LIKE 'targets/%'")).scalar() == 2
        finally:
            engine.dispose()
    local = HubSettings(data_dir=tmp_path / "c")  # ...and the same archive into the directory backend on SQLite
    restore(local, tmp_path / "hub.tgz")
    assert (local.tuf_dir / artifact_key).read_bytes() == artifact


# ---- replicas that share no directory --------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.integration
@pytest.mark.slow
def test_two_replicas_with_their_own_data_dirs_serve_one_repository(tmp_path: Path, pg_url: str,
                                                                    unique_root: str) -> None:  # fmt: skip
    cluster = Cluster(workdir=tmp_path, root=unique_root, db_url=pg_url, separate_data_dirs=True)
    cluster.start_broker(storage_backend="postgresql")
    try:
        cluster.start(2)
        a, b = cluster.replicas
        assert cluster.replica_data_dir(a) != cluster.replica_data_dir(b)
        assert cluster.push("digits", 1, [PI], replica=a).status_code == 201  # through A...
        enrolled = _enroll(b.url, b.url)  # ...a device of B's
        _roll_out(b.url, 1, enrolled.device_id)
        got = _device_downloads(tmp_path / "device", b.url, enrolled, 1)  # ...verifies and downloads through B
        assert got == (tmp_path / "out-digits-1" / PI / "model.tflite").read_bytes()

        assert cluster.push("digits", 2, [PI], replica=b).status_code == 201  # and the other way round
        other = _enroll(a.url, a.url)
        _roll_out(a.url, 2, other.device_id)
        got = _device_downloads(tmp_path / "other-device", a.url, other, 2)
        assert got == (tmp_path / "out-digits-2" / PI / "model.tflite").read_bytes()
        for replica in (a, b):
            tuf = cluster.replica_data_dir(replica) / "tuf"
            assert not (tuf / "metadata").exists() and not (tuf / "targets").exists(), replica.name
        assert "Traceback" not in cluster.logs()
    finally:
        cluster.stop()


def _tar(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, mode="w") as tar:  # uncompressed: 100 MB of random bytes would not shrink
        for p in sorted(folder.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(folder)), recursive=False)
    return dest


def _rss_peak_during(pid: int, work: threading.Thread) -> tuple[int, int]:
    """(RSS before, highest RSS seen) of process `pid` while `work` runs."""
    proc = psutil.Process(pid)
    before = peak = proc.memory_info().rss
    work.start()
    while work.is_alive():
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.01)
    return before, max(peak, proc.memory_info().rss)


@pytest.mark.postgres
@pytest.mark.integration
@pytest.mark.slow
def test_a_100_mb_artifact_streams_from_postgresql_in_little_memory(tmp_path: Path, pg_url: str, unique_root: str,
                                                                    record_property: object) -> None:  # fmt: skip
    cluster = Cluster(workdir=tmp_path, root=unique_root, db_url=pg_url)
    cluster.start_broker(storage_backend="postgresql")
    try:
        cluster.start(1)
        (replica,) = cluster.replicas
        folder = write_folder(tmp_path / "out", "big", 1, [PI], payload=os.urandom(100 * MB))
        artifact = folder / PI / "model.tflite"
        sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
        with _tar(folder, tmp_path / "o.tar").open("rb") as f:
            t0 = time.monotonic()
            r = httpx.post(f"{replica.url}/api/v1/models", files={"archive": ("o.tar", f)}, headers=ADMIN, timeout=600)
            push_s = time.monotonic() - t0
        assert r.status_code == 201, r.text
        url = f"{replica.url}{TUF_TARGETS_PATH}models/big/1/{PI}/{sha}.model.tflite"
        assert httpx.get(url, headers={**ADMIN, "Range": "bytes=0-1048575"}, timeout=60).status_code == 206  # warm up
        time.sleep(0.5)

        result: dict[str, object] = {}
        full = threading.Thread(target=lambda: result.update(full=_download(url, {})))
        before, peak = _rss_peak_during(_pid(replica), full)
        digest, size, seconds = result["full"]  # type: ignore[misc]
        assert (digest, size) == (sha, artifact.stat().st_size)
        ranged = threading.Thread(target=lambda: result.update(part=_download(url, {"Range": "bytes=40000000-"})))
        _, peak_range = _rss_peak_during(_pid(replica), ranged)
        assert result["part"][1] == artifact.stat().st_size - 40_000_000  # type: ignore[index]
        growth = (max(peak, peak_range) - before) / MB
        figures = {"push_s": round(push_s, 2), "download_s": round(seconds, 2),
                   "download_mb_per_s": round(size / MB / seconds, 1), "rss_before_mb": round(before / MB, 1),
                   "rss_peak_mb": round(max(peak, peak_range) / MB, 1), "rss_growth_mb": round(growth, 1)}  # fmt: skip
        record_property("figures", figures)  # type: ignore[operator]
        log.warning("100 MB artifact from PostgreSQL: %s", figures)
        assert growth < 50, figures
    finally:
        cluster.stop()


def _pid(replica: Replica) -> int:
    assert replica.proc is not None
    return replica.proc.pid


def _download(url: str, headers: dict[str, str]) -> tuple[str, int, float]:
    digest, size, t0 = hashlib.sha256(), 0, time.monotonic()
    with httpx.stream("GET", url, headers={**ADMIN, **headers}, timeout=120) as r:
        assert r.status_code in (200, 206), r.status_code
        for chunk in r.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size, time.monotonic() - t0


# ---- helpers ---------------------------------------------------------------------------------------
def _objects(storage: Storage) -> dict[str, int]:
    """PostgreSQL: key -> large object oid, as the blobs table names them (nothing for the directory backend)."""
    if not isinstance(storage, PostgresStorage):
        return {}
    with storage.engine.connect() as conn:
        return {str(r[0]): int(r[1]) for r in conn.execute(text("SELECT path, oid FROM blobs"))}


def _alive(storage: Storage, oids: set[int]) -> set[int]:
    """Which of `oids` still exist as large objects."""
    if not isinstance(storage, PostgresStorage) or not oids:
        return set()
    with storage.engine.connect() as conn:
        rows = conn.execute(text("SELECT oid FROM pg_largeobject_metadata WHERE oid = ANY(:o)"), {"o": list(oids)})
        return {int(r[0]) for r in rows}
