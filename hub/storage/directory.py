"""The `directory` backend (the default): blobs are files under one directory, `<data dir>/tuf/` as always.

Writes go to a temporary `.<name>.<random>` file beside the target, are fsynced and `os.replace`d over it, so a
reader (or a crash) never sees half a file; hub start-up sweeps temp files a crash left (hub/datadir.py).
Replicas may share the directory over NFS or similar: the TUF repository's `publish.lock` lives in it, so its
flock (NFSv4 locks) already serialises every writer on every host, and this backend's own lock is a no-op.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

from hub.storage.base import BlobInfo, OpenBlob, check_key, missing

KEY = "directory"


class DirectoryStorage:
    """Blobs as files under `root`, at their keys."""

    kind = KEY

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return f"directory {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> BlobInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return BlobInfo(key=key, size=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC))

    def open(self, key: str) -> OpenBlob:
        try:
            f = self._path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise missing(key, self.describe()) from e
        st = os.fstat(f.fileno())
        return OpenBlob(BlobInfo(key=key, size=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC)), f)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise missing(key, self.describe()) from e

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)

    def write_file(self, key: str, source: Path) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(source, path)

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        found = []
        for path in base.rglob("*"):
            rel = path.relative_to(self.root)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):  # temp files are dotted
                found.append(rel.as_posix())
        return sorted(found)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        """The file for `key`, refused (BlobNotFound) if a symlink leads it out of `root`."""
        path = self._path(key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise missing(key, self.describe())
        return path

    def lock(self) -> AbstractContextManager[None]:
        return nullcontext()  # the repository's flock on <root>/publish.lock covers this directory


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
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


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy `src` to a temp file beside `dest`, then rename over it."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
