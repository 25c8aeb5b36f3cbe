"""The events outbox: numbered lifecycle events stored with their seq in one transaction, kept until acked."""

from __future__ import annotations

import json
from pathlib import Path

from agent.metrics import AgentMetrics
from agent.reporting import EventLog
from protocol.messages import EventKind


def test_seq_and_row_commit_together_and_numbering_continues(tmp_path: Path) -> None:
    log = EventLog("dev-1", tmp_path, AgentMetrics())
    for i in range(3):
        log.emit(EventKind.FAILED, reason=f"r{i}")
    pending = log.pending(after=0, limit=10)
    assert [seq for _, seq, _ in pending] == [1, 2, 3]
    assert [json.loads(p)["reason"] for _, _, p in pending] == ["r0", "r1", "r2"]
    assert log.delete([pending[0][0]]) == 1
    log.close()
    (tmp_path / "events.seq").unlink()  # the database alone knows the last seq
    again = EventLog("dev-1", tmp_path, AgentMetrics())
    assert again.seq == 3 and [seq for _, seq, _ in again.pending(after=0, limit=10)] == [2, 3]
    assert again.emit(EventKind.COMMITTED).seq == 4
    assert (tmp_path / "events.seq").read_text() == "4"
    again.close()


def test_a_data_dir_from_before_the_outbox_keeps_counting_from_its_seq_file(tmp_path: Path) -> None:
    (tmp_path / "events.seq").write_text("41")  # the hub has seqs 1..41 and drops repeats
    log = EventLog("dev-1", tmp_path, AgentMetrics())
    assert log.emit(EventKind.COMMITTED).seq == 42
    log.close()


def test_over_the_cap_the_oldest_events_are_dropped_and_counted(tmp_path: Path) -> None:
    log = EventLog("dev-1", tmp_path, AgentMetrics(), max_bytes=4096)
    for i in range(40):
        log.emit(EventKind.FAILED, reason="x" * 100 + str(i))
    stats = log.stats()
    seqs = [seq for _, seq, _ in log.pending(after=0, limit=100)]
    assert stats["bytes"] <= 4096 and stats["dropped"] > 0 and stats["seq"] == 40
    assert seqs == list(range(41 - len(seqs), 41)) and len(seqs) + stats["dropped"] == 40  # newest kept, in order
    log.close()


def test_a_damaged_database_is_kept_aside_and_numbering_continues(tmp_path: Path) -> None:
    log = EventLog("dev-1", tmp_path, AgentMetrics())
    for _ in range(3):
        log.emit(EventKind.HEALTH)
    log.outbox.close()
    damaged = tmp_path / "events.sqlite"
    damaged.write_bytes(b"\x00garbage left by a power cut on a worn SD card" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"events.sqlite{suffix}").unlink(missing_ok=True)

    again = EventLog("dev-1", tmp_path, AgentMetrics())
    moved = again.outbox.recovered
    assert moved is not None and moved.name.startswith("events.sqlite.corrupt-")
    assert moved.read_bytes().startswith(b"\x00garbage")  # kept for inspection, not deleted
    assert again.emit(EventKind.HEALTH).seq == 4  # the seq file carries on: the hub's (device, seq) dedupe holds
    assert [seq for _, seq, _ in again.pending(after=0, limit=10)] == [4]


def test_an_unusable_database_path_is_one_readable_error(tmp_path: Path) -> None:
    import pytest

    from agent.errors import StoreError
    from agent.telemetry.outbox import Outbox

    (tmp_path / "outbox.sqlite").mkdir()  # e.g. a path that cannot be opened as a file
    with pytest.raises(StoreError, match=r"outbox\.sqlite: unable to open database file"):
        Outbox(tmp_path / "outbox.sqlite")
