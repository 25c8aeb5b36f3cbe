"""SQLite serves one hub: an exclusive `flock` on `<data dir>/hub.lock`, held for the process's life.

The kernel drops the lock when the process ends however it ends (kill -9 included), so a stale file never
blocks a restart; the pid written into it only names the holder in the refusal.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hub.errors import HubError

LOCK_FILE = "hub.lock"


class DataDirInUse(HubError):
    """Another hub process serves this SQLite data dir."""

    status_code = 409


class DataDirLock:
    """Exclusive ownership of a data dir by one process."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataDirInUse naming the data dir and (if known) the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise DataDirInUse(
                f"data dir {self.path.parent.resolve()} is in use by another hub ({who}); SQLite serves one "
                "replica: run several against PostgreSQL (EDGEFLEET_HUB_DATABASE_URL)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Let another process have the data dir."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
