"""The hub's TUF repository: signed root/targets/snapshot/timestamp metadata and hash-named targets.

Layout under `path` (metadata/ and targets/ are blob keys in the storage, hub/storage/; with the default
`directory` backend they are these very files; the hub serves them at /tuf/metadata/ and /tuf/targets/):

    keys/{root,targets,snapshot,timestamp}.pem   ed25519 private keys (0600); root.pem may live offline
    keys/<role>.pem.next                         a rotation's new key until its root is published (tuf_keys.py)
    publish.lock                                 flock'ed by every writer, in whatever process
    metadata/N.root.json, metadata/root.json     every root version, and the newest one
    metadata/V.targets.json, V.snapshot.json     consistent snapshots (old versions are kept)
    metadata/timestamp.json                      the only unversioned file clients poll
    targets/<dir>/<sha256>.<name>                content-addressed targets, never overwritten

Publishing order is targets -> snapshot -> timestamp, timestamp last; every blob is written atomically (a temp
file `os.replace`d, or one PostgreSQL transaction), so a crash never leaves a half-written document being served.
Every write holds `locked()`: a thread lock, an flock on `publish.lock` (the keys are local files) and the
storage's own lock (a no-op for the directory, whose publish.lock it is; a cluster-wide advisory lock for
PostgreSQL, whose writers share no directory), so the serving hub, `hub sign-root`, `hub rotate-keys` and `hub
backup` (other processes, other hosts) never interleave a publish or read keys mid-rotation.
Tests (the agent's too) use `create()` with short expiries and `clock=` to make expired metadata,
`copy_metadata()`/`restore_metadata()` to replay an older version, and `target_file()` to tamper.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from hub.errors import TufRepositoryError
from hub.storage.base import Storage
from hub.storage.directory import DirectoryStorage, atomic_write
from hub.tuf_keys import create_key_file, fsync_dir, load_signer

ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
LOCK_FILE = "publish.lock"
# What re-signing a role's metadata drags along: the roles that name its version, down to the timestamp.
CHAIN = {"root": [], "targets": ["targets", "snapshot", "timestamp"], "snapshot": ["snapshot", "timestamp"],
         "timestamp": ["timestamp"]}  # fmt: skip
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The wall clock, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata is valid after signing; re-signed when half of it is left."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=30)
    timestamp: timedelta = timedelta(days=1)

    def of(self, role: str) -> timedelta:
        """Lifetime of one role."""
        value: timedelta = getattr(self, role)
        return value


@dataclass(frozen=True)
class Rotation:
    """What `rotate_key` did: the new root version, the role's new key id, the metadata re-signed with it."""

    role: str
    root_version: int
    new_keyid: str
    old_keyids: list[str]
    key_file: Path
    resigned: list[str] = field(default_factory=list)


