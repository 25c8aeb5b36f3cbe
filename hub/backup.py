"""`hub backup` / `hub restore`: the whole hub in one archive, taken while it serves; restored so devices go on.

The archive is a gzip'd tar, written to a temporary file beside FILE, fsynced and renamed, mode 0600: it holds
the online signing keys (and the root key if keys/root.pem is there), the admin token and the token hashes.

    database/hub.db          a consistent SQLite copy of the database (hub/backup_db.py says how, per backend)
    data/admin_token, data/mqtt_hub_password
    tuf/keys/<role>.pem      the keys in keys/ (each checked against root: no half-done rotation)
    tuf/metadata/            every N.root.json and root.json; timestamp.json with the snapshot and targets it names
    tuf/targets/             every signed target (the models' manifests and artifacts), checked against its hash
    edgefleet-backup.json    last: format, source, TUF versions, size and sha256 of every entry above

Consistency. A push (hub/registry.py push_folder) inserts its rows, writes its target files, signs targets ->
snapshot -> timestamp, and only then commits. So a row in any database snapshot was signed before the
snapshot was taken. The backup takes the database snapshot first, then reads the TUF metadata (under the
repository's publish lock), then the target files that metadata names: targets are only ever added, so
everything a row names is in metadata read later, and the archive holds its file. Pushes that commit after
the snapshot can leave signed targets no row names: harmless, no device is ever told to fetch them. The
backup checks both (every row's manifest and artifact signed with the row's sha256; every file its signed
hash) before it writes anything, so a restored hub never names a file the archive lacks.

Storage. Metadata and targets are read through the hub's storage (hub/storage/: files under tuf/, or PostgreSQL
large objects) and restored through it; the archive's layout is the same either way, so a backup restores into
either backend. The keys are always files under tuf/keys/.

Versions on restore. Devices refuse a timestamp, snapshot or targets version lower than one they have seen
(a rollback attack), and they may have seen versions the original signed after the backup. Restore re-signs
the three at one version: max(archived version + 1, microseconds since the epoch now). Why that is above
anything the original ever signed: a fresh repository starts at 1 and each publish adds 1; a restored one
starts at the microsecond clock, and publishing (sign + fsync) never comes close to once per microsecond, so
every version ever signed is below the microsecond clock of the moment after it. Needed: the restoring host's
clock not behind the original's (NTP; devices need right clocks for expiry anyway). The numbers stay below
2**53 (exact even as JSON doubles) until the year 2255. Root is not re-signed (it needs the root key, and
its versions must chain by +1): restore a backup taken after the last key rotation.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp  # type: ignore[attr-defined]

from hub import backup_db, datadir
from hub.backup_db import BackupError
from hub.errors import HubError
from hub.settings import HubSettings
from hub.storage import DirectoryStorage, Storage, opened
from hub.tuf_keys import fsync_dir, load_signer, signer_from_pem
from hub.tuf_repo import ROLES, Clock, TufRepository, utcnow

FORMAT = "edgefleet-hub-backup/1"
MANIFEST = "edgefleet-backup.json"
SECRETS = ("admin_token", "mqtt_hub_password")
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
RESTORE_DIR_PREFIX = "edgefleet-restore-"
PRIVATE = ("database/", "data/", "tuf/keys/")  # restored 0600; metadata and targets 0644 as the hub writes them
IGNORED_IN_DATA_DIR = {"hub.lock"}  # the SQLite data dir lock (hub/cluster/dirlock.py): not data
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHUNK = 1 << 20


@dataclass(frozen=True)
class BackupSummary:
    """What one archive holds."""

    path: Path
    size: int
    database: str
    model_versions: int
    devices: int
    targets: int
    root_version: int
    timestamp_version: int
    keys: list[str]


@dataclass(frozen=True)
class RestoreSummary:
    """What a restore put where, and the version devices will see next."""

    data_dir: Path
    database: str
    model_versions: int
    devices: int
    targets: int
    version: int


@dataclass
class _TufCopy:
    metadata: dict[str, bytes]  # file name in metadata/ -> bytes
    keys: dict[str, bytes]  # file name in keys/ -> PEM
    targets: dict[str, TargetFile]
    root_version: int
    timestamp_version: int


def version_floor(clock: Clock = utcnow) -> int:
    """Microseconds since the epoch: above every version a hub has signed before now (module docstring)."""
    return (clock() - EPOCH) // timedelta(microseconds=1)


# ---- backup ----------------------------------------------------------------------------------------
def backup(settings: HubSettings, dest: Path, *, clock: Clock = utcnow) -> BackupSummary:
    """Archive the hub behind `settings` to `dest` (atomically, 0600) while it keeps serving."""
    dest = dest.resolve()
    if dest.is_dir():
        raise BackupError(f"{dest} is a directory; give the archive's file name")
    if not dest.parent.is_dir():
        raise BackupError(f"no directory {dest.parent} to write the archive in")
    with opened(settings) as storage:
        return _backup(settings, dest, TufRepository(settings.tuf_dir, storage=storage), clock)


def _backup(settings: HubSettings, dest: Path, repo: TufRepository, clock: Clock) -> BackupSummary:
    if not repo.storage.exists("metadata/timestamp.json"):
        where = settings.tuf_dir if repo.storage.kind == DirectoryStorage.kind else repo.storage.describe()
        raise BackupError(f"no TUF repository in {where}: is {settings.data_dir} a hub data dir?")
    with tempfile.TemporaryDirectory(prefix=".edgefleet-backup-", dir=dest.parent) as work:
        db_file = Path(work) / "hub.db"
        database = backup_db.snapshot(settings.resolved_database_url(), db_file)  # first the database...
        tuf = _copy_tuf(repo)  # ...then the metadata: it names everything the snapshot's rows name
        for what, target_path, sha256 in backup_db.model_targets(db_file):
            info = tuf.targets.get(target_path)
            if info is None or info.hashes.get("sha256") != sha256:
                raise BackupError(f"{what}: {target_path} is not signed with the sha256 its row records; "
                                  "the database and the TUF repository disagree, no archive written")  # fmt: skip
        counts = backup_db.counts(db_file)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "created_at": clock().isoformat(),
            "database": database,
            "migration": backup_db.file_revision(db_file),
            "tuf": {"root": tuf.root_version, "timestamp": tuf.timestamp_version},
            "counts": counts | {"targets": len(tuf.targets)},
            "files": {},
        }
        size = _write_archive(dest, lambda tar: _add_all(tar, manifest, db_file, settings, repo, tuf))
    return BackupSummary(path=dest, size=size, database=database, model_versions=counts["model_versions"],
                         devices=counts["devices"], targets=len(tuf.targets), root_version=tuf.root_version,
                         timestamp_version=tuf.timestamp_version, keys=sorted(k[:-4] for k in tuf.keys))  # fmt: skip


def _copy_tuf(repo: TufRepository) -> _TufCopy:
    """The current metadata chain, every root, and the keys, read together under the publish lock."""
    meta: dict[str, bytes] = {}
    storage = repo.storage
    with repo.locked():
        meta["timestamp.json"] = storage.read_bytes("metadata/timestamp.json")
        timestamp: Metadata[Timestamp] = Metadata.from_bytes(meta["timestamp.json"])
        snap_name = f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
        meta[snap_name] = storage.read_bytes(f"metadata/{snap_name}")
        snapshot: Metadata[Snapshot] = Metadata.from_bytes(meta[snap_name])
        targets_name = f"{snapshot.signed.meta['targets.json'].version}.targets.json"
        meta[targets_name] = storage.read_bytes(f"metadata/{targets_name}")
        for key in storage.list("metadata/"):
            name = key.removeprefix("metadata/")
            if name.endswith(".root.json") and "/" not in name:
                meta[name] = storage.read_bytes(key)
        meta["root.json"] = storage.read_bytes("metadata/root.json")
        keys = {f"{role}.pem": (repo.keys_dir / f"{role}.pem").read_bytes()
                for role in ROLES if (repo.keys_dir / f"{role}.pem").is_file()}  # fmt: skip
    root: Root = Metadata.from_bytes(meta["root.json"]).signed
    for role in ONLINE_ROLES:
        if f"{role}.pem" not in keys:
            raise BackupError(f"{repo.keys_dir / (role + '.pem')} is missing: a restored hub could not sign {role}")
    for name, pem in keys.items():
        role = name.removesuffix(".pem")
        if signer_from_pem(pem, source=name).public_key.keyid not in root.roles[role].keyids:
            raise BackupError(f"keys/{name} is not the key root.json trusts for {role} (an interrupted "
                              "rotate-keys? run it again, then back up)")  # fmt: skip
    targets: Metadata[Targets] = Metadata.from_bytes(meta[targets_name])
    return _TufCopy(metadata=meta, keys=keys, targets=dict(targets.signed.targets), root_version=root.version,
                    timestamp_version=timestamp.signed.version)  # fmt: skip


def _add_all(tar: tarfile.TarFile, manifest: dict[str, Any], db_file: Path, settings: HubSettings,
             repo: TufRepository, tuf: _TufCopy) -> None:  # fmt: skip
    files: dict[str, dict[str, Any]] = manifest["files"]
    with db_file.open("rb") as f:
        files["database/hub.db"] = _add(tar, "database/hub.db", f, db_file.stat().st_size)
    for name in SECRETS:
        path = settings.data_dir / name
        if path.is_file():
            files[f"data/{name}"] = _add_bytes(tar, f"data/{name}", path.read_bytes())
    for name, pem in sorted(tuf.keys.items()):
        files[f"tuf/keys/{name}"] = _add_bytes(tar, f"tuf/keys/{name}", pem)
    for name, data in sorted(tuf.metadata.items()):
        files[f"tuf/metadata/{name}"] = _add_bytes(tar, f"tuf/metadata/{name}", data)
    for target_path, info in sorted(tuf.targets.items()):
        hashed = _hashed_name(target_path, info.hashes["sha256"])
        key = f"targets/{hashed}"
        where = repo.storage.local_path(key) or f"{key} in {repo.storage.describe()}"
        try:
            with repo.storage.open(key) as blob:
                size = blob.info.size
                entry = _add(tar, f"tuf/{key}", blob.file, info.length)
        except (OSError, tarfile.TarError, HubError) as e:
            raise BackupError(f"target {target_path}: cannot read {where}: {e}") from e
        if entry["sha256"] != info.hashes["sha256"] or size != info.length:
            raise BackupError(f"target {target_path}: {where} does not match its signed length and sha256 "
                              "(tampered or damaged); no archive written")  # fmt: skip
        files[f"tuf/{key}"] = entry
    _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())


class _Hashing:
    """A reader that hashes what passes through it."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner, self.digest = inner, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.inner.read(size)
        self.digest.update(chunk)
        return chunk


