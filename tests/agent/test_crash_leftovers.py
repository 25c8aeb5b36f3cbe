"""Start-up removes what a killed agent left half-written in its data dir, and keeps what it will resume."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import fsutil, store
from agent.daemon import Agent
from agent.fsutil import atomic_symlink, atomic_write, remove_crash_leftovers
from agent.lifecycle import UpdateRecord
from agent.store import ModelStore
from tests.agent.builders import make_manifest, onnx_linear


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even `except OSError` clean-ups."""


def _killed(*_args: object) -> None:
    raise Killed


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir as a crashed agent leaves it: every leftover made by the code that writes it, killed mid-way."""
    root = tmp_path / "device"
    models = ModelStore(root / "models")
    for version in (1, 2):
        artifact = onnx_linear(tmp_path / f"lin_v{version}.onnx", seed=version)
        manifest = make_manifest(artifact, version=version)
        models.stage(manifest, manifest.to_json().encode(), artifact)
        models.activate("demo", version)
    atomic_write(root / "events.seq", b"0")
    atomic_write(root / "lifecycle" / "demo.json", UpdateRecord(name="demo").model_dump_json().encode())
    (root / "outbox.sqlite").write_bytes(b"db")
    (root / "outbox.sqlite-journal").write_bytes(b"hot journal: recovers the outbox")
    downloads = root / "downloads" / "demo"
    (downloads / "4").mkdir(parents=True)
    (downloads / "4" / "lin_v4.onnx.part").write_bytes(b"x" * 700)  # resumed from byte 700 at the next start
    (downloads / "5").mkdir()
    (downloads / "5" / "lin_v5.onnx").write_bytes(b"verified, not yet staged")
    (root / "tuf").mkdir()
    (root / "tuf" / "timestamp.json").write_bytes(b"{}")
    with monkeypatch.context() as m:  # the kills
        m.setattr(fsutil.os, "replace", _killed)
        for path, data in ((root / "events.seq", b"x" * 40), (root / "lifecycle" / "demo.json", b"y" * 30)):
            with pytest.raises(Killed):
                atomic_write(path, data)
        with pytest.raises(Killed):
            atomic_symlink(root / "models" / "demo" / "staged", "versions/3")
        m.setattr(store.os, "replace", _killed)
        artifact = onnx_linear(tmp_path / "lin_v3.onnx", seed=3)
        with pytest.raises(Killed):
            models.stage(make_manifest(artifact, version=3), b"{}", artifact)
    gone = root / "models" / "demo" / "versions" / "0"  # a garbage collection cut short: no manifest left
    gone.mkdir()
    (gone / "lin_v0.onnx").write_bytes(b"z" * 50)
    (root / "models" / ".old.removed" / "versions" / "9").mkdir(parents=True)  # an uninstall cut short
    (root / "models" / ".old.removed" / "versions" / "9" / "m.onnx").write_bytes(b"w" * 20)
    with tempfile.NamedTemporaryFile(dir=root / "tuf", delete=False) as f:  # as python-tuf persists metadata
        f.write(b"t" * 10)
    return root


def leftovers(data_dir: Path) -> tuple[set[str], int]:
    """What the fixture's kills left (relative paths) and their size."""
    tuf_temp = next(p for p in (data_dir / "tuf").iterdir() if p.name.startswith("tmp"))
    gone = {
        ".events.seq.tmp",
        "lifecycle/.demo.json.tmp",
        "models/demo/.staged.tmp",
        "models/demo/versions/.3.tmp/manifest.json",
        "models/demo/versions/.3.tmp/lin_v3.onnx",
        "models/demo/versions/0/lin_v0.onnx",
        "models/.old.removed/versions/9/m.onnx",
        f"tuf/{tuf_temp.name}",
    }
    return gone, sum(os.lstat(data_dir / p).st_size for p in gone)


def test_start_up_removes_half_written_files_and_keeps_resumable_downloads(data_dir: Path) -> None:
    before = _files(data_dir)
    gone, size = leftovers(data_dir)
    assert gone <= before

    assert remove_crash_leftovers(data_dir) == (8, size)

    assert _files(data_dir) == before - gone
    for kept in ("downloads/demo/4/lin_v4.onnx.part", "downloads/demo/5/lin_v5.onnx", "outbox.sqlite-journal"):
        assert kept in _files(data_dir)
    models = ModelStore(data_dir / "models")
    assert (models.slot_version("demo", "active"), models.slot_version("demo", "previous")) == (2, 1)
    assert sorted(p.name for p in (data_dir / "models").iterdir()) == ["demo"]
    assert sorted(p.name for p in (data_dir / "models" / "demo" / "versions").iterdir()) == ["1", "2"]
    assert remove_crash_leftovers(data_dir) == (0, 0)


def test_a_version_a_slot_points_at_is_kept_even_without_its_manifest(tmp_path: Path) -> None:
    versions = tmp_path / "models" / "demo" / "versions"
    (versions / "3").mkdir(parents=True)
    (versions / "3" / "lin_v3.onnx").write_bytes(b"no manifest")
    atomic_symlink(tmp_path / "models" / "demo" / "active", "versions/3")
    assert remove_crash_leftovers(tmp_path) == (0, 0)  # a broken store is reported by the store, not deleted here
    assert (versions / "3" / "lin_v3.onnx").exists()


def test_an_empty_or_missing_data_dir_has_nothing_to_remove(tmp_path: Path) -> None:
    assert remove_crash_leftovers(tmp_path / "never-made") == (0, 0)
    (tmp_path / "models" / "stray-file").parent.mkdir()
    (tmp_path / "models" / "stray-file").write_bytes(b"")
    assert remove_crash_leftovers(tmp_path) == (0, 0)


@pytest.mark.integration
def test_the_agent_says_at_start_how_much_it_removed(
    data_dir: Path, make_agent: Callable[[], Agent], caplog: pytest.LogCaptureFixture
) -> None:
    """`make_agent` runs in tmp_path/"device", the data dir the fixture above filled."""
    _, size = leftovers(data_dir)
    assert size < 100_000  # tiny models: said in bytes
    with caplog.at_level(logging.INFO, logger="agent.daemon"):
        agent = make_agent()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("start-up: removed")]
    assert lines == [f"start-up: removed 8 files ({size} bytes) a crash left in {data_dir}"]
    assert agent.store.slot_version("demo", "active") == 2
    assert (data_dir / "downloads" / "demo" / "4" / "lin_v4.onnx.part").stat().st_size == 700
