"""`edgefleet demo`: the whole chain on this machine — converter, hub, broker, real agents, rollouts, fallback."""

from __future__ import annotations

import json
import shutil
import signal
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
from edgefleet.demo.progress import Progress
from edgefleet.demo.story import Story, StoryResult
from edgefleet.demo.view import live_view
from edgefleet.termination import exit_on_termination, ignore_termination, signalled


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


def _stopped_line(how: str, during: str | None, stopped: list[str], work: str) -> str:
    """The one line an interrupted demo prints: what stopped it, when, what it stopped, where the files are."""
    what = ", ".join(stopped[:-1]) + (" and " if len(stopped) > 1 else "") + stopped[-1] if stopped else ""
    return (f"{how}: stopped the demo" + (f" while {during}" if during else "")
            + (f" ({what} stopped)" if what else " (nothing else was running yet)") + f"; {work}")  # fmt: skip


def _clean_up(root: Path, owned: bool, keep: bool) -> str:
    """Remove the work folder unless it is the user's (--workdir) or --keep; say where the files are."""
    if not owned:
        return f"work files kept in {root} (--workdir)"
    if keep:
        return f"work files kept in {root}"
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        return f"work files in {root}: could not remove them all"
    return f"work files ({root}) removed; --keep keeps them"


@click.command()
@click.option("--devices", type=click.IntRange(3, 200), default=20, show_default=True, help="Real agents to run.")
@click.option("--once", is_flag=True, help="Exit when the story ends (for scripts and tests).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Keep everything here.")
@click.option("--keep", is_flag=True, help="Keep the work files (models, hub data, agents' logs); says where.")
def demo(devices: int, once: bool, workdir: Path | None, keep: bool) -> None:
    """Train, convert, distribute, roll out, watch and roll back — on this machine, no configuration.

    Work files go to a new temporary folder, removed when the demo ends (also on Ctrl-C or SIGTERM) unless
    --keep; --workdir puts them in a folder of yours and keeps them. In a terminal the fleet, rollouts and
    answers are live tables; piped (`make demo | tee log`) a progress line comes at least every few seconds."""
    console = Console()
    root = workdir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    root.mkdir(parents=True, exist_ok=True)

    progress = Progress(lambda line: console.print(line, style="dim", markup=False, highlight=False, soft_wrap=True))

    def say(msg: str) -> None:
        console.print(f"[bold cyan]>[/] {msg}")
        progress.said()

    story = Story(root, devices, say=say, progress=progress)
    exit_on_termination()  # `kill`, `timeout`, a closed terminal: stop what the demo started, as Ctrl-C does
    signum: int | None = None  # the signal that stopped the demo
    finished = False
    progress.start()  # in a terminal only until the live tables show progress themselves
    try:
        story.setup()
        if console.is_terminal:
            progress.stop()
            with Live(get_renderable=lambda: live_view(story), console=console, refresh_per_second=2,
                      transient=True) as live:  # fmt: skip
                story.say = lambda msg: live.console.print(f"[bold cyan]>[/] {msg}")
                result = story.play()
        else:
            result = story.play()
        progress.stop()
        console.print(summary_table(result, story.env.hub_url))
        (root / "summary.json").write_text(json.dumps(summary_json(result), indent=2))
        finished = True
        if not once:
            console.print(
                f"hub and dashboard keep running at {story.env.hub_url}/dashboard "
                f"(admin token {story.env.admin_token}); Ctrl-C to stop"
            )
            while True:
                time.sleep(1)
    except (KeyboardInterrupt, SystemExit, Exception) as e:
        signum = signalled()
        if signum is None:
            if isinstance(e, DemoError):
                raise click.ClickException(str(e)) from e
            raise
        # the signal's exception, or what library code unwinding it raised instead (TensorFlow, signalled while
        # it traces a graph, asserts on its graph stack): either way the signal stopped the demo
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        ignore_termination()
        progress.stop()
        during = None if finished else progress.what
        started = story.started()
        story.stop()
        # a demo that failed keeps its files: the error names the logs in them
        work = _clean_up(root, owned=workdir is None, keep=keep or not (finished or signum is not None))
        if signum is not None:
            console.print(_stopped_line(_STOPPED_BY[signum], during, started, work), markup=False, highlight=False,
                          soft_wrap=True)  # fmt: skip
        else:
            console.print(work, markup=False, highlight=False, soft_wrap=True)
    if signum is not None and not (finished and signum == signal.SIGINT):  # Ctrl-C ends a finished demo: 0
        raise SystemExit(128 + signum)  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


_STOPPED_BY: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