def _add(tar: tarfile.TarFile, name: str, fileobj: IO[bytes], size: int) -> dict[str, Any]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(datetime.now(UTC).timestamp())
    reader = _Hashing(fileobj)
    tar.addfile(info, reader)
    return {"size": size, "sha256": reader.digest.hexdigest()}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> dict[str, Any]:
    return _add(tar, name, io.BytesIO(data), len(data))


def _write_archive(dest: Path, fill: Callable[[tarfile.TarFile], None]) -> int:
    """Write the archive to a 0600 temp file beside `dest`, fsync, rename; returns its size."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w:gz", compresslevel=1) as tar:
                fill(tar)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return dest.stat().st_size


def _hashed_name(target_path: str, sha256: str) -> str:
    directory, _, name = target_path.rpartition("/")
    return f"{directory}/{sha256}.{name}" if directory else f"{sha256}.{name}"


# ---- restore ---------------------------------------------------------------------------------------
def restore(settings: HubSettings, archive: Path, *, force: bool = False, clock: Clock = utcnow) -> RestoreSummary:
    """Restore an archive into the data dir and database of `settings` (empty ones unless `force`)."""
    if not archive.is_file():
        raise BackupError(f"no archive at {archive}")
    data_dir, url = settings.data_dir, settings.resolved_database_url()
    _require_free(data_dir, url, force=force)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    work = Path(tempfile.mkdtemp(prefix=RESTORE_DIR_PREFIX, dir=data_dir))
    try:
        manifest = _extract(archive, work)
        staged = TufRepository(work / "tuf")
        _check_tuf(staged)
        db_file = work / "database" / "hub.db"
        backup_db.upgrade_file(db_file)
        if force:
            _clear_data_dir(data_dir, keep=work)
        backup_db.restore(db_file, url)
        with opened(settings) as storage:
            _restore_tuf(work / "tuf", settings.tuf_dir, storage, force=force)
            for name in SECRETS:
                if (work / "data" / name).is_file():
                    os.replace(work / "data" / name, data_dir / name)
            repo = TufRepository(settings.tuf_dir, clock=clock, storage=storage)
            version = repo.jump_versions(version_floor(clock))
        datadir.secure(data_dir, sqlite_here=settings.database_url is None)
        counts = manifest["counts"]
        return RestoreSummary(data_dir=data_dir.resolve(), database=backup_db.describe(url),
                              model_versions=counts["model_versions"], devices=counts["devices"],
                              targets=counts["targets"], version=version)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _restore_tuf(staged: Path, tuf_dir: Path, storage: Storage, *, force: bool) -> None:
    """Put the checked, staged repository in place: keys under tuf_dir, metadata and targets into the storage."""
    if isinstance(storage, DirectoryStorage) and storage.root.resolve() == tuf_dir.resolve():
        os.replace(staged, tuf_dir)  # the storage is tuf_dir itself: one rename, as it always was
        return
    if force:
        for key in storage.list("metadata/") + storage.list("targets/"):
            storage.delete(key)
    tuf_dir.mkdir(parents=True, exist_ok=True)
    if (staged / "keys").is_dir():
        shutil.rmtree(tuf_dir / "keys", ignore_errors=True)
        os.replace(staged / "keys", tuf_dir / "keys")
    staged_files = DirectoryStorage(staged)
    for key in staged_files.list("targets/"):  # targets first, then metadata with the timestamp last
        storage.write_file(key, staged / key)
    for key in sorted(staged_files.list("metadata/"), key=lambda k: k == "metadata/timestamp.json"):
        storage.write_file(key, staged / key)


def _require_free(data_dir: Path, url: str, *, force: bool) -> None:
    """Refuse a data dir or database that holds something (unless `force`), and always a serving hub's."""
    lock = data_dir / "hub.lock"
    if lock.exists() and _is_locked(lock):
        raise BackupError(f"a hub is serving {data_dir.resolve()}: stop it before restoring into it")
    if force:
        return
    entries = sorted(p.name for p in data_dir.iterdir() if p.name not in IGNORED_IN_DATA_DIR) \
        if data_dir.is_dir() else []  # fmt: skip
    if entries:
        raise BackupError(f"data dir {data_dir.resolve()} is not empty ({', '.join(entries[:3])}"
                          f"{', ...' if len(entries) > 3 else ''}): restore into an empty one, or --force "
                          "to replace it")  # fmt: skip
    filled = backup_db.first_filled_table(url)
    if filled is not None:
        raise BackupError(f"database {backup_db.describe(url)} is not empty (table {filled} has rows): restore "
                          "into an empty one, or --force to replace it")  # fmt: skip


