"""The database half of `hub backup` / `hub restore`: a consistent snapshot into one SQLite file, and back.

The archive always carries the database as a SQLite file, whatever the hub ran on:

- SQLite: sqlite3's online backup API, in one step, so one read transaction (WAL writers keep going).
- PostgreSQL: every hub table copied, in one REPEATABLE READ READ ONLY transaction (one snapshot), into a
  SQLite file built by the hub's own migrations. Not `pg_dump`: a custom-format dump names its schema in
  every object and `pg_restore` cannot put it into another one (tests, and deployments sharing a database,
  give each hub its own schema through the URL's search_path), and `pg_dump` must be at least the server's
  major version on the host that runs the backup. The table copy needs neither, restores into any schema and
  across backends (a SQLite hub moves to PostgreSQL with backup + restore), at the cost of copying only what
  the hub's schema knows: a table the schema does not know stops the backup rather than going missing.

Restore brings the archived file up to this hub's newest migration, then copies it (SQLite: the backup API
again, exact pages) or its rows (PostgreSQL: into the migrated, empty schema; sequences moved past the ids).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import JSON, Connection, Table, column, inspect, select, table, text
from sqlalchemy.engine import make_url

from hub.db.engine import alembic_config, make_engine, upgrade
from hub.db.schema import metadata
from hub.errors import HubError

BATCH = 1000
# Tables not copied as rows: `blobs` names PostgreSQL large objects (storage_backend=postgresql), which mean
# nothing in another database; the archive carries their content as the TUF files (hub/backup.py).
STORAGE_TABLES = frozenset({"blobs"})


class BackupError(HubError):
    """A backup cannot be taken (no archive is written), or an archive cannot be restored."""

    status_code = 500


def hub_tables(*, with_storage: bool = False) -> list[Table]:
    """Every table of the hub's schema copied as rows (and the storage's, `with_storage`), in dependency order."""
    import hub.telemetry.tables  # noqa: F401  (registers its tables on the shared metadata)

    return [t for t in metadata.sorted_tables if with_storage or t.name not in STORAGE_TABLES]


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, None for another backend."""
    parsed = make_url(url)
    if not parsed.get_backend_name().startswith("sqlite"):
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError(f"{url} is not a SQLite file")
    return Path(parsed.database)


def describe(url: str) -> str:
    """A database URL fit to print (no password)."""
    return make_url(url).render_as_string(hide_password=True)


def head_revision() -> str:
    """This hub's newest migration."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def sqlite_copy(src: Path, dest: Path) -> None:
    """Copy a live SQLite database with the online backup API (one step: one consistent read transaction)."""
    source = sqlite3.connect(src, timeout=30)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)  # pages=-1: everything in one step
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            target.close()
    finally:
        source.close()


def snapshot(url: str, dest: Path) -> str:
    """Write a consistent copy of the hub's database to the SQLite file `dest`; returns the backend's name."""
    src_file = sqlite_path(url)
    if src_file is not None:
        if not src_file.is_file():
            raise BackupError(f"no database at {src_file}")
        sqlite_copy(src_file, dest)
        return "sqlite"
    engine = make_engine(url)
    copy = make_engine(f"sqlite:///{dest}")
    try:
        upgrade(copy)
        with engine.connect() as conn:
            src = conn.execution_options(isolation_level="REPEATABLE READ")
            with src.begin():
                src.execute(text("SET TRANSACTION READ ONLY"))  # the snapshot is taken at the next statement
                revision = _revision(src)
                if revision != head_revision():
                    raise BackupError(f"the database is at migration {revision}, this hub's code at "
                                      f"{head_revision()}: back up with the version that serves it")  # fmt: skip
                with copy.begin() as dst:
                    copy_rows(src, dst)
    finally:
        engine.dispose()
        copy.dispose()
    with sqlite3.connect(dest) as con:
        con.execute("PRAGMA journal_mode=DELETE")
    return engine.dialect.name


def upgrade_file(db_file: Path) -> None:
    """Bring an archived SQLite database to this hub's newest migration."""
    engine = make_engine(f"sqlite:///{db_file}")
    try:
        upgrade(engine)
    except CommandError as e:
        raise BackupError(f"the backup's database has a migration this hub does not know ({e}): restore with "
                          "the hub version that made the backup, or a newer one") from e  # fmt: skip
    finally:
        engine.dispose()
    with sqlite3.connect(db_file) as con:
        con.execute("PRAGMA journal_mode=DELETE")


