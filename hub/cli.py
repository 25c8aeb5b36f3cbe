"""`edgefleet hub init|serve|sign-root|rotate-keys|backup|restore`: set up, run, re-key and back up a hub."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from hub.errors import HubError
from hub.settings import HubSettings


def _settings(data_dir: Path | None, database_url: str | None = None) -> HubSettings:
    given: dict[str, Any] = {"data_dir": data_dir, "database_url": database_url}
    return HubSettings(**{k: v for k, v in given.items() if v is not None})


def _one_line(e: BaseException) -> str:
    """The first line of an error (SQLAlchemy appends SQL and a link on further lines)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


@click.group()
def hub() -> None:
    """Run and administer the EdgeFleet hub (settings from EDGEFLEET_HUB_* variables)."""


@hub.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="default: EDGEFLEET_HUB_DATA_DIR")
def init(data_dir: Path | None) -> None:
    """Create the data dir: TUF keys and metadata, admin token, the hub's broker password."""
    from hub.services import init_broker_files, init_data_dir

    settings = _settings(data_dir)
    try:
        token = init_data_dir(settings)
    except (HubError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"data dir: {settings.data_dir.resolve()}")
    root = settings.tuf_dir / "metadata" / "1.root.json"
    if settings.storage_backend == "directory":
        click.echo(f"TUF root: {root} (move keys/root.pem offline: docs/hub.md)")
    else:
        click.echo(f"TUF metadata and artifacts: {settings.storage_backend}; keys in {settings.tuf_dir / 'keys'} (give "
                   "every replica a copy; move keys/root.pem offline: docs/hub.md)")  # fmt: skip
    try:
        broker_files = init_broker_files(settings)
    except (HubError, OSError) as e:
        raise click.ClickException(f"broker files: {_one_line(e)}") from e
    if broker_files is not None:
        click.echo(f"broker accounts: {broker_files[0]} and {broker_files[1]} (the hub's account; Mosquitto can "
                   "start now: edgefleet hub broker-config prints a matching mosquitto.conf)")  # fmt: skip
    if token:
        click.echo(f"admin token (also in {settings.admin_token_file}): {token}")
    else:
        click.echo(f"already initialised; admin token is in {settings.admin_token_file}")


@hub.command("broker-config")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def broker_config_cmd(data_dir: Path | None) -> None:
    """Print a mosquitto.conf matching the hub's settings (broker files, pid file, listener)."""
    from hub.services import broker_config

    settings = _settings(data_dir)
    if settings.broker_auth != "files":
        raise click.ClickException("BROKER_AUTH is dynsec: `edgefleet hub dynsec-config FILE` writes its accounts")
    click.echo(broker_config(settings), nl=False)


@hub.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--host", default=None, help="default: EDGEFLEET_HUB_HOST")
@click.option("--port", type=int, default=None, help="default: EDGEFLEET_HUB_PORT")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None,
              help="serve HTTPS with this PEM certificate (chain); default: EDGEFLEET_HUB_TLS_CERT_FILE")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None,
              help="its PEM private key; default: EDGEFLEET_HUB_TLS_KEY_FILE")
@click.option("--tls-client-ca", type=click.Path(path_type=Path), default=None,
              help="ask clients for a certificate signed by this CA (mTLS); default: EDGEFLEET_HUB_TLS_CLIENT_CA_FILE")
@click.option("--require-client-cert", is_flag=True, default=False,
              help="refuse clients without such a certificate (needs --tls-client-ca)")  # fmt: skip
