"""`edgefleet profiles list|show`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from firmware_profiles import FirmwareProfile, ProfileError, get_profile, load_profiles

_dir_option = click.option(
    "--profiles-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLEET_PROFILES_DIR",
    help="Extra directory of profile TOML files (adds to or overrides the bundled ones).",
)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.0f} KiB"


@click.group()
def profiles() -> None:
    """Firmware profiles: device classes and their budgets."""


@profiles.command("list")
@_dir_option
def list_profiles(profiles_dir: Path | None) -> None:
    """List every known profile."""
    try:
        found = load_profiles(profiles_dir)
    except ProfileError as e:
        raise click.ClickException(str(e)) from e
    table = Table(title="Firmware profiles")
    table.add_column("name", no_wrap=True, style="bold")
    for col in ("arch", "accel", "formats", "quantizations", "max size", "latency", "max loss"):
        table.add_column(col)
    for p in found.values():
        table.add_row(
            p.name,
            p.arch,
            p.accelerator,
            ", ".join(f.value for f in p.formats),
            ", ".join(q.value for q in p.quantizations),
            _mb(p.budgets.max_artifact_bytes),
            f"{p.budgets.latency_ms:g} ms",
            f"{p.budgets.max_accuracy_loss_pt:g} pt",
        )
    Console().print(table)


def render_profile(p: FirmwareProfile) -> Table:
    table = Table(title=p.name, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    b = p.budgets
    rows = [
        ("description", p.description),
        ("architecture", p.arch),
        ("accelerator", p.accelerator),
        ("runtimes", ", ".join(p.runtimes)),
        ("delegate", p.delegate),
        ("formats (preferred first)", ", ".join(f.value for f in p.formats)),
        ("quantizations", ", ".join(q.value for q in p.quantizations)),
        ("artifact kinds", ", ".join(p.kinds)),
        ("I/O dtype", p.io_dtype),
        ("threads", str(p.threads)),
        ("max artifact", _mb(b.max_artifact_bytes)),
        ("max RAM", _mb(b.max_ram_bytes)),
        ("tensor arena", _mb(b.arena_bytes) if b.arena_bytes else "-"),
        ("latency budget", f"{b.latency_ms:g} ms per inference"),
        ("max accuracy loss", f"{b.max_accuracy_loss_pt:g} points top-1"),
        ("max abs error", f"{b.max_abs_error:g}" if b.max_abs_error else "-"),
        (
            "speed",
            f"{p.speed.host_factor:g}x the {p.speed.reference_host} (budget is device time)"
            if p.speed
            else "host latency (no speed factor)",
        ),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


@profiles.command("show")
@click.argument("name")
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def show_profile(name: str, profiles_dir: Path | None, as_json: bool) -> None:
    """Show one profile."""
    try:
        p = get_profile(name, profiles_dir)
    except ProfileError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(p.model_dump_json(indent=2))
    else:
        Console().print(render_profile(p))
