"""The TUF repository over HTTP: metadata and hash-named targets (Range, ETag), for devices and the admin.

Metadata is readable by every enrolled device (agents verify with it); a model's targets only by the devices
it is rolled out to (hub/access.py has the rule) and by the admin.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from hub.access import require_download, target_model
from hub.api.deps import HubDep, PrincipalDep
from hub.errors import NotFound
from hub.schemas import Message
from protocol.http import TUF_METADATA_PATH, TUF_TARGETS_PATH

router = APIRouter(tags=["tuf"], responses={401: {"model": Message}, 404: {"model": Message}})
METADATA_NAME = re.compile(r"^(?:[0-9]{1,20}\.(?:root|snapshot|targets)|root|timestamp)\.json$")
HASHED_NAME = re.compile(r"^([0-9a-f]{64})\.[A-Za-z0-9_.-]{1,128}$")


def _inside(base: Path, relative: str) -> Path:
    path = (base / relative).resolve()
    if not path.is_relative_to(base.resolve()) or not path.is_file():
        raise NotFound(f"no such file: {relative}")
    return path


@router.get(TUF_METADATA_PATH + "{name}", response_class=FileResponse)
def metadata(name: str, hub: HubDep, _who: PrincipalDep) -> FileResponse:
    """`N.root.json`, `timestamp.json`, `V.snapshot.json`, `V.targets.json` (404: no such version)."""
    if not METADATA_NAME.match(name):
        raise NotFound(f"no such metadata: {name}")
    path = _inside(hub.repo.metadata_dir, name)
    return FileResponse(path, media_type="application/json", headers={"Cache-Control": "no-cache"})


@router.get(TUF_TARGETS_PATH + "{target:path}", response_class=FileResponse, responses={403: {"model": Message}})
def target(target: str, hub: HubDep, who: PrincipalDep) -> FileResponse:
    """A hash-named target; supports Range (206) so downloads resume; ETag is the sha256. 403: not for this device."""
    match = HASHED_NAME.match(target.rsplit("/", 1)[-1])
    if match is None or ".." in target.split("/"):
        raise NotFound(f"no such target: {target}")
    if who.device is not None:  # checked before the file, so a device cannot probe what exists
        require_download(device=who.device, ref=target_model(target), db=hub.engine, metrics=hub.metrics,
                         what=f"target {target}")  # fmt: skip
    path = _inside(hub.repo.targets_dir, target)
    # private: a shared cache must not hand a device's artifact to anyone else (the bytes never change, though)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={"ETag": f'"{match.group(1)}"', "Cache-Control": "private, max-age=31536000, immutable"},
    )
