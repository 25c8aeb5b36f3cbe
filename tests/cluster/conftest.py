"""Cluster fixtures: a private PostgreSQL schema per test (advisory-lock keys include the schema)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hub.db.engine import make_engine, upgrade
from tests.hub.conftest import pg_schema_url


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_schema_url()


@pytest.fixture
def pg(pg_url: str) -> Iterator[Engine]:
    """An engine on a fresh, migrated schema."""
    engine = make_engine(pg_url)
    upgrade(engine)
    yield engine
    engine.dispose()
