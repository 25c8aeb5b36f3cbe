"""What the demo shows of a rollout: the live tables in a terminal and the status in its progress lines.

Waves are named as the dashboard, the CLI and the hub's own reasons name them: counted from 0, wave 0 the
canary (hub/dashboard/views.py).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Group
from rich.table import Table

from edgefleet.demo.environment import DemoEnvironment, DemoError, rollout_health
from edgefleet.demo.models import NAME
from hub.dashboard.waves import wave_name, wave_position

if TYPE_CHECKING:
    from edgefleet.demo.story import Story

STATUS_TIMEOUT_S = 5.0  # a progress line does not wait long for the hub


def device_states(ro: dict[str, Any]) -> Counter[str]:
    """Devices of a rollout by state, over every wave."""
    counts = Counter[str]()
    for w in ro["waves"]:
        counts.update(w["counts"])
    return counts


def rollout_line(ro: dict[str, Any]) -> str:
    """`running at wave 1 of 0-1, 5/20 healthy (downloading 3, pending 12)`."""
    healthy, total = rollout_health(ro)
    others = ", ".join(f"{k} {v}" for k, v in sorted(device_states(ro).items()) if k != "healthy")
    return f"{ro['state']} at {wave_position(ro)}, {healthy}/{total} healthy" + (f" ({others})" if others else "")


def wave_released_line(ro: dict[str, Any], done: int) -> str:
    """What a rollout's move past wave `done` says: that wave's result and the next wave, released."""
    finished, now = ro["waves"][done], ro["waves"][done + 1]
    return (f"{wave_name(done, ro)} {finished['counts'].get('healthy', 0)}/{finished['total']} healthy, "
            f"{wave_name(done + 1, ro)} ({now['total']} devices) released")  # fmt: skip


def rollout_status(env: DemoEnvironment, rollout_id: str) -> str:
    """A progress line's status of a rollout, asked of the hub now."""
    return rollout_line(env.api("GET", f"/api/v1/rollouts/{rollout_id}", timeout=STATUS_TIMEOUT_S))


def enrolled_status(env: DemoEnvironment, devices: int) -> str:
    return f"{len(env.api('GET', '/api/v1/devices', timeout=STATUS_TIMEOUT_S))}/{devices} devices enrolled"


def live_view(story: Story) -> Group:
    """The live terminal view: devices and their versions, rollouts, answers by source."""
    devices = Table(title="fleet", expand=False)
    for col in ("device", "profile", "online", "version", "desired", "pipelines"):
        devices.add_column(col)
    try:
        for d in story.env.api("GET", "/api/v1/devices", timeout=STATUS_TIMEOUT_S):
            devices.add_row(
                d["id"],
                d["profile"],
                "yes" if d["online"] else "[red]no[/]",
                str(d["current_versions"].get(NAME)),
                str(d["desired_versions"].get(NAME)),
                ", ".join(f"{p} v{v}" for p, v in sorted(d.get("current_pipelines", {}).items())) or "-",
            )
        rollouts = Table(title="rollouts")
        for col in ("rollout", "state", "wave", "devices by state", "reason"):
            rollouts.add_column(col)
        for ro in story.env.api("GET", "/api/v1/rollouts", timeout=STATUS_TIMEOUT_S):
            rollouts.add_row(
                ro["id"],
                ro["state"],
                wave_position(ro),
                ", ".join(f"{k} {v}" for k, v in sorted(device_states(ro).items())),
                ro.get("reason") or "",
            )
    except (DemoError, httpx.HTTPError):
        return Group(devices)
    answers = Table(title="application answers")
    answers.add_column("source")
    answers.add_column("version")
    answers.add_column("calls", justify="right")
    for (source, version), n in sorted((story.traffic.answers if story.traffic else Counter()).items()):
        answers.add_row(source, version, str(n))
    return Group(devices, rollouts, answers)
