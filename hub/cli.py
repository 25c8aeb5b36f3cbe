"""`edgefleet hub init|serve|token`: set up a data dir and run the hub."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from hub.errors import HubError
from hub.settings import HubSettings


def _settings(data_dir: Path | None) -> HubSettings:
    return HubSettings(data_dir=data_dir) if data_dir is not None else HubSettings()


@click.group()
def hub() -> None:
    """Run and administer the EdgeFleet hub (settings from EDGEFLEET_HUB_* variables)."""


@hub.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="default: EDGEFLEET_HUB_DATA_DIR")
def init(data_dir: Path | None) -> None:
    """Create the data dir: TUF keys and metadata, admin token, the hub's broker password."""
    from hub.services import init_data_dir

    settings = _settings(data_dir)
    try:
        token = init_data_dir(settings)
    except (HubError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"data dir: {settings.data_dir.resolve()}")
    click.echo(f"TUF root: {settings.tuf_dir / 'metadata' / '1.root.json'} (move keys/root.pem offline: docs/hub.md)")
    if token:
        click.echo(f"admin token (also in {settings.admin_token_file}): {token}")
    else:
        click.echo(f"already initialised; admin token is in {settings.admin_token_file}")


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

    from hub.tuf_repo import TufRepository, utcnow

    settings = _settings(data_dir)
    repo = TufRepository(settings.tuf_dir)
    try:
        version = repo.bump_root(expires=utcnow() + timedelta(days=days), root_key=root_key)
    except (HubError, OSError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"signed {version}.root.json, valid for {days} days")
