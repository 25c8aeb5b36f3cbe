"""Who runs the singleton jobs: the replica holding a PostgreSQL advisory-lock lease (on SQLite, the one process).

`LeaderLease` keeps one dedicated connection (never from the pool) for the replica's life. Every `poll_s` a
follower tries `pg_try_advisory_lock(leader key)` on it and the leader sends `SELECT 1` on it. The lock is
session-scoped, so it frees when the holder's session ends:
- at once when the process dies (the kernel closes its socket and the backend reads EOF);
- ~5 s after its host vanished (server-side TCP keepalives, set on this connection);
- `idle_timeout_s` after a hung or frozen leader sent its last heartbeat (`idle_session_timeout`).
A leader whose heartbeat fails (libpq keepalives and `tcp_user_timeout` give up after ~5 s of silence; or
its session was ended) steps down on its own. The jobs are guarded in the database too (row locks,
optimistic checks), so a stale leader overlapping its successor for a moment cannot advance a wave twice.
The same connection holds the `replicas` lock shared: a starting replica that can take it exclusively knows
it is alone (and may sweep crash leftovers from the shared data dir).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import Engine

from hub.cluster import locks

log = logging.getLogger(__name__)
Connector = Callable[[], "psycopg.Connection[Any]"]
LeadershipCallback = Callable[[bool], None]
# libpq: probe an idle connection after 2 s, 3 probes 1 s apart; give up on unacknowledged data after 5 s.
CLIENT_TCP = {"keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 3,
              "tcp_user_timeout": 5000, "connect_timeout": 5}  # fmt: skip
# The server's side of the same connection: a vanished leader host frees the lock in ~5 s.
SERVER_TCP = {"tcp_keepalives_idle": 2, "tcp_keepalives_interval": 1, "tcp_keepalives_count": 3}


class Leadership:
    """`is_leader` plus change callbacks; subclasses decide when leadership starts and ends."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.is_leader = threading.Event()
        self._callbacks: list[LeadershipCallback] = []
        self._changing = threading.Lock()

    def on_change(self, callback: LeadershipCallback) -> None:
        """Call `callback(True)` when this replica becomes the leader and `callback(False)` when it stops."""
        self._callbacks.append(callback)

    def start(self) -> None:
        """Begin taking part in the election."""

    def stop(self) -> None:
        """Step down (callbacks run first) and leave the election."""
        self._become(False, "stopping")

    def _become(self, leader: bool, reason: str) -> None:
        with self._changing:
            if leader == self.is_leader.is_set():
                return
            if leader:
                self.is_leader.set()
                log.info("replica %s is the leader (%s)", self.replica, reason)
            else:
                self.is_leader.clear()
                log.warning("replica %s is no longer the leader (%s)", self.replica, reason)
            for callback in list(self._callbacks):
                try:
                    callback(leader)
                except Exception:
                    log.exception("leadership change callback %r failed", callback)


class SoleLeader(Leadership):
    """SQLite: one hub process per data dir (dirlock.py), so it leads from start to stop."""

    def start(self) -> None:
        self._become(True, "SQLite: the only replica")


class LeaderLease(Leadership):
    """A session advisory lock on a dedicated PostgreSQL connection, tried or checked every `poll_s`."""

    def __init__(self, *, connect: Connector, poll_s: float, replica: str, idle_timeout_s: float | None = None) -> None:
        super().__init__(replica)
        self.poll_s = poll_s
        self.idle_timeout_s = idle_timeout_s if idle_timeout_s is not None else max(5.0, 3 * poll_s)
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._leader_key = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reachable = True  # log a lost database once, not every poll

    def register(self) -> bool:
        """Open the lease connection and count this replica in; True if no other replica was running."""
        return self._open()

    def start(self) -> None:
        """One round now (a lone replica leads before its bridge connects), then one every `poll_s`."""
        self._stop.clear()
        self.poll()
        self._thread = threading.Thread(target=self._run, name="hub-leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling, step down (the jobs stop while the lock is still held), then close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        super().stop()
        self._close()

    def poll(self) -> bool:
        """One round: reconnect if needed, then heartbeat (leader) or try for the lock (follower)."""
        try:
            if self._conn is None:
                self._open()
            assert self._conn is not None
            if self.is_leader.is_set():
                self._conn.execute("SELECT 1")
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._leader_key,)).fetchone()
                if row is not None and row[0]:
                    self._become(True, "took the leader lease")
            if not self._reachable:
                log.info("leader lease: database reachable again")
                self._reachable = True
        except psycopg.Error as e:
            self._lost(e)
        return self.is_leader.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def _open(self) -> bool:
        self._close()
        conn = self._connect()
        try:
            conn.execute(f"SET idle_session_timeout = {int(self.idle_timeout_s * 1000)}")  # a silent leader loses it
            tags = (locks.tag(locks.LEADER), locks.tag(locks.REPLICAS))
            keys = conn.execute(f"SELECT {locks.key_sql('%s')}, {locks.key_sql('%s')}", tags).fetchone()
            leader_key, replicas_key = keys if keys is not None else (0, 0)
            alone_row = conn.execute("SELECT pg_try_advisory_lock(%s)", (replicas_key,)).fetchone()
            alone = bool(alone_row and alone_row[0])
            if alone:
                conn.execute("SELECT pg_advisory_unlock(%s)", (replicas_key,))
            conn.execute("SELECT pg_advisory_lock_shared(%s)", (replicas_key,))
        except BaseException:
            conn.close()
            raise
        self._conn, self._leader_key = conn, int(leader_key)
        return alone

    def _lost(self, error: psycopg.Error) -> None:
        if self._reachable:
            log.warning("leader lease: database connection failed: %s", str(error).strip() or type(error).__name__)
            self._reachable = False
        self._close()
        self._become(False, "lost the lease connection")

    def _close(self) -> None:
        """Closing the session releases its advisory locks (the lease and the replica's shared lock)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def pg_connector(engine: Engine, *, application_name: str) -> Connector:
    """Dedicated autocommit psycopg connections to `engine`'s database, with keepalives on both ends."""
    _args, params = engine.dialect.create_connect_args(engine.url)
    params = {k: v for k, v in params.items() if k != "context"} | CLIENT_TCP
    params["application_name"] = application_name[:63]

    def connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(autocommit=True, **params)
        try:
            for name, value in SERVER_TCP.items():
                conn.execute(f"SET {name} = {int(value)}")
        except BaseException:
            conn.close()
            raise
        return conn

    return connect
