"""PostgreSQL advisory locks for work that must happen one replica at a time; no-ops on SQLite (one process).

A key is 64 bits derived in SQL from the connection's schema and a purpose,
`md5("<current_schema>/edgefleet-hub/<purpose>")[:16]` as a signed bigint, so two deployments sharing one
database in different schemas (and tests running in parallel) never contend. Transaction-scoped locks are
released by commit, rollback or a dead connection: one can never outlive the work it guards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

LEADER = "leader"  # session lock on the lease connection (leader.py)
REPLICAS = "replicas"  # every live replica holds it shared; exclusive = no other replica is running
STARTUP = "startup"  # data dir set-up, crash-leftover sweep and migrations
TUF_PUBLISH = "tuf-publish"  # every write to the shared TUF repository (push, expiry refresh)
TUF_STORAGE = "tuf-storage"  # storage_backend=postgresql: every TUF repository writer, CLI commands too (storage/)
BROKER_AUTH = "broker-auth"  # read device accounts + write the broker's password/ACL files
ROLLOUT_CREATE = "rollout-create"  # the overlap check and insert of a new rollout


def key_sql(tag_param: str) -> str:
    """The SQL expression of a lock key; `tag_param` is the bind placeholder for `tag(purpose)`."""
    return f"('x' || substr(md5(coalesce(current_schema(), '') || '/' || {tag_param}), 1, 16))::bit(64)::bigint"


def tag(purpose: str) -> str:
    """What a purpose is hashed as, after the schema."""
    return f"edgefleet-hub/{purpose}"


def xact_lock(conn: Connection, purpose: str) -> None:
    """Wait for the cluster-wide lock `purpose` and hold it until `conn`'s transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({key_sql(':purpose')})"), {"purpose": tag(purpose)})


@contextmanager
def held(engine: Engine, purpose: str) -> Iterator[None]:
    """Hold `purpose` for the block, in a transaction of its own on a pooled connection."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.begin() as conn:
        xact_lock(conn, purpose)
        yield
