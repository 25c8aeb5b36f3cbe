"""The TUF repository over HTTP: metadata and hash-named targets (Range, ETag), for devices and the admin.

Metadata is readable by every enrolled device (agents verify with it); a model's targets only by the devices
it is rolled out to (hub/access.py has the rule) and by the admin. Both come from the hub's storage
(hub/storage/): files are served by FileResponse, other blobs streamed by hub/api/blobs.py with the same headers.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from hub.access import require_download, target_model
from hub.api.blobs import blob_response
from hub.api.deps import HubDep, PrincipalDep
from hub.errors import BlobNotFound, NotFound, StorageError
from hub.schemas import Message
from hub.services import Hub
from hub.storage import check_key
from protocol.http import TUF_METADATA_PATH, TUF_TARGETS_PATH

router = APIRouter(tags=["tuf"], responses={401: {"model": Message}, 404: {"model": Message}})
METADATA_NAME = re.compile(r"^(?:[0-9]{1,20}\.(?:root|snapshot|targets)|root|timestamp)\.json$")
HASHED_NAME = re.compile(r"^([0-9a-f]{64})\.[A-Za-z0-9_.-]{1,128}$")
METADATA_HEADERS = {"Cache-Control": "no-cache"}
# private: a shared cache must not hand a device's artifact to anyone else (the bytes never change, though)
TARGET_CACHE = "private, max-age=31536000, immutable"


def _serve(hub: Hub, request: Request, key: str, *, media_type: str, headers: dict[str, str]) -> Response:
    """The blob under `key` from the hub's storage (404 if there is none)."""
    storage = hub.repo.storage
    try:
        check_key(key)
    except StorageError as e:
        raise NotFound(f"no such file: {key.split('/', 1)[1]}") from e
    try:
        path = storage.local_path(key)
        if path is not None:
            if not path.is_file():
                raise NotFound(f"no such file: {key.split('/', 1)[1]}")
            return FileResponse(path, media_type=media_type, headers=headers)
        blob = storage.open(key)
    except BlobNotFound as e:
        raise NotFound(f"no such file: {key.split('/', 1)[1]}") from e
    return blob_response(blob, request.headers, media_type=media_type, headers=headers)


@router.get(TUF_METADATA_PATH + "{name}", response_class=FileResponse)
def metadata(name: str, request: Request, hub: HubDep, _who: PrincipalDep) -> Response:
    """`N.root.json`, `timestamp.json`, `V.snapshot.json`, `V.targets.json` (404: no such version)."""
    if not METADATA_NAME.match(name):
        raise NotFound(f"no such metadata: {name}")
    return _serve(hub, request, f"metadata/{name}", media_type="application/json", headers=dict(METADATA_HEADERS))


@router.get(TUF_TARGETS_PATH + "{target:path}", response_class=FileResponse, responses={403: {"model": Message}})
def target(target: str, request: Request, hub: HubDep, who: PrincipalDep) -> Response:
    """A hash-named target; supports Range (206) so downloads resume; ETag is the sha256. 403: not for this device."""
    match = HASHED_NAME.match(target.rsplit("/", 1)[-1])
    if match is None or any(p in ("", ".", "..") for p in target.split("/")):
        raise NotFound(f"no such target: {target}")
    if who.device is not None:  # checked before the file, so a device cannot probe what exists
        require_download(device=who.device, ref=target_model(target), db=hub.engine, metrics=hub.metrics,
                         what=f"target {target}")  # fmt: skip
    headers = {"ETag": f'"{match.group(1)}"', "Cache-Control": TARGET_CACHE}
    return _serve(hub, request, f"targets/{target}", media_type="application/octet-stream", headers=headers)
