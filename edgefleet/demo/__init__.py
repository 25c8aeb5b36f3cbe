"""`edgefleet demo`: the whole chain on this machine — converter, hub, broker, real agents, rollouts, fallback."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgefleet.demo.environment import DemoError, rollout_health
from edgefleet.demo.pipeline import PIPELINE
from edgefleet.demo.story import Story, StoryResult
from edgefleet.termination import exit_on_termination, ignore_termination


def _rollout_cell(ro: dict[str, Any]) -> str:
    healthy, total = rollout_health(ro)
    # A completed rollout's reason only counts its last wave's healthy devices again.
    reason = f" — {ro['reason']}" if ro.get("reason") and ro["state"] != "completed" else ""
    return f"{ro['state']}, {healthy}/{total} devices healthy{reason}"


def _rollout_json(ro: dict[str, Any]) -> dict[str, Any]:
    healthy, total = rollout_health(ro)
    return {"state": ro["state"], "reason": ro.get("reason"), "healthy": healthy, "total": total}


def summary_table(result: StoryResult, hub_url: str) -> Table:
    table = Table(title="EdgeFleet demo: summary", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("result")
    for version, ro in sorted(result.rollouts.items()):
        table.add_row(f"rollout v{version}", _rollout_cell(ro))
    if result.pipeline_rollout is not None:
        table.add_row(
            f"rollout {PIPELINE} v{result.pipeline_rollout['version']} (pipeline)",
            _rollout_cell(result.pipeline_rollout),
        )
    if result.pipeline is not None:
        reading = result.pipeline
        timings = ", ".join(f"{node} {ms:.3f} ms" for node, ms in reading.mean_timings().items())
        table.add_row(
            f"pipeline {PIPELINE}",
            f"read {reading.accuracy:.1%} of {reading.answered} canvases right "
            f"(the classifier alone {reading.bare_accuracy:.1%} of the bare digits); {timings}",
        )
    if result.offline_device:
        table.add_row(
            "offline device",
            f"{result.offline_device}: "
            + ("came back and converged" if result.offline_converged else "did not converge"),
        )
    table.add_row("devices now run", ", ".join(f"{k}: {v}" for k, v in sorted(result.versions.items())) or "-")
    answers = ", ".join(f"{s} v{v}: {n}" for (s, v), n in sorted(result.answers.items()))
    table.add_row("application answers", answers or "-")
    table.add_row("cloud fallback calls", str(result.cloud_calls))
    table.add_row("hub / dashboard", f"{hub_url}/docs, {hub_url}/dashboard")
    return table


def summary_json(result: StoryResult) -> dict[str, object]:
    return {
        "rollouts": {str(v): _rollout_json(ro) for v, ro in result.rollouts.items()},
        "pipeline_rollout": _rollout_json(result.pipeline_rollout) if result.pipeline_rollout is not None else None,
        "pipeline": result.pipeline.as_json() if result.pipeline is not None else None,
        "offline_device": result.offline_device,
        "offline_converged": result.offline_converged,
        "versions": dict(result.versions),
        "answers": {f"{s}:{v}": n for (s, v), n in result.answers.items()},
        "cloud_calls": result.cloud_calls,
    }


@click.command()
@click.option("--devices", type=click.IntRange(3, 200), default=20, show_default=True, help="Real agents to run.")
@click.option("--once", is_flag=True, help="Exit when the story ends (for scripts and tests).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Keep everything here.")
def demo(devices: int, once: bool, workdir: Path | None) -> None:
    """Train, convert, distribute, roll out, watch and roll back — on this machine, no configuration."""
    console = Console()
    root = workdir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    story = Story(root, devices, say=lambda msg: console.print(f"[bold cyan]>[/] {msg}"))
    exit_on_termination()  # `kill`, `timeout`, a closed terminal: stop what the demo started, as Ctrl-C does
    try:
        story.setup()
        with Live(get_renderable=story.view, console=console, refresh_per_second=2, transient=True) as live:
            story.say = lambda msg: live.console.print(f"[bold cyan]>[/] {msg}")
            result = story.play()
        console.print(summary_table(result, story.env.hub_url))
        (root / "summary.json").write_text(json.dumps(summary_json(result), indent=2))
        if not once:
            console.print(
                f"hub and dashboard keep running at {story.env.hub_url}/dashboard "
                f"(admin token {story.env.admin_token}); Ctrl-C to stop"
            )
            while True:
                time.sleep(1)
    except DemoError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        pass
    finally:
        ignore_termination()
        story.stop()
