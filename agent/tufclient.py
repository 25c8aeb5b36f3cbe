"""TUF client (tuf.ngclient): refresh signed metadata with the device token, look up and verify targets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from agent.errors import DigestMismatch, MetadataRefused, Unreachable

METADATA_MAX_BYTES = 4 * 1024 * 1024


class AuthFetcher(FetcherInterface):
    """ngclient fetcher over httpx that sends `Authorization: Bearer <device token>`."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        response = self.client.send(self.client.build_request("GET", url), stream=True)
        if response.status_code != 200:
            response.close()
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        return _chunks(response)


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    try:
        yield from response.iter_bytes(64 * 1024)
    except httpx.HTTPError as e:  # cut mid-body: ngclient only wraps errors raised by _fetch() itself
        raise tuf_errors.DownloadError(f"{response.url}: {type(e).__name__}: {e}") from e
    finally:
        response.close()


def _download_error(message: str, error: tuf_errors.DownloadError) -> Unreachable | MetadataRefused:
    """A request that may succeed when retried (refused, cut, timed out, 5xx) is Unreachable; a hub that says
    this device may not have it (401/403: token revoked or re-enrolled elsewhere) refuses the update at once."""
    if isinstance(error, tuf_errors.DownloadHTTPError) and error.status_code in (401, 403):
        return MetadataRefused(f"{message} (the hub refused this device's token)")
    return Unreachable(message)


class TufClient:
    """One refreshed view of the hub's signed metadata (make a new one per poll)."""

    def __init__(self, metadata_dir: Path, hub_url: str, client: httpx.Client, trusted_root: bytes) -> None:
        metadata_dir.mkdir(parents=True, exist_ok=True)
        self.metadata_dir = metadata_dir
        base = hub_url.rstrip("/")
        self.targets_base = f"{base}/tuf/targets/"
        cached = (metadata_dir / "root.json").exists()
        self.updater = Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=f"{base}/tuf/metadata/",
            target_base_url=self.targets_base,
            target_dir=str(metadata_dir / "targets"),
            fetcher=AuthFetcher(client),
            bootstrap=None if cached else trusted_root,
        )
        self._refreshed = False

    def refresh(self) -> None:
        """Fetch and verify timestamp -> snapshot -> targets; refusals raise MetadataRefused."""
        if self._refreshed:
            return
        try:
            self.updater.refresh()
        except tuf_errors.DownloadError as e:
            raise _download_error(f"cannot reach the update metadata: {e}", e) from e
        except tuf_errors.RepositoryError as e:
            raise MetadataRefused(f"update metadata refused ({type(e).__name__}): {e}") from e
        self._refreshed = True

    def target_info(self, target_path: str) -> Any:
        """The signed TargetFile of `target_path`; MetadataRefused if the hub never signed it."""
        self.refresh()
        try:
            info = self.updater.get_targetinfo(target_path)
        except tuf_errors.RepositoryError as e:
            raise MetadataRefused(f"update metadata refused ({type(e).__name__}): {e}") from e
        if info is None:
            raise MetadataRefused(f"{target_path} is not a signed target")
        return info

    def fetch_small_target(self, target_path: str, dest: Path) -> bytes:
        """Download and verify a small target (a manifest) through ngclient; returns its bytes."""
        info = self.target_info(target_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.updater.download_target(info, filepath=str(dest))
        except tuf_errors.LengthOrHashMismatchError as e:
            raise DigestMismatch(f"{target_path}: {e}") from e
        except tuf_errors.DownloadError as e:
            raise _download_error(f"{target_path}: {e}", e) from e
        return dest.read_bytes()

    def target_url(self, info: Any) -> str:
        """The consistent-snapshot URL of a target: `<dir>/<sha256>.<name>`."""
        directory, _, name = str(info.path).rpartition("/")
        prefix = f"{directory}/" if directory else ""
        return f"{self.targets_base}{prefix}{info.hashes['sha256']}.{name}"

    def verify_file(self, info: Any, path: Path) -> None:
        """Length and sha256 of `path` against the signed metadata; DigestMismatch with the reason."""
        if self.updater.find_cached_target(info, str(path)) is not None:
            return
        try:
            with path.open("rb") as f:
                info.verify_length_and_hashes(f)
        except OSError as e:
            raise DigestMismatch(f"{info.path}: cannot read the downloaded file: {e}") from e
        except tuf_errors.LengthOrHashMismatchError as e:
            raise DigestMismatch(f"{info.path}: {e}") from e
        raise DigestMismatch(f"{info.path}: does not match the signed length and sha256")
