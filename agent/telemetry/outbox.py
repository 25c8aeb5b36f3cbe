"""Store-and-forward outbox: rows wait in SQLite until the hub acknowledges them.

WAL + synchronous=FULL: a row whose `put` returned survives kill -9 and power loss. Batched
inserts (one transaction per `put_many`). Bounded by bytes and age; the policy is one of
  - drop_oldest (default): make room by deleting the oldest rows (recent data is worth more
    for health gates and drift), counting what was dropped;
  - refuse_newest: keep the backlog intact and refuse new rows, counting them.
Dropped and refused counts live in the database and are reported with the next message sent.
Start-up reads two counters, never scans the backlog.

Plain `sqlite3`: every statement here is hand-tuned SQL inside explicit transactions (ids taken from
sqlite_sequence, counters bumped in the same commit), which is not what sqlite-utils is for; importing
it (with pluggy, dateutil, tabulate) cost the daemon ~2 MB of RSS for a connection wrapper.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.errors import StoreError

log = logging.getLogger(__name__)
Policy = Literal["drop_oldest", "refuse_newest"]
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # result codes of a damaged file / not a database at all


@dataclass(frozen=True)
class OutboxRow:
    id: int
    channel: str
    payload: str
    created: float


class Outbox:
    """A bounded, ordered, crash-safe queue of payloads per channel."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 50 * 2**20,
        max_age_s: float = 7 * 86400,
        policy: Policy = "drop_oldest",
        clock: Callable[[], float] = time.time,
        shared: bool = False,
    ) -> None:
        """`shared`: the connection may be used from several threads (the caller serialises the calls)."""
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.policy = policy
        self._clock = clock
        self.recovered: Path | None = None  # where a corrupt file found at start-up was moved
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._open(path, shared)
        except sqlite3.DatabaseError as e:
            if e.sqlite_errorcode not in (SQLITE_CORRUPT, SQLITE_NOTADB):
                raise StoreError(f"{path}: {e}") from e  # unwritable, locked, ...: a readable line, not a traceback
            # A damaged file (a power cut on a bad SD card, a stray write) must not stop the agent at every start:
            # it is kept aside for inspection and a new, empty outbox takes its place.
            self.recovered = path.with_name(f"{path.name}.corrupt-{int(self._clock())}")
            for suffix in ("", "-wal", "-shm"):
                damaged = path.with_name(path.name + suffix)
                if damaged.exists():
                    damaged.rename(self.recovered.with_name(self.recovered.name + suffix))
            log.error("%s is not a readable SQLite database (%s): moved to %s, starting an empty one",
                      path, e, self.recovered)  # fmt: skip
            self.db = self._open(path, shared)

    @staticmethod
    def _open(path: Path, shared: bool) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=not shared, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rows'").fetchone():
                db.execute(
                    "CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, "
                    "payload TEXT NOT NULL, bytes INTEGER NOT NULL, created REAL NOT NULL)"
                )
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
                with db:
                    for key in ("bytes", "rows", "dropped", "refused", "reported"):
                        db.execute("INSERT OR IGNORE INTO meta VALUES (?, 0)", [key])
            db.execute("SELECT value FROM meta WHERE key = 'rows'").fetchone()
        except sqlite3.Error:
            db.close()
            raise
        return db

    def meta(self, key: str, default: int = 0) -> int:
        """A counter stored with `put_many(set_meta=...)` (or one of the outbox's own)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return int(row[0]) if row else default

    def _bump(self, key: str, delta: int) -> None:
        self.db.execute("UPDATE meta SET value = value + ? WHERE key = ?", [delta, key])

    def put(self, channel: str, payload: str) -> int | None:
        """Store one payload; its id, or None when refused (refuse_newest policy, full)."""
        ids = self.put_many([(channel, payload)])
        return ids[0]

    def put_many(self, items: Iterable[tuple[str, str]], *, set_meta: dict[str, int] | None = None) -> list[int | None]:
        """Store payloads in one transaction, in order; None for each refused one.

        `set_meta` stores counters of the caller's in the same transaction (e.g. the event sequence
        number that goes with the row), so a crash never separates the two.
        """
        now = self._clock()
        batch = [(ch, p, len(p.encode("utf-8"))) for ch, p in items]
        accept = self._admit([size for _, _, size in batch])
        kept = [(ch, p, size, now) for (ch, p, size), ok in zip(batch, accept, strict=True) if ok]
        with self.db:
            self._expire(now)
            refused = len(batch) - len(kept)
            if refused:
                self._bump("refused" if self.policy == "refuse_newest" else "dropped", refused)
            if kept and not self._make_room(sum(r[2] for r in kept)):
                self._bump("refused", len(kept))
                kept, accept = [], [False] * len(batch)
            row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'rows'").fetchone()
            first = (int(row[0]) if row else 0) + 1  # AUTOINCREMENT: ids are sequential in one transaction
            self.db.executemany("INSERT INTO rows (channel, payload, bytes, created) VALUES (?, ?, ?, ?)", kept)
            self._bump("bytes", sum(r[2] for r in kept))
            self._bump("rows", len(kept))
            for key, value in (set_meta or {}).items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])
        ids = iter(range(first, first + len(kept)))
        return [next(ids) if ok else None for ok in accept]

    def _admit(self, sizes: list[int]) -> list[bool]:
        """Which rows of a batch can be stored at all, before making room in the backlog."""
        if self.policy == "refuse_newest":
            room, out = self.max_bytes - self.meta("bytes"), []
            for size in sizes:
                out.append(size <= room)
                room -= size if size <= room else 0
            return out
        # drop_oldest: a batch bigger than the whole cap keeps its newest rows.
        room, out = self.max_bytes, []
        for size in reversed(sizes):
            out.append(size <= room)
            room -= size if size <= room else 0
        return out[::-1]

    def _make_room(self, size: int) -> bool:
        over = self.meta("bytes") + size - self.max_bytes
        if over <= 0:
            return True
        if self.policy == "refuse_newest":
            return False
        freed, doomed = 0, []
        for row_id, row_bytes in self.db.execute("SELECT id, bytes FROM rows ORDER BY id"):
            doomed.append(row_id)
            freed += row_bytes
            if freed >= over:
                break
        self._delete(doomed, freed)
        self._bump("dropped", len(doomed))
        return True

    def _expire(self, now: float) -> None:
        old = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM rows WHERE created < ?", [now - self.max_age_s]
        ).fetchone()
        if old[0]:
            self.db.execute("DELETE FROM rows WHERE created < ?", [now - self.max_age_s])
            self._bump("bytes", -int(old[1]))
            self._bump("rows", -int(old[0]))
            self._bump("dropped", int(old[0]))

    def _delete(self, ids: Sequence[int], size: int) -> None:
        self.db.execute(f"DELETE FROM rows WHERE id IN ({','.join('?' * len(ids))})", list(ids))
        self._bump("bytes", -size)
        self._bump("rows", -len(ids))

    def pending(self, limit: int = 100, channel: str | None = None, after: int = 0) -> list[OutboxRow]:
        """The oldest rows with an id above `after`, in order (an index range scan, whatever the backlog)."""
        where, args = ("AND channel = ?", [channel]) if channel else ("", [])
        rows = self.db.execute(
            f"SELECT id, channel, payload, created FROM rows WHERE id > ? {where} ORDER BY id LIMIT ?",
            [after, *args, limit],
        ).fetchall()
        return [OutboxRow(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged rows; unknown ids (already acked) are ignored."""
        wanted = list(ids)
        if not wanted:
            return 0
        with self.db:
            marks = ",".join("?" * len(wanted))
            row = self.db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM rows WHERE id IN ({marks})", wanted
            ).fetchone()
            if row[0]:
                self._delete(wanted, int(row[1]))
        return int(row[0])

    def unreported_drops(self) -> int:
        """Rows dropped or refused since the last `mark_reported` (to put in the next message)."""
        return self.meta("dropped") + self.meta("refused") - self.meta("reported")

    def mark_reported(self, count: int) -> None:
        with self.db:
            self._bump("reported", count)

    def stats(self) -> dict[str, int]:
        return {k: self.meta(k) for k in ("rows", "bytes", "dropped", "refused")}

    def integrity_ok(self) -> bool:
        return bool(self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def close(self) -> None:
        self.db.close()