def first_filled_table(url: str) -> str | None:
    """The name of a hub table that has rows in the database at `url` (None: empty or absent)."""
    path = sqlite_path(url)
    if path is not None and (not path.exists() or path.stat().st_size == 0):
        return None
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            for t in hub_tables(with_storage=True):  # stored blobs make a database just as filled
                if t.name in present and conn.execute(select(text("1")).select_from(t).limit(1)).first():
                    return t.name
    finally:
        engine.dispose()
    return None


def restore(db_file: Path, url: str) -> None:
    """Replace the database at `url` with the archived (already upgraded) SQLite file."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("-wal", "-shm", ""):  # a stale WAL must never be replayed over the restored file
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.touch(mode=0o600)
        sqlite_copy(db_file, path)
        return
    engine = make_engine(url)
    source = make_engine(f"sqlite:///{db_file}")
    try:
        upgrade(engine)
        with source.connect() as src, engine.begin() as dst:
            for t in reversed(hub_tables()):  # --force: one transaction replaces the rows
                dst.execute(t.delete())
            copy_rows(src, dst)
            _move_sequences(dst)
    finally:
        engine.dispose()
        source.dispose()


def copy_rows(src: Connection, dst: Connection) -> dict[str, int]:
    """Copy every hub table from `src` to the migrated, empty `dst`; refuses a table the schema does not know."""
    present = set(inspect(src).get_table_names()) - {"alembic_version"} - STORAGE_TABLES
    tables = hub_tables()
    unknown = present - {t.name for t in tables}
    if unknown:
        raise BackupError(f"table(s) {', '.join(sorted(unknown))} are not in this hub's schema "
                          "(hub/db/schema.py and its imports): not copying a database partly")  # fmt: skip
    return {t.name: _copy_table(src, dst, t) for t in tables if t.name in present}


def _copy_table(src: Connection, dst: Connection, source: Table) -> int:
    # JSON columns: SQL NULL and JSON null stay apart (`desired IS NOT NULL` means something to the hub).
    json_cols = [c for c in source.columns if isinstance(c.type, JSON)]
    flags = [c.is_(None).label(f"{c.name}__sql_null") for c in json_cols]
    target = table(source.name, *[column(c.name, JSON(none_as_null=True) if c in json_cols else c.type)
                                  for c in source.columns])  # fmt: skip
    result = src.execution_options(stream_results=True, yield_per=BATCH).execute(select(*source.columns, *flags))
    copied = 0
    for rows in result.partitions():
        batch: list[dict[str, Any]] = []
        for row in rows:
            values = {c.name: row._mapping[c] for c in source.columns}
            for c in json_cols:
                if values[c.name] is None and not row._mapping[f"{c.name}__sql_null"]:
                    values[c.name] = JSON.NULL
            batch.append(values)
        dst.execute(target.insert(), batch)
        copied += len(batch)
    return copied


def _move_sequences(dst: Connection) -> None:
    """PostgreSQL: serial columns continue after the copied ids."""
    quote = dst.dialect.identifier_preparer.quote
    for t in hub_tables():
        col = t.autoincrement_column
        if col is None:
            continue
        dst.execute(text(f"SELECT setval(pg_get_serial_sequence(:t, :c), "
                         f"COALESCE((SELECT MAX({quote(col.name)}) FROM {quote(t.name)}), 0) + 1, false)"),
                    {"t": quote(t.name), "c": col.name})  # fmt: skip


def file_revision(db_file: Path) -> str | None:
    """The migration an archived SQLite database is at."""
    with sqlite3.connect(db_file) as con:
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else None


def _revision(conn: Connection) -> str | None:
    if "alembic_version" not in inspect(conn).get_table_names():
        return None
    value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return str(value) if value is not None else None


def counts(db_file: Path) -> dict[str, int]:
    """Model versions and devices in an archived database (for the summary line)."""
    with sqlite3.connect(db_file) as con:
        return {name: int(con.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0])
                for name in ("model_versions", "devices")}  # fmt: skip


def model_targets(db_file: Path) -> list[tuple[str, str, str]]:
    """(name/version/profile, target path, sha256) of every model's manifest and artifact in an archived database."""
    with sqlite3.connect(db_file) as con:
        rows = con.execute("SELECT name, version, profile, manifest_target, manifest_sha256, artifact_target, "
                           "artifact_sha256 FROM model_versions").fetchall()  # fmt: skip
    out: list[tuple[str, str, str]] = []
    for name, version, profile, m_target, m_sha, a_target, a_sha in rows:
        out += [(f"{name} {version} {profile}", m_target, m_sha), (f"{name} {version} {profile}", a_target, a_sha)]
    return out

