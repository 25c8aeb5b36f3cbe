"""A/B model store on disk: complete version directories, and `active`/`previous`/`staged` symlinks.

    <root>/<model>/versions/<v>/manifest.json + <artifact>   written as `.<v>.tmp`, then renamed
    <root>/<model>/active   -> versions/<v>                  swapped with one atomic rename
    <root>/<model>/previous -> versions/<v>                  what a rollback returns to
    <root>/<model>/staged   -> versions/<v>                  verified, not yet active

A version directory only ever appears complete, and every slot changes with one rename, so a crash
at any instant leaves the old or the new model active, never a half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from agent.errors import StoreError
from agent.fsutil import atomic_symlink, fsync_dir, fsync_file
from protocol.manifest import Manifest

SLOTS = ("active", "previous", "staged")


class SlotStore:
    """Installed units (models, pipelines) by name, with active, previous and staged slots.

    A version directory is complete when it holds `MARKER` (written last, before the rename that publishes it)."""

    MARKER = "manifest.json"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        """Every unit with at least one installed version."""
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir() and not p.name.startswith("."))

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / name / "versions" / str(version)

    def installed(self, name: str, version: int) -> bool:
        return (self.version_dir(name, version) / self.MARKER).exists()

    def slot_version(self, name: str, slot: str) -> int | None:
        """The version a slot points at, or None when it is empty."""
        try:
            target = os.readlink(self.root / name / slot)
        except (FileNotFoundError, OSError):
            return None
        try:
            return int(Path(target).name)
        except ValueError as e:
            raise StoreError(f"{name}/{slot} points at {target!r}, not a version directory") from e

    def publish(self, name: str, version: int, fill: Callable[[Path], None]) -> Path:
        """Make a complete version directory, unless one is there: `fill(tmp)` writes its files into a
        temporary directory, which is fsynced and renamed into place; then point `staged` at it."""
        final = self.version_dir(name, version)
        if not self.installed(name, version):
            tmp = final.with_name(f".{version}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            fill(tmp)
            for f in tmp.rglob("*"):
                if f.is_file():
                    fsync_file(f)
            for d in (*(p for p in tmp.rglob("*") if p.is_dir()), tmp):
                fsync_dir(d)
            if final.exists():  # a directory without its marker was never complete
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        atomic_symlink(self.root / name / "staged", f"versions/{version}")
        return final

    def activate(self, name: str, version: int) -> None:
        """Make `version` active and the old active `previous`; idempotent when re-run after a crash."""
        if not self.installed(name, version):
            raise StoreError(f"{name} v{version} is not installed")
        current = self.slot_version(name, "active")
        if current != version:
            if current is not None:
                atomic_symlink(self.root / name / "previous", f"versions/{current}")
            atomic_symlink(self.root / name / "active", f"versions/{version}")
        if self.slot_version(name, "staged") == version:
            self._clear(name, "staged")

    def roll_back(self, name: str, to_version: int | None) -> None:
        """Make `to_version` active again (None: no model), forget `previous` if it is that version."""
        if to_version is None:
            self._clear(name, "active")
        elif self.slot_version(name, "active") != to_version:
            if not self.installed(name, to_version):
                raise StoreError(f"{name} v{to_version} is gone; cannot roll back to it")
            atomic_symlink(self.root / name / "active", f"versions/{to_version}")
        if self.slot_version(name, "previous") == to_version:
            self._clear(name, "previous")
        self._clear(name, "staged")

    def collect_garbage(self, name: str) -> None:
        """Delete version directories no slot points at (and leftovers of interrupted staging)."""
        keep = {str(v) for v in (self.slot_version(name, s) for s in SLOTS) if v is not None}
        versions = self.root / name / "versions"
        if not versions.is_dir():
            return
        for entry in versions.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    def remove(self, name: str) -> None:
        """Delete every version of `name`: one rename takes it out of the store, then its files go.

        A crash after the rename leaves only a `.<name>.removed` leftover, which the next call (or
        `clean_leftovers`) deletes; a crash before it leaves the model installed as it was.
        """
        folder = self.root / name
        doomed = self.root / f".{name}.removed"
        if folder.exists():
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(folder, doomed)
            fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)

    def clean_leftovers(self) -> None:
        """Finish removals a crash interrupted."""
        for leftover in self.root.glob(".*.removed"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _clear(self, name: str, slot: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name / slot).unlink()
            fsync_dir(self.root / name)


class ModelStore(SlotStore):
    """Installed models: a version directory holds `manifest.json` and the artifact it names."""

    def manifest(self, name: str, version: int) -> Manifest:
        """The stored manifest of one installed version."""
        path = self.version_dir(name, version) / "manifest.json"
        try:
            return Manifest.from_json(path.read_bytes())
        except (OSError, ValueError) as e:
            raise StoreError(f"{name} v{version}: unreadable manifest: {e}") from e

    def artifact(self, name: str, version: int) -> Path:
        """Path of the artifact file of one installed version."""
        return self.version_dir(name, version) / self.manifest(name, version).artifact.file

    def stage(self, manifest: Manifest, manifest_bytes: bytes, artifact: Path) -> Path:
        """Move a verified artifact and its manifest into a complete version dir and point `staged` at it."""

        def fill(tmp: Path) -> None:
            shutil.copyfile(artifact, tmp / manifest.artifact.file)
            (tmp / "manifest.json").write_bytes(manifest_bytes)

        return self.publish(manifest.name, manifest.version, fill)
