"""Crash-safe file primitives: atomic write, atomic symlink swap, directory fsync; the data_dir lock; removing
what a crash left half-written."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
from pathlib import Path

from agent.errors import ConfigError

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename or new file) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary sibling, fsync, rename over `path`, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` with one rename, so readers see the old or the new target, never none."""
    tmp = link.with_name(f".{link.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def fsync_file(path: Path) -> None:
    """Flush one file's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_data_dir(data_dir: Path) -> int:
    """Hold `data_dir/agent.lock` for the life of the process: two daemons on one store would resume the same
    interrupted update twice and fight over the device's MQTT client id. Returns the open descriptor."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"data_dir: another agent (pid {holder}) is running on {data_dir}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


# tuf.ngclient's Updater persists metadata through tempfile.NamedTemporaryFile(dir=<metadata dir>): `tmp` + 8.
_TUF_TEMP = re.compile(r"tmp[a-z0-9_]{8}")


def remove_crash_leftovers(data_dir: Path) -> tuple[int, int]:
    """Delete what an agent killed mid-write left in `data_dir` and nothing can use again; returns (files,
    bytes) removed. Run at start-up, before anything writes (the data_dir lock keeps other agents out).

    Removed: `.<name>.tmp` temp files of `atomic_write` and `atomic_symlink` (beside identity.json,
    events.seq, lifecycle/<model>.json and the models' slot links); half-written staging directories
    (models/<m>/versions/.<v>.tmp); version directories without a manifest that no slot points at (a
    removal cut short; staging would delete them anyway); models/.<m>.removed (an uninstall cut short);
    the same for pipelines/ (whose versions are complete with pipeline.json), pipeline-lifecycle/ and
    pipeline-specs/;
    tuf/tmp???????? (python-tuf's metadata temp files).
    Kept: everything under downloads/ and pipeline-downloads/. A `<artifact>.part` file is resumed from its size
    (agent/download.py), a verified artifact there is staged when its update resumes, and an update that failed
    its download is retried into the same directory. Also kept: SQLite's -journal/-wal files, which recover the
    outboxes."""
    doomed: list[Path] = [*data_dir.glob(".*.tmp"), *data_dir.glob("lifecycle/.*.tmp")]
    doomed += [*data_dir.glob("pipeline-lifecycle/.*.tmp"), *data_dir.glob("pipeline-specs/.*.tmp")]
    for store, marker in (("models", "manifest.json"), ("pipelines", "pipeline.json")):
        root = data_dir / store
        doomed += root.glob(".*.removed")
        for unit in (m for m in root.glob("[!.]*") if m.is_dir()):
            doomed += unit.glob(".*.tmp")
            versions = unit / "versions"
            slots = {os.readlink(link) for link in unit.glob("[!.]*") if link.is_symlink()}
            for version in versions.glob("*") if versions.is_dir() else ():
                half = version.name.startswith(".") and version.name.endswith(".tmp")
                if half or (f"versions/{version.name}" not in slots and not (version / marker).exists()):
                    doomed.append(version)
    doomed += (p for p in data_dir.glob("tuf/tmp*") if _TUF_TEMP.fullmatch(p.name))
    files = size = 0
    for path in doomed:
        try:
            if path.is_dir() and not path.is_symlink():
                inside = [p.lstat().st_size for p in path.rglob("*") if not p.is_dir() or p.is_symlink()]
                shutil.rmtree(path)
            else:
                inside = [path.lstat().st_size]
                path.unlink()
        except OSError as e:  # not worth failing the start over; the next start tries again
            log.warning("start-up: cannot remove %s: %s", path, e)
            continue
        files, size = files + max(len(inside), 1), size + sum(inside)
    return files, size
