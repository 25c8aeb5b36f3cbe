"""Cluster fixtures: a private PostgreSQL schema per test (advisory-lock keys include the schema); the same
fixtures the hub tests use."""

from tests.hub.conftest import pg, pg_url

__all__ = ["pg", "pg_url"]
