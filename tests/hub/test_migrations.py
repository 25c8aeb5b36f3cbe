"""The alembic migrations build exactly the schema the code declares (tables, columns, indexes), on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import hub.telemetry.tables  # noqa: F401  (registers the telemetry tables and indexes on the shared metadata)
from hub.db.engine import make_engine, upgrade
from hub.db.schema import metadata


def test_migrations_match_the_declared_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], diff
    upgrade(engine)  # a second start is a no-op
