"""The hub's TUF repository: signed root/targets/snapshot/timestamp metadata and hash-named targets.

Layout under `path` (served as-is by the hub at /tuf/metadata/ and /tuf/targets/):

    keys/{root,targets,snapshot,timestamp}.pem   ed25519 private keys (0600); root.pem may live offline
    keys/<role>.pem.next                         a rotation's new key until its root is published (tuf_keys.py)
    publish.lock                                 flock'ed by every writer, in whatever process
    metadata/N.root.json, metadata/root.json     every root version, and the newest one
    metadata/V.targets.json, V.snapshot.json     consistent snapshots (old versions are kept)
    metadata/timestamp.json                      the only unversioned file clients poll
    targets/<dir>/<sha256>.<name>                content-addressed targets, never overwritten

Publishing order is targets -> snapshot -> timestamp, timestamp last; every file is written to a
temporary file and `os.replace`d, so a crash never leaves a half-written document being served.
Every write holds `locked()`: a thread lock and an flock on `publish.lock`, so the serving hub, `hub sign-root`,
`hub rotate-keys` and `hub backup` (other processes) never interleave a publish or read keys mid-rotation.
Tests (the agent's too) use `create()` with short expiries and `clock=` to make expired metadata,
`copy_metadata()`/`restore_metadata()` to replay an older version, and `target_file()` to tamper.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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
from hub.tuf_keys import create_key_file, fsync_dir, load_signer

ROLES = ("root", "targets", "snapshot", "timestamp")
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
    """A single-signer-per-role TUF repository on disk, safe to share between threads."""

    def __init__(self, path: Path, *, expiry: Expiry | None = None, clock: Clock = utcnow) -> None:
        self.path = Path(path)
        self.expiry = expiry or Expiry()
        self.clock = clock
        self._lock = threading.RLock()
        self._lock_depth = 0
        self._lock_fd = -1
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
        """Hold the repository's publish lock (re-entrant in this thread, exclusive across processes)."""
        with self._lock:
            if self._lock_depth == 0:
                self.path.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = -1

    # ---- creation -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, *, expiry: Expiry | None = None, clock: Clock = utcnow) -> TufRepository:
        """Generate keys and sign version 1 of every role; refuses a directory that already has one."""
        repo = cls(path, expiry=expiry, clock=clock)
        if (repo.metadata_dir / "1.root.json").exists():
            raise TufRepositoryError(f"a TUF repository already exists at {repo.path}")
        for d in (repo.keys_dir, repo.metadata_dir, repo.targets_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(repo.keys_dir, 0o700)
        signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
        for role, signer in signers.items():
            _atomic_write(repo.keys_dir / f"{role}.pem", signer.private_bytes, mode=0o600)
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
    def open_or_create(cls, path: Path, *, expiry: Expiry | None = None, clock: Clock = utcnow) -> TufRepository:
        """Open the repository at `path`, creating it first if there is none."""
        repo = cls(path, expiry=expiry, clock=clock)
        if not (repo.metadata_dir / "1.root.json").exists():
            return cls.create(path, expiry=expiry, clock=clock)
        if any(repo.keys_dir.glob("*.pem.next")):
            with repo.locked():
                repo._finish_interrupted_rotations()
        return repo

    # ---- reading ------------------------------------------------------------------------------
    def root_bytes(self) -> bytes:
        """The newest root.json exactly as served (what a device pins at enrollment)."""
        return (self.metadata_dir / "root.json").read_bytes()

    def load(self, role: str) -> Metadata[Any]:
        """The current signed metadata of one role (timestamp -> snapshot -> targets chain)."""
        if role == "root":
            return Metadata.from_file(str(self.metadata_dir / "root.json"))
        if role == "timestamp":
            return Metadata.from_file(str(self.metadata_dir / "timestamp.json"))
        ts: Metadata[Timestamp] = self.load("timestamp")
        snap_file = self.metadata_dir / f"{ts.signed.snapshot_meta.version}.snapshot.json"
        if role == "snapshot":
            return Metadata.from_file(str(snap_file))
        snap: Metadata[Snapshot] = Metadata.from_file(str(snap_file))
        return Metadata.from_file(str(self.metadata_dir / f"{snap.signed.meta['targets.json'].version}.targets.json"))

    def targets(self) -> dict[str, TargetFile]:
        """Every published target path and its signed length/hashes."""
        signed: Targets = self.load("targets").signed
        return dict(signed.targets)

    def target_file(self, target_path: str) -> Path:
        """The on-disk, hash-named file of a published target (tests tamper with it)."""
        info = self.targets().get(target_path)
        if info is None:
            raise TufRepositoryError(f"no such target: {target_path}")
        return self.targets_dir / _hashed_name(target_path, info.hashes["sha256"])

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
                dest = self.targets_dir / _hashed_name(target_path, info.hashes["sha256"])
                if not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if isinstance(content, Path):
                        _atomic_copy(content, dest)
                    else:
                        _atomic_write(dest, content)
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
        """Copy the current metadata directory to `dest` (to replay it later as an older version)."""
        shutil.copytree(self.metadata_dir, dest, dirs_exist_ok=True)

    def restore_metadata(self, src: Path) -> None:
        """Serve a previously copied metadata directory again (a rollback or freeze attack)."""
        with self.locked():
            shutil.rmtree(self.metadata_dir)
            shutil.copytree(src, self.metadata_dir)

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
        if (self.metadata_dir / "root.json").exists():
            root: Root = self.load("root").signed
            if signer.public_key.keyid not in root.roles[role].keyids:
                raise TufRepositoryError(
                    f"{key_file} is not the {role} key root.json (version {root.version}) trusts; after an "
                    f"interrupted rotate-keys, run it again"
                )
        return signer

    def _publish(self, role: str, signed: Root | Targets | Snapshot | Timestamp,
                 signers: list[CryptoSigner] | None = None) -> None:  # fmt: skip
        md: Metadata[Any] = Metadata(signed)
        for signer in signers or [self._signer(role)]:
            md.sign(signer, append=True)
        data = md.to_bytes(self._serializer)
        if role == "root":
            _atomic_write(self.metadata_dir / f"{signed.version}.root.json", data)
            _atomic_write(self.metadata_dir / "root.json", data)
        elif role == "timestamp":
            _atomic_write(self.metadata_dir / "timestamp.json", data)
        else:
            _atomic_write(self.metadata_dir / f"{signed.version}.{role}.json", data)


def _hashed_name(target_path: str, sha256: str) -> str:
    directory, _, name = target_path.rpartition("/")
    return f"{directory}/{sha256}.{name}" if directory else f"{sha256}.{name}"


def _check_target_path(target_path: str) -> None:
    parts = target_path.split("/")
    if target_path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise TufRepositoryError(f"invalid target path {target_path!r}")


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to a temp file beside `path`, fsync, then rename over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_copy(src: Path, dest: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
