"""The model registry: accept a converter output folder, check it, publish it as TUF targets, record it."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import tarfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

from pydantic import ValidationError
from sqlalchemy import Engine

from hub import deltas
from hub.cluster import locks
from hub.errors import Conflict, InvalidInput
from hub.store import models as model_store
from hub.tuf_repo import TufRepository
from protocol.http import artifact_target, manifest_target
from protocol.layout import MANIFEST_FILE
from protocol.manifest import Manifest

MAX_MEMBERS = 10_000


@dataclass(frozen=True)
class PushOutcome:
    """Which (name, version, profile) rows were stored now, and which were already there byte for byte; the
    delta patches published with the stored ones (hub/deltas.py)."""

    stored: list[dict[str, Any]]
    unchanged: list[dict[str, Any]]
    patches: list[dict[str, Any]] = field(default_factory=list)


def extract_tar(fileobj: IO[bytes], dest: Path, *, max_bytes: int) -> None:
    """Unpack a tar (plain, gzip, bzip2 or xz) of regular files and directories only, member by member as it
    streams: links, escaping paths, more than MAX_MEMBERS entries, or contents past `max_bytes` stop it at the
    first offending header, before that member's bytes are decompressed. The decompressed stream as a whole
    (headers included) is capped too, so no header can make the hub inflate more than the cap allows."""
    stream = _Capped(_decompressed(fileobj), max_bytes + (MAX_MEMBERS + 2) * 2 * tarfile.BLOCKSIZE)
    total = count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise InvalidInput(f"archive has more than {MAX_MEMBERS} entries")
                if not (member.isfile() or member.isdir()):
                    raise InvalidInput(f"archive entry {member.name!r} is not a regular file or directory")
                safe_relative(member.name)
                total += member.size
                if total > max_bytes:
                    raise InvalidInput(f"archive expands beyond {max_bytes} bytes (at {member.name!r})")
                tar.extract(member, dest, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise InvalidInput(f"not a readable tar(.gz) archive: {e}") from e


class _Capped(io.RawIOBase):
    """A reader that refuses to yield more than `limit` bytes (InvalidInput past it)."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self._inner, self._left = inner, limit

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._inner.read(size if size >= 0 else self._left + 1)
        self._left -= len(chunk)
        if self._left < 0:
            raise InvalidInput("archive expands beyond the upload limit")
        return chunk


def _decompressed(fileobj: IO[bytes]) -> IO[bytes]:
    """`fileobj` decompressed by its magic bytes (gzip, bzip2, xz) or as it is."""
    magic = fileobj.read(6)
    fileobj.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=fileobj, mode="rb"))
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(fileobj, mode="rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(fileobj, mode="rb")
    return fileobj


def safe_relative(name: str) -> Path:
    """A relative path that stays inside the upload folder, else InvalidInput."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        raise InvalidInput(f"unsafe path in upload: {name!r}")
    return Path(*parts)


def push_folder(*, folder: Path, engine: Engine, repo: TufRepository, now: datetime) -> PushOutcome:
    """Validate every `<profile>/manifest.json` and its artifact, then publish and record them atomically, with
    a patch of each new artifact against the earlier versions devices may hold (hub/deltas.py)."""
    root = _folder_root(folder)
    found = sorted(root.glob(f"*/{MANIFEST_FILE}"))
    if not found:
        raise InvalidInput(f"no <profile>/{MANIFEST_FILE} in the upload")
    checked = [_check_profile(path) for path in found]
    planned = deltas.plan(engine=engine, repo=repo, artifacts=[(m, a) for m, _, a in checked])  # before the lock
    stored: list[dict[str, Any]] = []
    unchanged: list[dict[str, Any]] = []
    patches: list[dict[str, Any]] = []
    targets: dict[str, bytes | Path] = {}
    with engine.begin() as conn:
        locks.xact_lock(conn, locks.TUF_PUBLISH)  # replicas share tuf/: one publish at a time, checked after the last
        for manifest, manifest_bytes, artifact in checked:
            key: dict[str, Any] = {"name": manifest.name, "version": manifest.version, "profile": manifest.profile}
            row: dict[str, Any] = {
                **key,
                "manifest": manifest_bytes.decode("utf-8"),
                "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
                "manifest_target": manifest_target(manifest.name, manifest.version, manifest.profile),
                "artifact_target": artifact_target(
                    manifest.name, manifest.version, manifest.profile, manifest.artifact.file
                ),
                "artifact_sha256": manifest.artifact.sha256,
                "artifact_size": manifest.artifact.size,
            }
            existing = model_store.get(conn=conn, **key)
            if existing is not None:
                if existing["manifest_sha256"] != row["manifest_sha256"]:
                    raise Conflict(
                        f"{manifest.name} version {manifest.version} ({manifest.profile}) exists with other "
                        "content; versions are immutable, push a new version"
                    )
                unchanged.append(existing)
                continue
            model_store.add(conn=conn, now=now, **row)
            stored.append(row | {"created_at": now})
            targets[row["manifest_target"]] = manifest_bytes
            targets[row["artifact_target"]] = artifact
            for patch in planned.get((manifest.name, manifest.version, manifest.profile), []):
                targets[patch.target] = patch.data  # signed with the artifact, in the same targets version
                patches.append(patch.describe())
        if targets:
            repo.add_targets(targets)  # inside the transaction: a failed publish stores nothing
    return PushOutcome(stored=stored, unchanged=unchanged, patches=patches)


def _folder_root(folder: Path) -> Path:
    """Accept the folder itself or an archive with one top-level directory around it."""
    if any(folder.glob(f"*/{MANIFEST_FILE}")):
        return folder
    children = [p for p in folder.iterdir() if p.is_dir()]
    if len(children) == 1 and any(children[0].glob(f"*/{MANIFEST_FILE}")):
        return children[0]
    return folder


def _check_profile(path: Path) -> tuple[Manifest, bytes, Path]:
    data = path.read_bytes()
    try:
        manifest = Manifest.from_json(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{path.parent.name}/{MANIFEST_FILE}: {loc}: {first['msg']}") from e
    if manifest.profile != path.parent.name:
        raise InvalidInput(f"{path.parent.name}/{MANIFEST_FILE} is for profile {manifest.profile!r}")
    artifact = path.parent / manifest.artifact.file
    if not artifact.is_file():
        raise InvalidInput(f"{path.parent.name}/{manifest.artifact.file} is missing")
    size, digest = _size_and_sha256(artifact)
    if size != manifest.artifact.size or digest != manifest.artifact.sha256:
        raise InvalidInput(
            f"{path.parent.name}/{manifest.artifact.file}: {size} bytes sha256 {digest[:12]}..., "
            f"manifest says {manifest.artifact.size} bytes sha256 {manifest.artifact.sha256[:12]}..."
        )
    return manifest, data, artifact


def _size_and_sha256(path: Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
