"""The `edgefleet` console command. Subcommands load lazily so `edgefleet agent` never imports TensorFlow."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

from edgefleet import __version__

# command name -> "module:attribute". Each part owns its own CLI module.
LAZY_COMMANDS: dict[str, str] = {
    "profiles": "edgefleet.profiles_cli:profiles",
    "convert": "converter.cli:convert_cmd",
    "hub": "hub.cli:hub",
    "models": "hub.ops_cli:models",
    "pipelines": "hub.pipelines_cli:pipelines",
    "devices": "hub.ops_cli:devices",
    "rollouts": "hub.ops_cli:rollouts",
    "agent": "agent.cli:agent",
    "demo": "edgefleet.demo:demo",
    "simulate": "edgefleet.simulate:simulate",
}
# One line each for `edgefleet --help`, kept here so listing the commands imports none of them.
SUMMARIES: dict[str, str] = {
    "profiles": "List and show firmware profiles (the device classes models are built for).",
    "convert": "Convert a trained model into per-profile artifacts, measured against the source.",
    "hub": "Run and administer the hub: init, serve, backup, restore, key rotation, broker accounts.",
    "models": "Push converted model versions to the hub and list them.",
    "pipelines": "Push pipeline versions (several models as one unit) to the hub and list them.",
    "devices": "List and decommission enrolled devices; issue enrollment tokens.",
    "rollouts": "Roll model and pipeline versions out in waves; pause, resume, abort, roll back.",
    "agent": "The device agent: run the daemon, predict and batch, status, rollback.",
    "demo": "Play the whole chain on this machine: hub, broker, agents, rollouts, drift.",
    "simulate": "Simulate a large fleet of devices against a hub (load and scale tests).",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked (or listed)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._available()))

    def _available(self) -> dict[str, str]:
        available = {}
        for name, target in LAZY_COMMANDS.items():
            module = target.split(":", 1)[0]
            if importlib.util.find_spec(module.split(".")[0]) is not None:
                available[name] = target
        return available

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attr = target.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise click.ClickException(
                f"'edgefleet {cmd_name}' is not available: {e.name} is not installed "
                f"(install the matching extra, e.g. pip install 'edgefleet[all]')"
            ) from e
        command: Any = getattr(module, attr)
        return command  # type: ignore[no-any-return]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help must not import heavy modules: show names only.
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUMMARIES.get(name, "")) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgefleet")
def cli() -> None:
    """EdgeFleet: convert, distribute, run and watch ML models on edge fleets."""


def main() -> None:
    """Console entry point."""
    cli(prog_name="edgefleet")