def serve(data_dir: Path | None, host: str | None, port: int | None, tls_cert: Path | None, tls_key: Path | None,
          tls_client_ca: Path | None, require_client_cert: bool) -> None:  # fmt: skip
    """Serve the API, the TUF repository, the MQTT bridge and the rollout engine (HTTPS with --tls-cert/--tls-key)."""
    from hub.api.main import create_app
    from hub.server import serve as serve_app
    from hub.server import tls_options

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(data_dir)
    tls = {"tls_cert_file": tls_cert, "tls_key_file": tls_key, "tls_client_ca_file": tls_client_ca}
    updates: dict[str, object] = {k: v for k, v in tls.items() if v is not None}
    if require_client_cert:
        updates["tls_require_client_cert"] = True
    settings = settings.model_copy(update=updates)
    if settings.tls_cert_file is not None and "public_url" not in settings.model_fields_set:
        # What enrollment hands to devices: agents refuse a plain http:// hub, so say https when serving it.
        public = f"https://{host or settings.host}:{port if port is not None else settings.port}"
        settings = settings.model_copy(update={"public_url": public})
    try:
        tls_options(settings)  # a missing or half-given certificate stops here, before the hub starts anything
        app = create_app(settings)
        serve_app(app, settings, host=host or settings.host, port=port if port is not None else settings.port)
    except (HubError, OSError, ValueError) as e:
        raise click.ClickException(str(e)) from e


@hub.command("sign-root")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--root-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="the offline root key (default: keys/root.pem in the data dir)")  # fmt: skip
@click.option("--days", type=int, default=365, show_default=True, help="validity of the new root")
def sign_root(data_dir: Path | None, root_key: Path | None, days: int) -> None:
    """Sign a new root version (before the current one expires); devices pick it up through TUF."""
    from datetime import timedelta

    from hub.storage import opened
    from hub.tuf_repo import TufRepository, utcnow

    settings = _settings(data_dir)
    try:
        with opened(settings) as storage:
            repo = TufRepository(settings.tuf_dir, storage=storage)
            version = repo.bump_root(expires=utcnow() + timedelta(days=days), root_key=root_key)
    except (HubError, OSError, ValueError, SQLAlchemyError) as e:
        raise click.ClickException(_one_line(e)) from e
    click.echo(f"signed {version}.root.json, valid for {days} days")


@hub.command("rotate-keys")
@click.option("--role", type=click.Choice(["root", "targets", "snapshot", "timestamp"]), required=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--root-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="the offline root key (default: keys/root.pem in the data dir)")  # fmt: skip
@click.option("--new-root-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="with --role root and --root-key: the new file to write the new offline root key to")  # fmt: skip
def rotate_keys(role: str, data_dir: Path | None, root_key: Path | None, new_root_key: Path | None) -> None:
    """Replace a role's signing key: a new root version trusts the new key; devices follow through TUF."""
    from hub.storage import opened
    from hub.tuf_repo import TufRepository

    settings = _settings(data_dir)
    if new_root_key is not None and (role != "root" or root_key is None):
        raise click.ClickException("--new-root-key goes with --role root and --root-key (an offline root key)")
    try:
        with opened(settings) as storage:
            if not storage.exists("metadata/root.json"):
                where = settings.tuf_dir if settings.storage_backend == "directory" else storage.describe()
                raise click.ClickException(f"no TUF repository in {where}: run `edgefleet hub init` first")
            repo = TufRepository(settings.tuf_dir, storage=storage)
            done = repo.rotate_key(role, root_key=root_key, new_root_key=new_root_key)
    except (HubError, OSError, ValueError, SQLAlchemyError) as e:
        raise click.ClickException(_one_line(e)) from e
    signed_by = "the old and the new root key" if role == "root" else "the root key"
    old = ", ".join(k[:12] for k in done.old_keyids)
    click.echo(f"rotated the {role} key: {old} -> {done.new_keyid[:12]}; {done.root_version}.root.json trusts "
               f"only the new one (signed by {signed_by})")  # fmt: skip
    if done.resigned:
        click.echo(f"re-signed with it: {', '.join(done.resigned)}")
    click.echo(f"new key: {done.key_file} (0600); the old private key was deleted")
    if root_key is not None and role == "root":
        click.echo(f"{root_key} is no longer trusted: destroy it once {done.key_file} is safely offline")
    if settings.storage_backend != "directory" and done.key_file.parent == settings.tuf_dir / "keys":
        click.echo(f"copy {done.key_file} to every other replica's {settings.tuf_dir / 'keys'} now (unless tuf/keys "
                   "is shared): until then they cannot sign")  # fmt: skip
    click.echo("take a new backup now: older ones hold the retired key and an older root")


@hub.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="default: EDGEFLEET_HUB_DATA_DIR")
@click.option("--database-url", default=None,
              help="default: EDGEFLEET_HUB_DATABASE_URL, else hub.db in the data dir")  # fmt: skip
