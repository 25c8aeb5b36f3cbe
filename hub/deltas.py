"""Delta updates, hub side: at push, a patch of each new artifact against the earlier versions devices may hold.

A patch is a TUF target of its own, beside the artifact it rebuilds:

    models/{name}/{version}/{profile}/{artifact file}.from-{earlier version}.zstd

signed in the same targets version as the artifact (push_folder adds it to the same publish), so a device
finds it only through the signed metadata, and the per-device download rule (hub/access.py) covers it as a
file of that version. The agent (agent/delta.py) rebuilds the artifact from the version it holds and checks
the result against the *artifact's* signed sha256 and length; a patch is never trusted on its own.

Format: one zstd frame of the new artifact compressed with the earlier artifact as a prefix dictionary (the
`zstd --patch-from` semantics: `zstd -d --long=31 --patch-from=OLD PATCH -o NEW` rebuilds it by hand), with
long-distance matching, a window covering both files, and the content size and checksum in the frame header.
Why zstd rather than bsdiff4, and a prefix rather than the `zstandard` package's raw-content dictionary (whose
patches degrade past ~8 MB): docs/updates.md, with the measurements.

A patch is offered only when it is at least MIN_SAVING smaller than the artifact: below that, the extra round
trip and the work on the device are not worth it (a model retrained from scratch saves ~7-15 %).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Row, select

from hub.db.schema import model_versions
from hub.errors import HubError, StorageError
from hub.store import models as model_store
from hub.tuf_repo import TufRepository
from protocol.http import PATCH_ALGORITHM, artifact_target, patch_target
from protocol.manifest import Manifest

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

log = logging.getLogger(__name__)

HISTORY = 3  # patches from this many newest earlier versions (what devices two or three updates behind hold)
MIN_SAVING = 0.20  # offered only when the patch is at least this much smaller than the full artifact
ALGORITHM = PATCH_ALGORITHM  # the patch format (protocol/http.py names its targets)
LEVEL = 9  # as small as level 19 on model artifacts, ~10x faster (docs/updates.md); level 19 fails past ~50 MB
MAX_NAME = 128  # the hash-named file under /tuf/targets/ (hub/api/routes/tuf.py HASHED_NAME)


@dataclass(frozen=True)
class Patch:
    """One patch to publish: its target path, what it rebuilds from, its bytes."""

    target: str
    from_version: int
    data: bytes
    full_size: int

    def describe(self) -> dict[str, Any]:
        return {"target": self.target, "from_version": self.from_version, "bytes": len(self.data),
                "full_bytes": self.full_size, "ratio": round(len(self.data) / self.full_size, 4)}  # fmt: skip


Planned = dict[tuple[str, int, str], list[Patch]]  # (name, version, profile) -> its patches


def window_log(old_size: int, new_size: int) -> int:
    """A zstd window that reaches from the end of the new artifact back to the start of the old one."""
    return max(10, min(31, max(old_size, new_size).bit_length() + 1))


def make_patch(old: bytes, new: bytes, *, level: int = LEVEL) -> bytes:
    """A zstd frame of `new` with `old` as its prefix dictionary."""
    options: dict[int, int] = {
        zstd.CompressionParameter.compression_level: level,
        zstd.CompressionParameter.window_log: window_log(len(old), len(new)),
        zstd.CompressionParameter.enable_long_distance_matching: 1,
        zstd.CompressionParameter.checksum_flag: 1,
        zstd.CompressionParameter.content_size_flag: 1,
    }
    return zstd.compress(new, options=options, zstd_dict=zstd.ZstdDict(old, is_raw=True).as_prefix)


def worth_offering(patch_size: int, full_size: int) -> bool:
    """The 20 % rule: a patch is offered only when it saves at least MIN_SAVING of the full download."""
    return patch_size <= (1 - MIN_SAVING) * full_size


def patch_for(*, artifact: str, new: bytes, from_version: int, old: bytes) -> Patch | None:
    """The patch that rebuilds the artifact target `artifact` (bytes `new`) from version `from_version`'s artifact
    (bytes `old`), or None when it is not worth offering (the 20 % rule, or a name too long to serve)."""
    target = patch_target(artifact, from_version)
    if len(target.rsplit("/", 1)[-1]) + 65 > MAX_NAME:  # served as `<sha256>.<name>`
        log.warning("%s: no patch (its file name would pass %d characters)", target, MAX_NAME)
        return None
    data = make_patch(old, new)
    if not worth_offering(len(data), len(new)):
        log.info("%s: not offered: %d bytes saves less than %d %% of %d", target, len(data),
                 round(MIN_SAVING * 100), len(new))  # fmt: skip
        return None
    return Patch(target=target, from_version=from_version, data=data, full_size=len(new))


def plan(*, engine: Engine, repo: TufRepository, artifacts: list[tuple[Manifest, Path]]) -> Planned:
    """The patches for each (name, version, profile) of a push that is not stored yet, against the HISTORY newest
    earlier versions of that model and profile in the registry.

    Called before the push's transaction: making patches is the slow part of a push (~0.1 s per 5 MB), and it
    needs no lock, since versions are immutable. A patch that cannot be made (an earlier artifact missing from
    storage, or not matching its recorded sha256) is logged and left out: the push itself never fails for it.
    """
    planned: Planned = {}
    for manifest, path in artifacts:
        with engine.connect() as conn:
            if model_store.get(conn=conn, name=manifest.name, version=manifest.version, profile=manifest.profile):
                continue  # already stored: a re-push changes nothing
            rows = _earlier_versions(conn, manifest)
        if not rows:
            continue
        target = artifact_target(manifest.name, manifest.version, manifest.profile, manifest.artifact.file)
        new = path.read_bytes()
        patches = planned.setdefault((manifest.name, manifest.version, manifest.profile), [])
        for row in rows:  # one earlier artifact in memory at a time
            try:
                patch = patch_for(artifact=target, new=new, from_version=row.version, old=_stored_artifact(repo, row))
            except (HubError, OSError, zstd.ZstdError) as e:
                log.warning("%s: no patch from version %d: %s: %s", target, row.version, type(e).__name__, e)
                continue
            if patch is not None:
                log.info("%s: patch from version %d: %d of %d bytes", target, row.version, len(patch.data),
                         len(new))  # fmt: skip
                patches.append(patch)
    return planned


def _earlier_versions(conn: Connection, manifest: Manifest) -> list[Row[Any]]:
    """The HISTORY newest versions of the manifest's model and profile before its version (no manifests loaded)."""
    mv = model_versions.c
    q = (
        select(mv.version, mv.artifact_target, mv.artifact_sha256)
        .where(mv.name == manifest.name, mv.profile == manifest.profile, mv.version < manifest.version)
        .order_by(mv.version.desc())
        .limit(HISTORY)
    )
    return list(conn.execute(q))


def _stored_artifact(repo: TufRepository, row: Row[Any]) -> bytes:
    """An earlier version's artifact as stored; StorageError if it is not the one its row recorded."""
    data = repo.storage.read_bytes(repo.target_key(row.artifact_target))
    if hashlib.sha256(data).hexdigest() != row.artifact_sha256:
        raise StorageError(f"{row.artifact_target}: the stored artifact does not match its recorded sha256")
    return data
