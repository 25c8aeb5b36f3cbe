"""The `postgresql` backend: blobs as PostgreSQL large objects, named by the `blobs` table (migration 0007).

Every replica on the database sees every blob, with no shared file system. A write is one transaction: the
large object is created (`lo_from_bytea` for small blobs; `lo_create` + `lo_put` in 1 MiB chunks for a file,
never the whole of it in memory), its row inserted or repointed, and a replaced object unlinked, so readers see
the old blob or the new one, never a part. Reads go by offset (`lo_get(oid, offset, length)`), 1 MiB per query
on a connection taken from the pool for that query only: a slow download holds no connection, and a Range
request reads only its range. Blobs up to one chunk (all TUF metadata) are read with their row, in one
statement, so a concurrent rewrite of `timestamp.json` can never cut a read in two.

The publish lock is a transaction-scoped advisory lock (hub/cluster/locks.py TUF_STORAGE) held on a pooled
connection: it dies with its holder, and it is separate from TUF_PUBLISH, which a push holds on its own
transaction while it signs (one session cannot wait for a lock another session of the same push holds).
Large objects belong to the database, not to a schema: delete blobs through `delete`, which unlinks them.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, cast

import psycopg
from sqlalchemy import Engine

from hub.cluster import locks
from hub.errors import StorageError
from hub.storage.base import CHUNK, BlobInfo, OpenBlob, check_key, missing

KEY = "postgresql"
TABLE = "blobs"


class PostgresStorage:
    """Blobs as large objects in the database behind `engine` (a PostgreSQL one: anything else is refused)."""

    kind = KEY

    def __init__(self, engine: Engine, *, chunk: int = CHUNK) -> None:
        if engine.dialect.name != "postgresql":
            raise StorageError(
                f"storage_backend=postgresql keeps TUF metadata and artifacts in PostgreSQL, but the database is "
                f"{engine.dialect.name}: set EDGEFLEET_HUB_DATABASE_URL to a PostgreSQL database, or use "
                "storage_backend=directory"
            )
        self.engine = engine
        self.chunk = chunk

    def describe(self) -> str:
        return f"PostgreSQL large objects ({TABLE} table of {self.engine.url.render_as_string(hide_password=True)})"

    @contextmanager
    def _cursor(self, *, write: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        """A binary-result cursor on a pooled connection, in one transaction (committed if `write`)."""
        try:
            with self.engine.begin() if write else self.engine.connect() as conn:
                raw = cast(psycopg.Connection[Any], conn.connection.driver_connection)
                with raw.cursor(binary=True) as cur:
                    yield cur
        except psycopg.errors.UndefinedTable as e:
            raise StorageError(f"no {TABLE} table in the database: start `edgefleet hub serve` or `edgefleet hub "
                               "init` once with this DATABASE_URL (it applies the migrations)") from e  # fmt: skip
        except psycopg.Error as e:
            first = (str(e).strip() or type(e).__name__).splitlines()[0]
            raise StorageError(f"{self.describe()}: {first}") from e

    # ---- reading ------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def stat(self, key: str) -> BlobInfo | None:
        with self._cursor() as cur:
            query = f"SELECT size, sha256, created_at FROM {TABLE} WHERE path = %s"
            row = cur.execute(query, (check_key(key),)).fetchone()
        return None if row is None else BlobInfo(key=key, size=row[0], modified=row[2], sha256=row[1])

    def open(self, key: str) -> OpenBlob:
        with self._cursor() as cur:
            row = cur.execute(
                f"SELECT oid, size, sha256, created_at, CASE WHEN size <= %s THEN lo_get(oid) END FROM {TABLE} "
                "WHERE path = %s",
                (self.chunk, check_key(key)),
            ).fetchone()
        if row is None:
            raise missing(key, self.describe())
        oid, size, sha256, created_at, small = row
        info = BlobInfo(key=key, size=size, modified=created_at, sha256=sha256)
        if small is not None:
            return OpenBlob(info, io.BytesIO(small))
        return OpenBlob(info, io.BufferedReader(_LargeObjectReader(self, key, oid, size), buffer_size=self.chunk))

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as blob:
            return b"".join(blob.chunks())

    def read_at(self, key: str, oid: int, offset: int, length: int) -> bytes:
        """`length` bytes of large object `oid` from `offset`, in a short transaction of its own."""
        with self._cursor() as cur:
            row = cur.execute("SELECT lo_get(%s::oid, %s, %s)", (oid, offset, length)).fetchone()
        if row is None or row[0] is None:
            raise StorageError(f"{key}: large object {oid} is gone (the blob was replaced while being read)")
        data: bytes = row[0]
        return data

    def list(self, prefix: str) -> list[str]:
        with self._cursor() as cur:
            rows = cur.execute(f"SELECT path FROM {TABLE} WHERE starts_with(path, %s) ORDER BY path", (prefix,))
            return [str(r[0]) for r in rows.fetchall()]

    def local_path(self, key: str) -> Path | None:  # noqa: ARG002 (the protocol's signature)
        return None

    # ---- writing ------------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        check_key(key)
        with self._cursor(write=True) as cur:
            row = cur.execute("SELECT lo_from_bytea(0, %s)", (data,)).fetchone()
            assert row is not None
            self._name(cur, key, oid=row[0], size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def write_file(self, key: str, source: Path) -> None:
        check_key(key)
        digest, size = hashlib.sha256(), 0
        with self._cursor(write=True) as cur, source.open("rb") as f:
            row = cur.execute("SELECT lo_create(0)").fetchone()
            assert row is not None
            oid = row[0]
            while chunk := f.read(self.chunk):
                cur.execute("SELECT lo_put(%s::oid, %s, %s)", (oid, size, chunk))
                digest.update(chunk)
                size += len(chunk)
            self._name(cur, key, oid=oid, size=size, sha256=digest.hexdigest())

    @staticmethod
    def _name(cur: psycopg.Cursor[Any], key: str, *, oid: int, size: int, sha256: str) -> None:
        """Point `key` at the new object (in the writer's transaction) and unlink the one it replaces."""
        inserted = cur.execute(
            f"INSERT INTO {TABLE} (path, oid, size, sha256, created_at) VALUES (%s, %s::oid, %s, %s, now()) "
            "ON CONFLICT (path) DO NOTHING RETURNING path",
            (key, oid, size, sha256),
        ).fetchone()
        if inserted is not None:
            return
        # The row exists (committed: ON CONFLICT waited for any writer still in flight): lock it, repoint it.
        row = cur.execute(f"SELECT oid FROM {TABLE} WHERE path = %s FOR UPDATE", (key,)).fetchone()
        assert row is not None
        cur.execute(f"UPDATE {TABLE} SET oid = %s::oid, size = %s, sha256 = %s, created_at = now() WHERE path = %s",
                    (oid, size, sha256, key))  # fmt: skip
        cur.execute("SELECT lo_unlink(%s::oid)", (row[0],))

    def delete(self, key: str) -> None:
        with self._cursor(write=True) as cur:
            row = cur.execute(f"DELETE FROM {TABLE} WHERE path = %s RETURNING oid", (check_key(key),)).fetchone()
            if row is not None:
                cur.execute("SELECT lo_unlink(%s::oid)", (row[0],))

    def lock(self) -> AbstractContextManager[None]:
        return locks.held(self.engine, locks.TUF_STORAGE)


class _LargeObjectReader(io.RawIOBase):
    """A seekable raw reader over one large object: each read is one `lo_get` of at most a chunk."""

    def __init__(self, storage: PostgresStorage, key: str, oid: int, size: int) -> None:
        super().__init__()
        self._storage, self._key, self._oid, self._size, self._pos = storage, key, oid, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._size - self._pos, self._storage.chunk)
        if n <= 0:
            return 0
        data = self._storage.read_at(self._key, self._oid, self._pos, n)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)
