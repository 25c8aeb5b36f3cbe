"""`edgefleet simulate --devices N --hub URL`: a fleet of lightweight simulated devices against any hub."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass

import click
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgefleet.simdevice import SimDevice
from edgefleet.termination import exit_on_termination, ignore_termination
from protocol.http import ENROLL_PATH, EnrollResponse
from protocol.topics import ROOT

# paho's network loop uses select(), which cannot watch file descriptors above 1023: one process
# holds at most ~300 clients (3 descriptors each), so larger fleets run in several processes.
SHARD = 200


def _run_shards(count: int, options: list[str], admin_token: str, prefix: str, duration: float | None) -> None:
    """Start ceil(count / SHARD) child `edgefleet simulate` processes, each with its own id prefix."""
    procs = []
    env = {**os.environ, "EDGEFLEET_HUB_ADMIN_TOKEN": admin_token}  # never on a command line
    try:  # from the first start on: a signal while they start still stops those already running
        for k, start in enumerate(range(0, count, SHARD)):
            n = min(SHARD, count - start)
            cmd = [sys.executable, "-m", "edgefleet", "simulate", *options, "--devices", str(n),
                   "--prefix", f"{prefix}{k}"]  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env))
        Console().print(f"{count} simulated devices in {len(procs)} processes "
                        f"({prefix}0-* .. {prefix}{len(procs) - 1}-*)")  # fmt: skip
        deadline = time.monotonic() + duration if duration else None
        while deadline is None or time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                raise click.ClickException("a simulator process failed; see its output above")
            if all(p.poll() == 0 for p in procs):
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        ignore_termination()
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(15)


@dataclass
class SimulatedFleet:
    """Enrolls N simulated devices with one multi-use enrollment token and connects them."""

    hub_url: str
    admin_token: str
    topic_root: str = ROOT

    def _api(self, method: str, path: str, **kw: object) -> httpx.Response:
        r = httpx.request(method, f"{self.hub_url}{path}", headers={"Authorization": f"Bearer {self.admin_token}"},
                          timeout=30, **kw)  # type: ignore[arg-type]
        if r.status_code >= 400:
            raise click.ClickException(f"hub answered {r.status_code} to {method} {path}: {r.text[:200]}")
        return r

    def enroll(self, count: int, *, prefix: str, profile: str, group: str | None, tags: dict[str, str],
               failing: set[int], mqtt_host: str | None = None) -> list[SimDevice]:
        token = self._api("POST", "/api/v1/enrollment-tokens",
                          json={"uses": count, "group": group, "tags": tags}).json()["token"]
        devices = []
        with httpx.Client(base_url=self.hub_url, timeout=30) as client:
            for i in range(count):
                r = client.post(ENROLL_PATH, json={"enrollment_token": token, "profile": profile,
                                                   "device_id": f"{prefix}-{i:05d}", "agent_version": "sim"})
                if r.status_code != 201:
                    raise click.ClickException(f"enrollment of {prefix}-{i:05d} failed: {r.status_code} {r.text[:200]}")
                enrolled = EnrollResponse.model_validate(r.json())
                if mqtt_host:
                    mqtt = enrolled.mqtt.model_copy(update={"host": mqtt_host})
                    enrolled = enrolled.model_copy(update={"mqtt": mqtt})
                devices.append(SimDevice(enrolled, profile, self.topic_root, failing))
        return devices


def fleet_table(devices: list[SimDevice]) -> Table:
    connected = sum(d.client is not None and d.client.is_connected() for d in devices)
    versions = Counter(f"{n} v{v}" for d in devices for n, v in d.active.items())
    table = Table(title=f"{len(devices)} simulated devices, {connected} connected")
    table.add_column("model version")
    table.add_column("devices", justify="right")
    for key, n in sorted(versions.items()):
        table.add_row(key, str(n))
    if not versions:
        table.add_row("(none installed yet)", "0")
    return table


@click.command()
@click.option("--devices", "count", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option("--hub", "hub_url", required=True, help="Hub base URL, e.g. http://127.0.0.1:8080")
@click.option("--admin-token", envvar="EDGEFLEET_HUB_ADMIN_TOKEN", required=True,
              help="Operator token (or EDGEFLEET_HUB_ADMIN_TOKEN).")
@click.option("--profile", default="raspberry_pi_4", show_default=True)
@click.option("--group", default=None)
@click.option("--tag", "tags", multiple=True, help="key=value (repeatable)")
@click.option("--prefix", default="sim", show_default=True, help="Device ids are PREFIX-00000, ...")
@click.option("--failing-version", "failing", type=int, multiple=True, help="Versions whose self-test fails.")
@click.option("--topic-root", default=ROOT, show_default=True)
@click.option("--mqtt-host", default=None, help="Override the broker host handed out at enrollment.")
@click.option("--duration", type=float, default=None, help="Seconds to run (default: until Ctrl-C).")
def simulate(count: int, hub_url: str, admin_token: str, profile: str, group: str | None, tags: tuple[str, ...],
             prefix: str, failing: tuple[int, ...], topic_root: str, mqtt_host: str | None,
             duration: float | None) -> None:
    """Run N simulated devices that reconcile desired state and report like agents (for load tests)."""
    exit_on_termination()  # `kill` / `timeout` stop the shard processes and disconnect the devices, as Ctrl-C does
    try:
        tag_map = dict(t.split("=", 1) for t in tags)
    except ValueError:
        raise click.BadParameter("use key=value", param_hint="--tag") from None
    if count > SHARD:
        options = ["--hub", hub_url, "--profile", profile, "--topic-root", topic_root]
        options += [x for t in tags for x in ("--tag", t)] + [x for v in failing for x in ("--failing-version", str(v))]
        options += (["--group", group] if group else []) + (["--mqtt-host", mqtt_host] if mqtt_host else [])
        options += ["--duration", str(duration)] if duration else []
        _run_shards(count, options, admin_token, prefix, duration)
        return
    fleet = SimulatedFleet(hub_url.rstrip("/"), admin_token, topic_root)
    try:
        devices = fleet.enroll(count, prefix=prefix, profile=profile, group=group, tags=tag_map,
                               failing=set(failing), mqtt_host=mqtt_host)
    except httpx.HTTPError as e:
        raise click.ClickException(f"cannot reach the hub at {hub_url}: {e}") from e
    for d in devices:
        d.connect()
    deadline = time.monotonic() + duration if duration else None
    try:
        with Live(fleet_table(devices), console=Console(), refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                live.update(fleet_table(devices))
    except KeyboardInterrupt:
        pass
    finally:
        ignore_termination()
        for d in devices:
            d.disconnect()