class TufRepository:
    """A single-signer-per-role TUF repository (keys under `path`, blobs in `storage`), safe to share by threads."""

    def __init__(self, path: Path, *, expiry: Expiry | None = None, clock: Clock = utcnow,
                 storage: Storage | None = None) -> None:  # fmt: skip
        self.path = Path(path)
        self.storage: Storage = storage if storage is not None else DirectoryStorage(self.path)
        self.expiry = expiry or Expiry()
        self.clock = clock
        self._lock = threading.RLock()
        self._lock_depth = 0
        self._held: ExitStack | None = None
        self._serializer = JSONSerializer(compact=False)

    # ---- paths --------------------------------------------------------------------------------
    @property
    def keys_dir(self) -> Path:
        return self.path / "keys"

    @property
    def metadata_dir(self) -> Path:
        return self.path / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.path / "targets"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's publish lock (re-entrant in this thread, exclusive across processes and hosts)."""
        with self._lock:
            if self._lock_depth == 0:
                held = ExitStack()
                try:
                    held.enter_context(self._flock())  # first the keys' directory, then the storage: one order
                    held.enter_context(self.storage.lock())
                except BaseException:
                    held.close()
                    raise
                self._held = held
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._held is not None:
                    self._held.close()
                    self._held = None

    @contextmanager
    def _flock(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    # ---- creation -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, *, expiry: Expiry | None = None, clock: Clock = utcnow,
               storage: Storage | None = None) -> TufRepository:  # fmt: skip
        """Generate keys and sign version 1 of every role; refuses a directory that already has one."""
        repo = cls(path, expiry=expiry, clock=clock, storage=storage)
        if repo.storage.exists("metadata/1.root.json"):
            where = repo.path if repo.storage.kind == DirectoryStorage.kind else repo.storage.describe()
            raise TufRepositoryError(f"a TUF repository already exists at {where}")
        if repo.storage.kind != DirectoryStorage.kind and any(repo.keys_dir.glob("*.pem")):
            # Metadata elsewhere than the keys: new keys here would orphan the ones other replicas were given.
            raise TufRepositoryError(
                f"{repo.keys_dir} holds signing keys but {repo.storage.describe()} has no TUF metadata: this data "
                "dir belongs to another database or storage backend (move it with `hub backup` + `hub restore`), "
                "or remove the keys to start a new repository"
            )
        repo.keys_dir.mkdir(parents=True, exist_ok=True)
        for folder in ("metadata", "targets"):  # the directory backend's layout exists from the start, as always
            local = repo.storage.local_path(folder)
            if local is not None:
                local.mkdir(parents=True, exist_ok=True)
        os.chmod(repo.keys_dir, 0o700)
        signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
        for role, signer in signers.items():
            atomic_write(repo.keys_dir / f"{role}.pem", signer.private_bytes, mode=0o600)
        root = Root(expires=repo._expires("root"), consistent_snapshot=True)
        for role, signer in signers.items():
            root.add_key(signer.public_key, role)
        with repo.locked():
            repo._publish("root", root)
            repo._publish("targets", Targets(expires=repo._expires("targets")))
            snapshot = Snapshot(expires=repo._expires("snapshot"))
            repo._publish("snapshot", snapshot)
            repo._publish("timestamp", Timestamp(expires=repo._expires("timestamp")))
        return repo

    @classmethod
    def open_or_create(cls, path: Path, *, expiry: Expiry | None = None, clock: Clock = utcnow,
                       storage: Storage | None = None) -> TufRepository:  # fmt: skip
        """Open the repository at `path`, creating it first if there is none."""
        repo = cls(path, expiry=expiry, clock=clock, storage=storage)
        if not repo.storage.exists("metadata/1.root.json"):
            return cls.create(path, expiry=expiry, clock=clock, storage=storage)
        if repo.storage.kind != DirectoryStorage.kind:
            repo._require_online_keys()
        if any(repo.keys_dir.glob("*.pem.next")):
            with repo.locked():
                repo._finish_interrupted_rotations()
        return repo

    # ---- reading ------------------------------------------------------------------------------
    def root_bytes(self) -> bytes:
        """The newest root.json exactly as served (what a device pins at enrollment)."""
        return self.storage.read_bytes("metadata/root.json")

    def load(self, role: str) -> Metadata[Any]:
        """The current signed metadata of one role (timestamp -> snapshot -> targets chain)."""
        if role == "root":
            return self._read("root.json")
        if role == "timestamp":
            return self._read("timestamp.json")
        ts: Metadata[Timestamp] = self.load("timestamp")
        snap_name = f"{ts.signed.snapshot_meta.version}.snapshot.json"
        if role == "snapshot":
            return self._read(snap_name)
        snap: Metadata[Snapshot] = self._read(snap_name)
        return self._read(f"{snap.signed.meta['targets.json'].version}.targets.json")

    def _read(self, name: str) -> Metadata[Any]:
        return Metadata.from_bytes(self.storage.read_bytes(f"metadata/{name}"))

    def targets(self) -> dict[str, TargetFile]:
        """Every published target path and its signed length/hashes."""
        signed: Targets = self.load("targets").signed
        return dict(signed.targets)

    def target_key(self, target_path: str) -> str:
        """The storage key of a published target's hash-named blob."""
        info = self.targets().get(target_path)
        if info is None:
            raise TufRepositoryError(f"no such target: {target_path}")
        return "targets/" + _hashed_name(target_path, info.hashes["sha256"])

    def target_file(self, target_path: str) -> Path:
        """The on-disk, hash-named file of a published target (directory backend; tests tamper with it)."""
        key = self.target_key(target_path)
        path = self.storage.local_path(key)
        if path is None:
            raise TufRepositoryError(f"{self.storage.describe()} keeps no files: {key} is not on disk")
        return path

    # ---- publishing ---------------------------------------------------------------------------
    def add_targets(self, files: Mapping[str, bytes | Path]) -> int:
        """Publish targets (bytes or a file to copy) and re-sign targets/snapshot/timestamp; new version."""
        with self.locked():
            targets: Metadata[Targets] = self.load("targets")
            for target_path, content in files.items():
                _check_target_path(target_path)
                if isinstance(content, Path):
                    info = TargetFile.from_file(target_path, str(content), ["sha256"])
                else:
                    info = TargetFile.from_data(target_path, content, ["sha256"])
                key = "targets/" + _hashed_name(target_path, info.hashes["sha256"])
                if not self.storage.exists(key):
                    if isinstance(content, Path):
                        self.storage.write_file(key, content)
                    else:
                        self.storage.write_bytes(key, content)
                targets.signed.targets[target_path] = info
            return self._republish_targets(targets.signed)

    def refresh_timestamp(self, *, expires: datetime | None = None) -> int:
        """Re-sign the timestamp with a new version (and `expires`, default now + lifetime)."""
        with self.locked():
            ts: Timestamp = self.load("timestamp").signed
            ts.version += 1
            ts.expires = expires or self._expires("timestamp")
            self._publish("timestamp", ts)
            return ts.version

    def refresh_expiring(self) -> list[str]:
        """Re-sign every online role with less than half its lifetime left; returns the roles re-signed."""
        with self.locked():
            now = self.clock()
            resigned: list[str] = []
            if self._half_spent("root", now) and (self.keys_dir / "root.pem").exists():
                self.bump_root()
                resigned.append("root")
            if self._half_spent("targets", now):
                self._republish_targets(self.load("targets").signed)
                resigned += ["targets", "snapshot", "timestamp"]
            elif self._half_spent("snapshot", now):
                self._republish_snapshot()
                resigned += ["snapshot", "timestamp"]
            elif self._half_spent("timestamp", now):
                self.refresh_timestamp()
                resigned.append("timestamp")
            return resigned

    def bump_root(self, *, expires: datetime | None = None, root_key: Path | None = None) -> int:
        """Sign a new root version with the same keys; `root_key` is the offline key file if not in keys/."""
        with self.locked():
            root: Root = self.load("root").signed
            root.version += 1
            root.expires = expires or self._expires("root")
            self._publish("root", root, signers=[self._signer("root", root_key)])
            return root.version

    def rotate_key(self, role: str, *, root_key: Path | None = None, new_root_key: Path | None = None) -> Rotation:
        """Replace `role`'s key with a new ed25519 key in a new root version, then re-sign with it.

        The root key (keys/root.pem, or `root_key` when it is kept offline) signs root N+1. Rotating root itself,
        N+1 is signed by the old and the new root key: a client verifies N+1 with N's keys and with its own, so
        clients chain through every N.root.json. Rotating an offline root key writes the new one to
        `new_root_key`. The other roles' metadata is re-signed with the new key at once (targets -> snapshot ->
        timestamp). The old private key is deleted, not kept: it signs nothing any more, and a key that may be
        why it is rotated is worth nothing to the hub and something to an attacker.
        """
        if role not in ROLES:
            raise TufRepositoryError(f"no such role {role!r}: one of {', '.join(ROLES)}")
        offline_root = role == "root" and root_key is not None
        if offline_root and new_root_key is None:
            raise TufRepositoryError("rotating an offline root key needs a file to write the new root key to")
        with self.locked():
            self._finish_interrupted_rotations()
            root: Root = self.load("root").signed
            root_signer = self._signer("root", root_key)
            key_file = new_root_key if offline_root and new_root_key is not None else self.keys_dir / f"{role}.pem"
            pending = key_file if offline_root else self.keys_dir / f"{role}.pem.next"
            new_signer = create_key_file(pending)
            old_keyids = list(root.roles[role].keyids)
            for keyid in old_keyids:
                root.revoke_key(keyid, role)
            root.add_key(new_signer.public_key, role)
            root.version += 1
            root.expires = self._expires("root")
            self._publish("root", root, signers=[root_signer, new_signer] if role == "root" else [root_signer])
            if not offline_root:
                os.replace(pending, key_file)
                fsync_dir(self.keys_dir)
            return Rotation(role=role, root_version=root.version, new_keyid=new_signer.public_key.keyid,
                            old_keyids=old_keyids, key_file=key_file, resigned=self._resign_chain(role))  # fmt: skip

    def jump_versions(self, floor: int) -> int:
        """Re-sign targets, snapshot and timestamp at one version, max(`floor`, each current version + 1).

        For a restored repository: with `floor` above anything the original hub ever signed, no device that kept
        polling the original after the backup sees a rollback (docs/hub.md#backup has the rule for `floor`).
        """
        with self.locked():
            targets: Targets = self.load("targets").signed
            snapshot: Snapshot = self.load("snapshot").signed
            timestamp: Timestamp = self.load("timestamp").signed
            version = max(floor, targets.version + 1, snapshot.version + 1, timestamp.version + 1)
            targets.version, targets.expires = version, self._expires("targets")
            self._publish("targets", targets)
            snapshot.version, snapshot.expires = version, self._expires("snapshot")
            snapshot.meta["targets.json"] = MetaFile(version=version)
            self._publish("snapshot", snapshot)
            timestamp.version, timestamp.expires = version, self._expires("timestamp")
            timestamp.snapshot_meta = MetaFile(version=version)
            self._publish("timestamp", timestamp)
            return version

    # ---- test helpers for refusal scenarios ----------------------------------------------------
    def copy_metadata(self, dest: Path) -> None:
        """Copy the current metadata to the directory `dest` (to replay it later as an older version)."""
        dest.mkdir(parents=True, exist_ok=True)
        for key in self.storage.list("metadata/"):
            (dest / key.removeprefix("metadata/")).write_bytes(self.storage.read_bytes(key))

    def restore_metadata(self, src: Path) -> None:
        """Serve a previously copied metadata directory again (a rollback or freeze attack)."""
        with self.locked():
            for key in self.storage.list("metadata/"):
                self.storage.delete(key)
            for path in sorted(src.iterdir(), key=lambda p: p.name == "timestamp.json"):  # timestamp last
                self.storage.write_bytes(f"metadata/{path.name}", path.read_bytes())

    # ---- internals ----------------------------------------------------------------------------
    def _expires(self, role: str) -> datetime:
        return (self.clock() + self.expiry.of(role)).replace(microsecond=0)

    def _half_spent(self, role: str, now: datetime) -> bool:
        expires: datetime = self.load(role).signed.expires
        return expires - now < self.expiry.of(role) / 2

    def _republish_targets(self, targets: Targets) -> int:
        targets.version += 1
        targets.expires = self._expires("targets")
        self._publish("targets", targets)
        self._republish_snapshot(targets_version=targets.version)
        return targets.version

    def _republish_snapshot(self, targets_version: int | None = None) -> None:
        snapshot: Snapshot = self.load("snapshot").signed
        snapshot.version += 1
        snapshot.expires = self._expires("snapshot")
        if targets_version is not None:
            snapshot.meta["targets.json"] = MetaFile(version=targets_version)
        self._publish("snapshot", snapshot)
        ts: Timestamp = self.load("timestamp").signed
        ts.version += 1
        ts.expires = self._expires("timestamp")
        ts.snapshot_meta = MetaFile(version=snapshot.version)
        self._publish("timestamp", ts)

    def _resign_chain(self, role: str) -> list[str]:
        """Re-sign `role` and the roles that name its version (after its key changed)."""
        if role == "targets":
            self._republish_targets(self.load("targets").signed)
        elif role == "snapshot":
            self._republish_snapshot()
        elif role == "timestamp":
            self.refresh_timestamp()
        return list(CHAIN[role])

    def _finish_interrupted_rotations(self) -> None:
        """A rotation cut between its new root and its key rename: finish it, or drop a key root never trusted."""
        for pending in sorted(self.keys_dir.glob("*.pem.next")):
            role = pending.name.removesuffix(".pem.next")
            if role not in ROLES:
                continue
            root: Root = self.load("root").signed
            if load_signer(pending, role).public_key.keyid in root.roles[role].keyids:
                os.replace(pending, self.keys_dir / f"{role}.pem")
                fsync_dir(self.keys_dir)
                self._resign_chain(role)
            else:
                pending.unlink()

    def _signer(self, role: str, key_file: Path | None = None) -> CryptoSigner:
        """The role's key (keys/<role>.pem or `key_file`), refused unless the current root trusts it for `role`."""
        key_file = key_file or self.keys_dir / f"{role}.pem"
        signer = load_signer(key_file, role)
        if self.storage.exists("metadata/root.json"):
            root: Root = self.load("root").signed
            if signer.public_key.keyid not in root.roles[role].keyids:
                hint = "after an interrupted rotate-keys, run it again"
                if self.storage.kind != DirectoryStorage.kind:
                    hint += "; after a rotate-keys on another replica, copy its tuf/keys/ here"
                raise TufRepositoryError(
                    f"{key_file} is not the {role} key root.json (version {root.version}) trusts; {hint}"
                )
        return signer

    def _require_online_keys(self) -> None:
        """Storage shared without the keys: refuse to serve a repository this replica could never re-sign."""
        for role in ONLINE_ROLES:
            if not (self.keys_dir / f"{role}.pem").is_file():
                raise TufRepositoryError(
                    f"{self.storage.describe()} holds a TUF repository but {self.keys_dir} has no {role}.pem: "
                    "every replica needs the repository's keys (copy tuf/keys/ from the replica that created it)"
                )

    def _publish(self, role: str, signed: Root | Targets | Snapshot | Timestamp,
                 signers: list[CryptoSigner] | None = None) -> None:  # fmt: skip
        md: Metadata[Any] = Metadata(signed)
        for signer in signers or [self._signer(role)]:
            md.sign(signer, append=True)
        data = md.to_bytes(self._serializer)
        if role == "root":
            self.storage.write_bytes(f"metadata/{signed.version}.root.json", data)
            self.storage.write_bytes("metadata/root.json", data)
        elif role == "timestamp":
            self.storage.write_bytes("metadata/timestamp.json", data)
        else:
            self.storage.write_bytes(f"metadata/{signed.version}.{role}.json", data)


def _hashed_name(target_path: str, sha256: str) -> str:
    directory, _, name = target_path.rpartition("/")
    return f"{directory}/{sha256}.{name}" if directory else f"{sha256}.{name}"


def _check_target_path(target_path: str) -> None:
    parts = target_path.split("/")
    if target_path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise TufRepositoryError(f"invalid target path {target_path!r}")
