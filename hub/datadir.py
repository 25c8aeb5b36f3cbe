"""The data dir's hygiene at start-up: owner-only modes for what holds secrets, and what a crash left removed.

The data dir holds the SQLite database (token and broker-password hashes), the admin token, the hub's broker
password and the TUF signing keys: it is 0700 and those files 0600, whatever the umask was when they were
made. A push killed mid-way leaves its `edgefleet-push-*` folder (the whole upload); an atomic write killed
between its temp file and the rename leaves a `.<name>.*` file beside the target. Neither is ever read again,
so start-up removes them and says how much it freed; replicas sharing the data dir leave the sweep to one
that starts alone (hub/services.py), as another's upload in progress is no leftover."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from hub.uploads import PUSH_DIR_PREFIX

log = logging.getLogger(__name__)

SECRET_FILES = ("admin_token", "mqtt_hub_password", "hub.db", "hub.db-wal", "hub.db-shm")


def secure(data_dir: Path, *, sqlite_here: bool) -> None:
    """0700 for the data dir, 0600 for its secrets and database (created empty first, so SQLite keeps 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    if sqlite_here:
        (data_dir / "hub.db").touch(mode=0o600, exist_ok=True)
    for name in SECRET_FILES:
        path = data_dir / name
        if path.exists():
            os.chmod(path, 0o600)


def remove_crash_leftovers(data_dir: Path, tuf_dir: Path) -> tuple[int, int]:
    """Delete interrupted pushes and atomic-write temp files; returns (entries removed, bytes freed)."""
    removed = freed = 0
    for folder in data_dir.glob(PUSH_DIR_PREFIX + "*"):
        if folder.is_dir() and not folder.is_symlink():
            freed += _size(folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    for temp in tuf_dir.rglob(".*"):  # storage/directory.py atomic_write / atomic_copy: `.<name>.<random>`
        if temp.is_file() and not temp.is_symlink():
            freed += temp.stat().st_size
            temp.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.warning("start-up: removed %d leftovers of an interrupted run from %s (%.1f MB)",
                    removed, data_dir, freed / 1e6)  # fmt: skip
    return removed, freed


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
