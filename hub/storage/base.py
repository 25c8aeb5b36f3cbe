"""The storage contract: blob keys, what a stored blob is, and the Protocol every backend implements.

A key is a relative '/'-separated path, the one the blob has under `<data dir>/tuf/` in the directory layout:
`metadata/3.targets.json`, `metadata/timestamp.json`, `targets/models/m/1/p/<sha256>.model.tflite`.
Signing keys are never stored here: `tuf/keys/` stays a local, owner-only directory on every replica.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

from hub.errors import BlobNotFound, StorageError

CHUNK = 1 << 20  # what one read of a blob returns at most (and what the PostgreSQL backend moves per query)


def check_key(key: str) -> str:
    """`key` if it is a clean relative path (no '', '.', '..' segments, no leading '/'), else StorageError."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid blob key {key!r}")
    return key


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob's size and age (and its sha256 where the backend keeps one)."""

    key: str
    size: int
    modified: datetime
    sha256: str | None = None


class OpenBlob:
    """A blob opened for reading: its info and a seekable binary file; read it in chunks, then close it."""

    def __init__(self, info: BlobInfo, file: BinaryIO) -> None:
        self.info = info
        self.file = file

    def chunks(self, start: int = 0, end: int | None = None, size: int = CHUNK) -> Iterator[bytes]:
        """The bytes [start, end) in pieces of at most `size`; StorageError if the blob ends early."""
        end = self.info.size if end is None else end
        self.file.seek(start)
        while start < end:
            piece = self.file.read(min(size, end - start))
            if not piece:
                raise StorageError(f"{self.info.key} ended at byte {start}, {end - start} bytes short")
            start += len(piece)
            yield piece

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> OpenBlob:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Storage(Protocol):
    """Where the TUF repository's metadata and targets live (hub/storage/<backend>.py)."""

    kind: str  # the `storage_backend` setting that selects it

    def describe(self) -> str:
        """Where the blobs are, for messages (no secrets)."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        ...

    def stat(self, key: str) -> BlobInfo | None:
        """The blob's info, None if there is none."""
        ...

    def open(self, key: str) -> OpenBlob:
        """The blob opened for (chunked, seekable) reading; BlobNotFound if there is none."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """The whole blob (for metadata: small); BlobNotFound if there is none."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any blob there; readers see the old or the new one, whole."""
        ...

    def write_file(self, key: str, source: Path) -> None:
        """Store the file `source` under `key` (streamed: it may be larger than memory), atomically as above."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (e.g. "metadata/"), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob under `key` (nothing if there is none)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The local file behind `key` when the backend keeps blobs as files (it may not exist), else None."""
        ...

    def lock(self) -> AbstractContextManager[None]:
        """Exclusive across every process that writes this store, for one TUF publish (see TufRepository.locked)."""
        ...


def missing(key: str, where: str) -> BlobNotFound:
    """The error for a key with no blob."""
    return BlobNotFound(f"no blob {key} in {where}")
