"""Operator verbs over the hub API: `edgefleet models|devices|rollouts ...`, printed as rich tables.

The hub URL and admin token come from --hub/--token, EDGEFLEET_HUB_URL/EDGEFLEET_HUB_ADMIN_TOKEN, or the
admin_token file in EDGEFLEET_HUB_DATA_DIR. Every failure is one readable line and a non-zero exit.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table

console = Console()


class Api:
    """A thin httpx client that turns every failure into a click.ClickException."""

    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise click.ClickException(f"cannot reach the hub at {self.client.base_url}: {e}") from e
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text[:200]
            if isinstance(detail, list):  # FastAPI validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            raise click.ClickException(f"hub said {r.status_code}: {detail}")
        return r.json()


def _token(token: str | None) -> str:
    if token:
        return token
    data_dir = Path(os.environ.get("EDGEFLEET_HUB_DATA_DIR", "./hub-data"))
    try:
        return (data_dir / "admin_token").read_text().strip()
    except OSError as e:
        raise click.ClickException(
            f"no admin token: pass --token, set EDGEFLEET_HUB_ADMIN_TOKEN, or run where {data_dir}/admin_token is"
        ) from e


def _options(f: Any) -> Any:
    f = click.option(
        "--token", envvar="EDGEFLEET_HUB_ADMIN_TOKEN", default=None,
        help="admin bearer token; else $EDGEFLEET_HUB_ADMIN_TOKEN, else $EDGEFLEET_HUB_DATA_DIR/admin_token "
        "(./hub-data/admin_token), as `hub init` wrote it",
    )(f)  # fmt: skip
    return click.option(
        "--hub", "url", envvar="EDGEFLEET_HUB_URL", default="http://127.0.0.1:8080", show_default=True,
        help="the hub's URL; else $EDGEFLEET_HUB_URL",
    )(f)  # fmt: skip


def _api(url: str, token: str | None) -> Api:
    return Api(url, _token(token))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")  # a long id wraps onto the next line, never cut to "…"
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


@click.group()
def models() -> None:
    """Push and list model versions in the hub's registry."""


def archive(folder: Path) -> bytes:
    """A converter output folder as the tar.gz that `POST /api/v1/models` takes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(folder)), recursive=False)
    return buf.getvalue()


@models.command("push")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_options
def push(folder: Path, url: str, token: str | None) -> None:
    """Upload a converter output folder (every <profile>/manifest.json and artifact)."""
    result = _api(url, token).call("POST", "/api/v1/models", files={"archive": ("folder.tar.gz", archive(folder))})
    rows = [[r["name"], r["version"], r["profile"], r["artifact_size"], r["artifact_sha256"][:12], status]
            for status in ("stored", "unchanged") for r in result[status]]  # fmt: skip
    _table("pushed", ["model", "version", "profile", "bytes", "sha256", "status"], rows)


@models.command("list")
@_options
def list_models(url: str, token: str | None) -> None:
    """Every version and profile."""
    rows = [[m["name"], m["version"], m["profile"], m["artifact_size"], m["created_at"]]
            for m in _api(url, token).call("GET", "/api/v1/models")]  # fmt: skip
    _table("models", ["model", "version", "profile", "bytes", "created"], rows)


@click.group()
def devices() -> None:
    """List devices and issue enrollment tokens."""


@devices.command("list")
@click.option("--group", default=None)
@_options
def list_devices(group: str | None, url: str, token: str | None) -> None:
    """Devices with their online state, current and desired versions."""
    params = {"group": group} if group else {}
    rows = [
        [d["id"], d["profile"], d["group"], "online" if d["online"] else "offline", d["last_seen"],
         json.dumps(d["current_versions"]), json.dumps(d["desired_versions"])]
        for d in _api(url, token).call("GET", "/api/v1/devices", params=params)
    ]  # fmt: skip
    _table("devices", ["id", "profile", "group", "status", "last seen", "current", "desired"], rows)


@devices.command("decommission")
@click.argument("device_id")
@_options
def decommission(device_id: str, url: str, token: str | None) -> None:
    """Revoke a device: its token and broker account stop working."""
    api = _api(url, token)
    try:
        r = api.client.delete(f"/api/v1/devices/{device_id}")
    except httpx.HTTPError as e:
        raise click.ClickException(f"cannot reach the hub at {api.client.base_url}: {e}") from e
    if r.status_code != 204:
        raise click.ClickException(f"hub said {r.status_code}: {r.json().get('detail', r.text[:200])}")
    click.echo(f"decommissioned {device_id}")


@devices.command("enroll-token")
@click.option("--uses", type=int, default=1, show_default=True)
@click.option("--ttl", "ttl_s", type=int, default=86400, show_default=True, help="seconds")
@click.option("--group", default=None)
@_options
def enroll_token(uses: int, ttl_s: int, group: str | None, url: str, token: str | None) -> None:
    """Issue an enrollment token (printed once)."""
    body = {"uses": uses, "ttl_s": ttl_s, "group": group}
    click.echo(_api(url, token).call("POST", "/api/v1/enrollment-tokens", json=body)["token"])


def __getattr__(name: str) -> Any:
    """`hub.ops_cli:rollouts` (edgefleet/cli.py) lives in hub.rollouts_cli to keep modules small."""
    if name == "rollouts":
        from hub.rollouts_cli import rollouts

        return rollouts
    raise AttributeError(name)
