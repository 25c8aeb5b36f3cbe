"""A model file versioned with DVC: read through `dvc.api.open` at a git revision (the `edgefleet[dvc]` extra),
with the repository, revision, path and DVC md5 kept for the manifest."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from converter.errors import ModelLoadError
from converter.sources.base import first_line
from protocol.manifest import SourceRef


@contextlib.contextmanager
def fetch_from_dvc(repo: str, rev: str | None, path: Path) -> Iterator[tuple[Path, SourceRef]]:
    """The model at `path` in `repo` at `rev` (default: the repository's HEAD), as a local temporary copy."""
    try:
        import dvc.api
        from dvc.api import DVCFileSystem
    except ImportError as e:
        raise ModelLoadError("reading models from DVC needs the dvc extra: pip install 'edgefleet[dvc]'") from e
    where = f"{path} in DVC repo {repo}" + (f" at {rev}" if rev else "")
    rpath = path.as_posix()
    with tempfile.TemporaryDirectory(prefix="edgefleet-dvc-") as tmp:
        local = Path(tmp, path.name)
        try:
            fs = DVCFileSystem(repo, rev=rev)
            info = fs.info(rpath)
            if info.get("type") == "directory":  # a SavedModel directory: dvc.api.open reads files only
                fs.get(rpath, str(local), recursive=True)
            else:
                with dvc.api.open(rpath, repo=repo, rev=rev, mode="rb") as src, local.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            md5 = (info.get("dvc_info") or {}).get("md5") or info.get("md5")
            commit = _commit(fs, rev)
        except ModelLoadError:
            raise
        except FileNotFoundError as e:
            raise ModelLoadError(f"{where}: no such file at that revision") from e
        except Exception as e:  # dvc and scmrepo raise their own types for a bad repo, rev or remote
            raise ModelLoadError(f"{where}: {type(e).__name__}: {first_line(e)}") from e
        if md5 is None:
            raise ModelLoadError(f"{where}: not tracked by DVC (no md5 for it at that revision)")
        ref = SourceRef(kind="dvc", sha256="0" * 64, dvc_repo=repo, dvc_rev=rev or "HEAD", dvc_commit=commit,
                        dvc_path=rpath, dvc_md5=md5)
        yield local, ref


def _commit(fs: object, rev: str | None) -> str | None:
    """The git commit the revision resolved to, where DVC says."""
    try:
        scm = fs.repo.scm  # type: ignore[attr-defined]
        return str(scm.resolve_rev(rev or "HEAD"))
    except Exception:  # a repository without git history of its own (a URL DVC cloned): the rev stays as given
        return None
