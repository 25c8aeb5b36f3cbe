"""Delta updates on the device: rebuild a new artifact from the version the device holds and a signed patch.

The hub (hub/deltas.py) publishes, beside a version's artifact, a zstd patch from each earlier version devices
may hold, as TUF targets of their own:

    models/{name}/{version}/{profile}/{artifact file}.from-{held version}.zstd

The download step (agent/steps.py) calls `try_patch` before the full download. When the signed metadata names
a patch from the active or the previous version, it downloads it (the same Downloader: Range resume, bandwidth
cap, retries), checks it against its own signed length and sha256, rebuilds the artifact into a temporary file,
checks *that* against the artifact's signed length and sha256, and only then renames it to where the full
download would have put it (`<file>.part`), where the verify step checks it again like any download. A kill at
any instant leaves no `<file>.part` (the next start rebuilds again, from the patch already on disk) or a
verified one; the temporary file is never read.

Any refusal (a patch the metadata does not sign or whose hash differs, a frame that does not decode, a rebuilt
artifact with another hash) falls back to the full download: the reason is logged, kept beside the download
(`<file>.patch-failed`, so a restart does not try that patch again) and sent in the `downloaded` event's
details as `{"delta": {"from": 1, "bytes": ..., "ok": false, "reason": ...}}`. Network failures are not
refusals: they end the step as a full download's would, and the patch resumes at the next attempt.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import DigestMismatch, MetadataRefused, RefusedUpdate, StoreError
from agent.fsutil import atomic_write, fsync_dir, fsync_file
from agent.store import ModelStore
from protocol.http import PATCH_ALGORITHM as ALGORITHM
from protocol.http import patch_target

if TYPE_CHECKING:
    from agent.download import Downloader
    from agent.tufclient import TufClient

log = logging.getLogger(__name__)

HELD_SLOTS = ("active", "previous")  # the versions a patch may start from
CHUNK = 1 << 20

# (bytes of the patch on disk, its signed length, details): the step reports the patch download's start.
Started = Callable[[int, int, dict[str, Any]], None]


@dataclass(frozen=True)
class PatchOffer:
    """A signed patch that rebuilds the wanted artifact from a version this device holds."""

    from_version: int
    base: Path  # the held version's artifact
    info: Any  # the patch's signed TargetFile (path, length, hashes)


def window_log(base_size: int, new_size: int) -> int:
    """The largest zstd window a patch may ask for: one reaching from the end of the new artifact back to the
    start of the held one (what the hub uses). A bigger one is refused, so a patch cannot make the device
    reserve more memory than the two files need."""
    return max(10, min(31, max(base_size, new_size).bit_length() + 1))


def find_offer(tuf: TufClient, store: ModelStore, name: str, version: int, artifact: str) -> PatchOffer | None:
    """The smallest signed patch to `artifact` (of `name` `version`) from a version in the active or previous
    slot, or None when the signed metadata names none."""
    offers: list[PatchOffer] = []
    for slot in HELD_SLOTS:
        try:
            held = store.slot_version(name, slot)
            if held is None or held == version or not store.installed(name, held):
                continue
            base = store.artifact(name, held)
        except StoreError as e:
            log.warning("%s: %s slot unusable as a patch base: %s", name, slot, e)
            continue
        try:
            info = tuf.target_info(patch_target(artifact, held))
        except MetadataRefused:  # not a signed target: the hub offers no patch from that version
            continue
        offers.append(PatchOffer(held, base, info))
    return min(offers, key=lambda o: int(o.info.length), default=None)


def apply_patch(base: Path, patch: Path, out: Path, length: int) -> None:
    """Write the artifact rebuilt from `base` and the zstd `patch` to `out` (fsynced); RefusedUpdate unless the
    patch is one frame that decodes to exactly `length` bytes within the window `window_log` allows."""
    try:
        if sys.version_info >= (3, 14):
            from compression import zstd
        else:
            from backports import zstd
    except ImportError as e:
        raise RefusedUpdate("applying a patch needs backports.zstd (pip install 'edgefleet[agent]')") from e
    held = base.read_bytes()
    options: dict[int, int] = {zstd.DecompressionParameter.window_log_max: window_log(len(held), length)}
    written = 0
    try:
        decompressor = zstd.ZstdDecompressor(zstd_dict=zstd.ZstdDict(held, is_raw=True).as_prefix, options=options)
        with patch.open("rb") as src, out.open("wb") as dst:
            while not decompressor.eof:
                chunk = src.read(CHUNK) if decompressor.needs_input else b""
                if decompressor.needs_input and not chunk:
                    raise RefusedUpdate("the patch ends in the middle of its frame")
                data = decompressor.decompress(chunk, max_length=CHUNK)
                written += len(data)
                if written > length:
                    raise RefusedUpdate(f"the patch rebuilds more than the signed length {length}")
                dst.write(data)
            if decompressor.unused_data or src.read(1):
                raise RefusedUpdate("the patch has data after its frame")
            dst.flush()
            os.fsync(dst.fileno())
    except zstd.ZstdError as e:
        raise RefusedUpdate(f"the patch does not apply: {e}") from e
    if written != length:
        raise RefusedUpdate(f"the patch rebuilds {written} bytes, the signed length is {length}")


def try_patch(*, tuf: TufClient, downloader: Downloader, offer: PatchOffer, info: Any, part: Path,
              started: Started) -> dict[str, Any]:  # fmt: skip
    """Rebuild the artifact signed as `info` into `part` through `offer`; the `delta` details for the event.

    On success `part` holds the verified artifact. On a refusal `part` is left absent (the caller downloads the
    artifact in full) and the reason is kept beside it (`failed_patch` reads it back after a restart).
    """
    work = part.parent
    details: dict[str, Any] = {"from": offer.from_version, "algorithm": ALGORITHM, "bytes": int(offer.info.length),
                               "full_bytes": int(info.length)}  # fmt: skip
    patch_file = work / f"{str(offer.info.path).rsplit('/', 1)[-1]}.part"
    rebuilt = part.with_name(part.name.removesuffix(".part") + ".rebuilt.tmp")
    try:
        started(patch_file.stat().st_size if patch_file.exists() else 0, int(offer.info.length), details)
        downloader.fetch(tuf.target_url(offer.info), patch_file, int(offer.info.length))
        try:
            tuf.verify_file(offer.info, patch_file)
        except DigestMismatch as e:
            patch_file.unlink(missing_ok=True)  # never resume from bytes that failed verification
            raise DigestMismatch(f"patch refused: {e}") from e
        began = time.perf_counter()
        apply_patch(offer.base, patch_file, rebuilt, int(info.length))
        details["apply_ms"] = round((time.perf_counter() - began) * 1000, 1)
        try:
            tuf.verify_file(info, rebuilt)
        except DigestMismatch as e:
            raise DigestMismatch(f"rebuilt artifact refused: {e}") from e
        fsync_file(rebuilt)
        os.replace(rebuilt, part)  # only a verified artifact ever takes the full download's place
        fsync_dir(work)
    except (RefusedUpdate, OSError) as e:
        rebuilt.unlink(missing_ok=True)
        details |= {"ok": False, "reason": f"{type(e).__name__}: {e}"[:500]}
        log.warning("%s: patch from v%d not used, downloading the full artifact: %s", info.path, offer.from_version,
                    details["reason"])  # fmt: skip
        atomic_write(_failure_file(part), json.dumps(details).encode())
        return details
    details["ok"] = True
    log.info("%s: rebuilt from v%d with a %d-byte patch (%d bytes in full)", info.path, offer.from_version,
             details["bytes"], details["full_bytes"])  # fmt: skip
    return details


def failed_patch(part: Path) -> dict[str, Any] | None:
    """The `delta` details of a patch that failed for this download before (None: none did)."""
    path = _failure_file(part)
    if not path.exists():
        return None
    try:
        details: dict[str, Any] = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        return {"ok": False, "reason": f"a patch failed before (its record is unreadable: {e})"}
    return details


def _failure_file(part: Path) -> Path:
    return part.with_name(part.name.removesuffix(".part") + ".patch-failed")
