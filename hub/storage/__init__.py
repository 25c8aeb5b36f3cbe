"""Where the TUF repository's metadata and targets live: one small module per backend, chosen by `storage_backend`.

- `directory` (the default): files under `<data dir>/tuf/`, exactly the layout the hub always had; replicas
  share it as a shared directory (NFS).
- `postgresql`: large objects in the hub's PostgreSQL database; replicas need no shared file system.

Signing keys are not blobs: they stay in `<data dir>/tuf/keys/` on every replica (docs/hub.md#cluster).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from hub.cluster import locks
from hub.db.engine import make_engine, upgrade
from hub.settings import HubSettings
from hub.storage.base import CHUNK, BlobInfo, OpenBlob, Storage, check_key
from hub.storage.directory import DirectoryStorage
from hub.storage.postgresql import PostgresStorage

__all__ = ["BACKENDS", "CHUNK", "BlobInfo", "DirectoryStorage", "OpenBlob", "PostgresStorage", "Storage",
           "check_key", "open_storage", "opened"]  # fmt: skip

# key -> how to build the backend from the hub's settings and its database engine
BACKENDS: dict[str, Callable[[HubSettings, Engine], Storage]] = {
    DirectoryStorage.kind: lambda settings, _engine: DirectoryStorage(settings.tuf_dir),
    PostgresStorage.kind: lambda _settings, engine: PostgresStorage(engine),
}


def open_storage(settings: HubSettings, engine: Engine) -> Storage:
    """The backend `settings.storage_backend` names, on the hub's engine (StorageError: it cannot run there)."""
    return BACKENDS[settings.storage_backend](settings, engine)


@contextmanager
def opened(settings: HubSettings, *, migrate: bool = False) -> Iterator[Storage]:
    """The configured backend for a command outside `hub serve` (its own engine, if it needs one).

    `migrate`: apply the migrations first (one replica at a time), so `hub init` works on a new database.
    """
    if settings.storage_backend == DirectoryStorage.kind:
        yield DirectoryStorage(settings.tuf_dir)
        return
    engine = make_engine(settings.resolved_database_url())
    try:
        storage = open_storage(settings, engine)
        if migrate:
            with locks.held(engine, locks.STARTUP):
                upgrade(engine)
        yield storage
    finally:
        engine.dispose()
