"""`edgefleet profiles list|show`."""

from __future__ import annotations

from pathlib import Path

import click

from firmware_profiles import FirmwareProfile, ProfileError, get_profile, load_profiles

_dir_option = click.option(
    "--profiles-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLEET_PROFILES_DIR",
    help="Extra directory of profile TOML files (adds to or overrides the bundled ones).",
)


def print_table(title: str, headers: list[str] | None, rows: list[list[str]]) -> None:
    """A rich table; plain aligned columns where rich is not installed (`edgefleet[agent]` leaves it out)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        lines = ([headers] if headers else []) + rows
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        click.echo(title)
        for line in lines:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        return
    table = Table(title=title, show_header=headers is not None)
    for i, header in enumerate(headers or ["field", "value"]):
        table.add_column(header, no_wrap=i == 0, style="bold" if i == 0 else None)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


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
    headers = ["name", "arch", "accel", "formats", "quantizations", "max size", "latency", "max loss"]
    rows = [
        [
            p.name,
            p.arch,
            p.accelerator,
            ", ".join(f.value for f in p.formats),
            ", ".join(q.value for q in p.quantizations),
            _mb(p.budgets.max_artifact_bytes),
            f"{p.budgets.latency_ms:g} ms",
            f"{p.budgets.max_accuracy_loss_pt:g} pt",
        ]
        for p in found.values()
    ]
    print_table("Firmware profiles", headers, rows)


def profile_rows(p: FirmwareProfile) -> list[list[str]]:
    """(field, value) rows describing one profile."""
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
        ("max relative error", f"{b.max_relative_error:.0%} of the output range" if b.max_relative_error else "-"),
        (
            "speed",
            f"{p.speed.host_factor:g}x the {p.speed.reference_host} (budget is device time)"
            if p.speed
            else "host latency (no speed factor)",
        ),
    ]
    if p.accelerator == "edgetpu":
        from converter.edgetpu import EdgeTpu

        tpu = EdgeTpu.find()
        said = f"int8 artifacts converted on this host are {tpu.note(True)}" if tpu.compiler else tpu.note(False)
        rows.append(("edge tpu", said))
    return [[k, v] for k, v in rows]


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
        print_table(p.name, None, profile_rows(p))