def _is_locked(lock: Path) -> bool:
    import fcntl

    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock if we got it
    return False


def _clear_data_dir(data_dir: Path, *, keep: Path) -> None:
    """--force: remove what a restore replaces (TUF repository, secrets, SQLite files, old restore dirs)."""
    for path in data_dir.iterdir():
        if path == keep or path.name in IGNORED_IN_DATA_DIR:
            continue
        if path.name in ("tuf", *SECRETS, *datadir.SECRET_FILES) or path.name.startswith(RESTORE_DIR_PREFIX):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _extract(archive: Path, dest: Path) -> dict[str, Any]:
    """Unpack the archive (regular files under known folders only), checking every entry against the manifest."""
    seen: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                name = _safe_name(member)
                if member.isdir():
                    continue
                source = tar.extractfile(member)
                assert source is not None
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with target.open("wb") as out:
                    while chunk := source.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                os.chmod(target, 0o600 if name.startswith(PRIVATE) else 0o644)
                seen[name] = {"size": member.size, "sha256": digest.hexdigest()}
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BackupError(f"{archive} is not a readable hub backup: {e}") from e
    if (dest / "tuf" / "keys").is_dir():
        os.chmod(dest / "tuf" / "keys", 0o700)
    try:
        manifest: dict[str, Any] = json.loads((dest / MANIFEST).read_bytes())
    except (OSError, ValueError) as e:
        raise BackupError(f"{archive} has no readable {MANIFEST}: not a hub backup") from e
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} is format {manifest.get('format')!r}; this hub reads {FORMAT}")
    seen.pop(MANIFEST)
    if seen != manifest["files"]:
        wrong = sorted(n for n in set(seen) | set(manifest["files"]) if seen.get(n) != manifest["files"].get(n))
        raise BackupError(f"{archive} is damaged: {wrong[0]} does not match the archive's manifest")
    return manifest


