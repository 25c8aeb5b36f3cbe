"""The SQLite outbox: ordered, bounded, crash-safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.telemetry import Outbox

WRITER = """
import sys
from pathlib import Path
from agent.telemetry import Outbox
box = Outbox(Path(sys.argv[1]), max_bytes=10**9)
i = 0
while True:
    ids = box.put_many([("telemetry", "x" * 200 + str(i + k)) for k in range(7)])
    i += 7
    print(*ids, flush=True)   # printed only after the transaction committed
"""


def test_order_ack_and_restart(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    ids = box.put_many([("telemetry", f"p{i}") for i in range(10)])
    assert ids == sorted(ids) and None not in ids
    assert [r.payload for r in box.pending(3)] == ["p0", "p1", "p2"]
    assert box.ack(ids[:3]) == 3 and box.ack(ids[:3]) == 0  # duplicate acks are harmless
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert [r.payload for r in again.pending(100)] == [f"p{i}" for i in range(3, 10)]
    assert again.stats()["rows"] == 7


def test_drop_oldest_stays_under_cap_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10_000)
    for i in range(200):
        box.put("telemetry", f"{i:04d}" + "x" * 96)  # 100 bytes each
    st = box.stats()
    assert st["bytes"] <= 10_000 and st["rows"] == 100 and st["dropped"] == 100
    assert box.pending(1)[0].payload.startswith("0100")  # the newest 100 survive, in order
    assert box.unreported_drops() == 100
    box.mark_reported(100)
    assert box.unreported_drops() == 0


def test_refuse_newest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=1_000, policy="refuse_newest")
    ids = [box.put("telemetry", "y" * 100) for _ in range(15)]
    assert ids.count(None) == 5 and box.stats()["refused"] == 5
    assert box.pending(1)[0].id == ids[0]


def test_age_limit(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "o.db", max_age_s=60, clock=lambda: now[0])
    box.put("telemetry", "old")
    now[0] += 61
    box.put("telemetry", "new")
    assert [r.payload for r in box.pending(10)] == ["new"] and box.stats()["dropped"] == 1


def test_big_backlog_opens_and_serves_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for start in range(0, 50_000, 5_000):
        box.put_many([("telemetry", f"{i}") for i in range(start, start + 5_000)])
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert again.stats()["rows"] == 50_000  # from the counters, not a scan
    assert [r.payload for r in again.pending(3)] == ["0", "1", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_kill_9_loses_nothing_committed(tmp_path: Path, seed: int) -> None:
    db = tmp_path / "o.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    committed: list[int] = []
    deadline = time.monotonic() + 0.3 + seed * 0.17
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            committed += [int(v) for v in line.split()]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:  # lines printed just before the kill
        committed += [int(v) for v in line.split() if v.isdigit()]
    assert committed, "the writer committed something before it was killed"
    box = Outbox(db, max_bytes=10**9)
    assert box.integrity_ok()
    stored = {r.id for r in box.pending(10**6)}
    assert set(committed) <= stored
    assert box.stats()["rows"] == len(stored)  # counters consistent with the rows after the crash
