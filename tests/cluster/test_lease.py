"""The leader lease and the cluster locks against the real PostgreSQL: one winner, hand-over, step-down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from hub.cluster import locks
from hub.cluster.leader import LeaderLease, pg_connector
from hub.db.engine import make_engine
from tests.hub.conftest import PG_DSN, pg_schema_url

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


class Replica:
    """One lease with the connections it opened (to kill) and the leadership changes it saw."""

    def __init__(self, engine: Engine, name: str, poll_s: float = 0.05, idle_timeout_s: float | None = None) -> None:
        self.conns: list[psycopg.Connection[Any]] = []
        self.changes: list[bool] = []
        connect = pg_connector(engine, application_name=f"test-lease {name}")

        def recording() -> psycopg.Connection[Any]:
            conn = connect()
            self.conns.append(conn)
            return conn

        self.lease = LeaderLease(connect=recording, poll_s=poll_s, replica=name, idle_timeout_s=idle_timeout_s)
        self.lease.on_change(self.changes.append)

    @property
    def backend_pid(self) -> int:
        return self.conns[-1].info.backend_pid


def until(poll: Callable[[], bool], timeout: float = 5) -> bool:
    """Poll until it returns True: a closed session's locks go when its backend has exited, a moment later."""
    deadline = time.monotonic() + timeout
    while not poll():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def replicas(pg: Engine) -> Iterator[list[Replica]]:
    made = [Replica(pg, name) for name in ("a", "b")]
    yield made
    for r in made:
        r.lease.stop()


def test_one_of_two_wins_and_closing_its_connection_hands_over(replicas: list[Replica]) -> None:
    a, b = replicas
    assert a.lease.poll() is True
    assert b.lease.poll() is False and b.lease.poll() is False
    assert a.changes == [True] and b.changes == []
    a.conns[-1].close()  # what kill -9 does to the socket: the session and its locks end (the backend exits)
    assert until(b.lease.poll)
    assert a.lease.poll() is False  # its heartbeat fails: it steps down (and reconnects next round)
    assert a.changes == [True, False] and b.changes == [True]
    assert a.lease.poll() is False and a.lease.is_leader.is_set() is False
    assert b.lease.poll() is True


def test_a_leader_whose_session_is_killed_steps_down_and_another_takes_over(replicas: list[Replica]) -> None:
    a, b = replicas
    a.lease.poll()
    b.lease.poll()
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (a.backend_pid,))  # returns once it is gone
    assert a.lease.poll() is False and a.changes == [True, False]
    assert until(b.lease.poll)


def test_a_leader_that_stops_heartbeating_loses_the_lease_to_the_server(pg: Engine) -> None:
    """A hung or frozen leader (SIGSTOP, a stuck process) keeps its socket open: the server's idle-session
    timeout ends its session, and with it the lease."""
    a, b = Replica(pg, "hung", idle_timeout_s=1.0), Replica(pg, "healthy", idle_timeout_s=1.0)
    try:
        assert a.lease.poll() is True and b.lease.poll() is False
        started = time.monotonic()
        while not b.lease.poll():  # a sends nothing from now on
            assert time.monotonic() - started < 10
            time.sleep(0.1)
        print(f"\nlease freed {time.monotonic() - started:.2f} s after the leader's last heartbeat (timeout 1 s)")  # noqa: T201
        assert a.lease.poll() is False and a.changes == [True, False]  # it wakes up and steps down
    finally:
        a.lease.stop()
        b.lease.stop()


def test_threads_elect_one_leader_and_a_stopped_leader_hands_over_within_a_poll(replicas: list[Replica]) -> None:
    for r in replicas:
        r.lease.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(r.lease.is_leader.is_set() for r in replicas):
        time.sleep(0.01)
    time.sleep(0.3)  # several polls: still exactly one
    leaders = [r for r in replicas if r.lease.is_leader.is_set()]
    assert len(leaders) == 1
    leader, follower = leaders[0], next(r for r in replicas if r is not leaders[0])
    started = time.monotonic()
    leader.lease.stop()
    assert leader.changes == [True, False]
    assert follower.lease.is_leader.wait(2)
    assert time.monotonic() - started < 1.0  # a graceful stop frees the lock at once: one poll later


def test_register_tells_whether_another_replica_is_running(pg: Engine) -> None:
    first, second = Replica(pg, "first"), Replica(pg, "second")
    try:
        assert first.lease.register() is True
        assert second.lease.register() is False
        first.lease.stop()
        second.lease.stop()
        third = Replica(pg, "third")
        assert third.lease.register() is True
        third.lease.stop()
    finally:
        first.lease.stop()
        second.lease.stop()


def test_keys_are_per_schema_so_two_deployments_each_have_a_leader(pg: Engine) -> None:
    other_url = next(schemas := pg_schema_url())
    other = make_engine(other_url)
    a, b = Replica(pg, "here"), Replica(other, "there")
    try:
        assert a.lease.poll() is True and b.lease.poll() is True
    finally:
        a.lease.stop()
        b.lease.stop()
        other.dispose()
        next(schemas, None)  # drops the schema


def test_held_lock_serialises_two_holders(pg: Engine) -> None:
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with locks.held(pg, locks.TUF_PUBLISH):
            inside.set()
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(5)
    with locks.held(pg, locks.TUF_PUBLISH):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]
    with locks.held(pg, locks.BROKER_AUTH):  # another purpose, another key: no wait
        pass