def backup(file: Path, data_dir: Path | None, database_url: str | None) -> None:
    """Write the database, TUF repository (keys, metadata, targets) and secrets to FILE (0600), while serving."""
    from hub.backup import backup as take_backup

    try:
        done = take_backup(_settings(data_dir, database_url), file)
    except (HubError, OSError, sqlite3.Error, SQLAlchemyError) as e:
        raise click.ClickException(_one_line(e)) from e
    click.echo(f"wrote {done.path} ({done.size / 1e6:.1f} MB, mode 0600: it holds signing keys and token hashes)")
    click.echo(f"database ({done.database}): {done.model_versions} model versions, {done.devices} devices; "
               f"TUF: root v{done.root_version}, timestamp v{done.timestamp_version}, {done.targets} targets, "
               f"keys {', '.join(done.keys)}")  # fmt: skip


@hub.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="default: EDGEFLEET_HUB_DATA_DIR")
@click.option("--database-url", default=None,
              help="default: EDGEFLEET_HUB_DATABASE_URL, else hub.db in the data dir")  # fmt: skip
@click.option("--force", is_flag=True, default=False, help="replace a data dir and database that are not empty")
def restore(file: Path, data_dir: Path | None, database_url: str | None, force: bool) -> None:
    """Restore a `hub backup` archive into an empty data dir and database; devices keep updating."""
    from hub.backup import restore as restore_backup

    try:
        done = restore_backup(_settings(data_dir, database_url), file, force=force)
    except (HubError, OSError, sqlite3.Error, SQLAlchemyError) as e:
        raise click.ClickException(_one_line(e)) from e
    click.echo(f"restored {file} into {done.data_dir} (database {done.database}): {done.model_versions} model "
               f"versions, {done.devices} devices, {done.targets} targets")  # fmt: skip
    click.echo(f"TUF targets, snapshot and timestamp re-signed at version {done.version} (microseconds since the "
               "epoch: above any version devices have seen)")  # fmt: skip


@hub.command("dynsec-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="default: EDGEFLEET_HUB_DATA_DIR")
@click.option("--database-url", default=None,
              help="default: EDGEFLEET_HUB_DATABASE_URL, else hub.db in the data dir")  # fmt: skip
@click.option("--force", is_flag=True, default=False, help="replace FILE if it exists")
def dynsec_config(file: Path, data_dir: Path | None, database_url: str | None, force: bool) -> None:
    """Write Mosquitto's first dynamic-security file (0600) from this hub: its own account and every enrolled
    device with the password hash the hub stores, so a fleet moves to BROKER_AUTH=dynsec without re-enrolling.
    Write it with the broker stopped (the plugin rewrites the file while it runs)."""
    import json
    import os

    from hub.db.engine import make_engine
    from hub.mqtt.dynsec import initial_config
    from hub.security import mosquitto_hash
    from hub.store import devices as device_store

    settings = _settings(data_dir, database_url)
    if file.exists() and not force:
        raise click.ClickException(f"{file} exists: the broker's dynamic-security file is not replaced without --force")
    try:
        hub_password = settings.mqtt_password_file.read_text().strip()
        engine = make_engine(settings.resolved_database_url())
        try:
            with engine.connect() as conn:
                hashes = device_store.password_hashes(conn=conn)
        finally:
            engine.dispose()
        config = initial_config(hub_password_hash=mosquitto_hash(hub_password), topic_root=settings.topic_root,
                                device_hashes=hashes)  # fmt: skip
        tmp = file.with_name(f".{file.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(config, out, indent=1)
        os.replace(tmp, file)
    except (HubError, OSError, SQLAlchemyError) as e:
        raise click.ClickException(_one_line(e)) from e
    click.echo(f"wrote {file} (mode 0600): the hub's account and {len(hashes)} devices; start Mosquitto with "
               "plugin_opt_config_file pointing at it, then the hub with EDGEFLEET_HUB_BROKER_AUTH=dynsec")
