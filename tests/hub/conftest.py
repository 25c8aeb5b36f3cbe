"""Hub fixtures: a database URL per backend (SQLite file, PostgreSQL in a private schema), hub settings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from hub.db.engine import make_engine, upgrade

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend; PostgreSQL gets a throwaway schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    yield from pg_schema_url()


def pg_schema_url() -> Iterator[str]:
    """Create a unique schema, yield a URL whose search_path is it, drop it afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            # large objects (storage_backend=postgresql) belong to the database: unlink them with their schema
            if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".blobs',)).fetchone() != (None,):
                conn.execute(f'SELECT lo_unlink(oid) FROM "{schema}".blobs')
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema (tests that need PostgreSQL whatever `db_url` says)."""
    yield from pg_schema_url()


@pytest.fixture
def pg(pg_url: str) -> Iterator[Engine]:
    """An engine on a fresh, migrated schema."""
    engine = make_engine(pg_url)
    upgrade(engine)
    yield engine
    engine.dispose()
