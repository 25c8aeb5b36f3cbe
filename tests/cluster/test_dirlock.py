"""SQLite's one-replica rule: an exclusive lock on the data dir, refused with the holder's pid."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hub.cluster.dirlock import DataDirInUse, DataDirLock


def test_sqlite_data_dir_lock_refuses_a_second_holder_naming_dir_and_pid(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path / "data")
    first.acquire()
    with pytest.raises(DataDirInUse) as refused:
        DataDirLock(tmp_path / "data").acquire()
    message = str(refused.value)
    assert str((tmp_path / "data").resolve()) in message and f"pid {os.getpid()}" in message
    assert "\n" not in message
    first.release()
    again = DataDirLock(tmp_path / "data")
    again.acquire()
    again.release()