def _safe_name(member: tarfile.TarInfo) -> str:
    parts = member.name.split("/")
    top = parts[0]
    if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts \
            or top not in ("database", "data", "tuf", MANIFEST):  # fmt: skip
        raise BackupError(f"unexpected entry {member.name!r} in the archive: not a hub backup")
    return member.name


def _check_tuf(repo: TufRepository) -> None:
    """The archived metadata verifies under its root, and the online keys are the ones root trusts."""
    try:
        root_md: Metadata[Root] = repo.load("root")
        root = root_md.signed
        root.verify_delegate("root", root_md.signed_bytes, root_md.signatures)
        for role in ONLINE_ROLES:
            md = repo.load(role)
            root.verify_delegate(role, md.signed_bytes, md.signatures)
            if load_signer(repo.keys_dir / f"{role}.pem", role).public_key.keyid not in root.roles[role].keyids:
                raise BackupError(f"the archive's {role} key is not the one its root trusts")
    except (OSError, tuf_errors.RepositoryError, ValueError, HubError) as e:
        if isinstance(e, BackupError):
            raise
        raise BackupError(f"the archive's TUF repository does not verify: {e}") from e
    for target_path, info in repo.targets().items():
        stored = repo.storage.stat("targets/" + _hashed_name(target_path, info.hashes["sha256"]))
        if stored is None or stored.size != info.length:
            raise BackupError(f"the archive lacks the file of signed target {target_path}")
