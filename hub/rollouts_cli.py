"""`edgefleet rollouts create|list|show|pause|resume|abort|rollback` over the hub API."""

from __future__ import annotations

from typing import Any

import click

from hub.dashboard.waves import wave_label, wave_position
from hub.ops_cli import _api, _options, _table


@click.group()
def rollouts() -> None:
    """Create and steer health-gated rollouts."""


def _show(ro: dict[str, Any]) -> None:
    """Waves are counted from 0, as in the API (`current_wave`) and the rollout's reasons; wave 0 is the canary."""
    rows = [[wave_label(w["wave"], ro), w["total"], "yes" if w["released"] else "no",
             ", ".join(f"{k}={v}" for k, v in sorted(w["counts"].items()))] for w in ro["waves"]]  # fmt: skip
    _table(f"rollout {ro['id']}: {ro['model']} v{ro['version']} {ro['state']} at {wave_position(ro)} "
           f"({ro['reason'] or ''})", ["wave", "devices", "released", "states"], rows)  # fmt: skip
    if ro.get("devices"):
        _table("devices", ["device", "wave", "state", "held", "previous", "reason"],
               [[d["device_id"], wave_label(d["wave"], ro), d["state"], "yes" if d["held"] else "",
                 d["previous_version"], d["reason"]] for d in ro["devices"]])  # fmt: skip


@rollouts.command("create")
@click.argument("model")
@click.argument("version", type=int)
@click.option("--id", "rollout_id", default=None)
@click.option("--group", default=None)
@click.option("--profile", default=None)
@click.option("--tag", "tags", multiple=True, help="key=value, repeatable")
@click.option("--device", "device_ids", multiple=True, help="explicit device ids, repeatable")
@click.option(
    "--canary",
    "canary_percent",
    type=float,
    default=10.0,
    show_default=True,
    help="percent of the target in wave 0, the canary (0: no canary)",
)
@click.option(
    "--stages",
    default="100",
    show_default=True,
    help="cumulative percents of the waves after the canary, e.g. 25,50,100",
)
@click.option("--success", "success_threshold", type=float, default=1.0, show_default=True)
@click.option("--error", "error_threshold", type=float, default=0.0, show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True)
@click.option("--probation", "probation_s", type=float, default=60.0, show_default=True)
@click.option("--auto-rollback", is_flag=True)
@click.option("--pipeline", "is_pipeline", is_flag=True, help="MODEL names a pipeline (edgefleet pipelines push)")
@_options
def create(model: str, version: int, rollout_id: str | None, group: str | None, profile: str | None,
           tags: tuple[str, ...], device_ids: tuple[str, ...], canary_percent: float, stages: str,
           success_threshold: float, error_threshold: float, timeout_s: float, probation_s: float,
           auto_rollback: bool, is_pipeline: bool, url: str, token: str | None) -> None:  # fmt: skip
    """Roll MODEL VERSION (a pipeline's, with --pipeline) out to a group, tags, a profile or explicit devices,
    in waves counted from 0: wave 0 is the canary, then one wave per stage."""
    try:
        stage_list = [float(s) for s in stages.split(",") if s.strip()]
        tag_map = dict(t.split("=", 1) for t in tags)
    except ValueError as e:
        raise click.ClickException(f"bad --stages or --tag: {e}") from e
    target: dict[str, Any] = {"group": group, "profile": profile, "tags": tag_map}
    if device_ids:
        target["devices"] = list(device_ids)
    body = {"id": rollout_id, "pipeline" if is_pipeline else "model": model, "version": version, "target": target,
            "canary_percent": canary_percent, "stages": stage_list, "success_threshold": success_threshold,
            "error_threshold": error_threshold, "timeout_s": timeout_s, "probation_s": probation_s,
            "auto_rollback": auto_rollback}  # fmt: skip
    _show(_api(url, token).call("POST", "/api/v1/rollouts", json=body))


@rollouts.command("list")
@_options
def list_rollouts(url: str, token: str | None) -> None:
    """Every rollout: what it ships, its state, and per wave (from wave 0) how many devices are healthy of how many."""
    rows = [[r["id"], ("pipeline " if r.get("kind") == "pipeline" else "") + r["model"], r["version"], r["state"],
             progress(r["waves"]), r["reason"]] for r in _api(url, token).call("GET", "/api/v1/rollouts")]  # fmt: skip
    _table("rollouts", ["id", "ships", "version", "state", "healthy / devices per wave", "last reason"], rows)


def left_with_nothing(ro: dict[str, Any], device_id: str | None, in_group: set[str] | None) -> list[str]:
    """Devices in scope that run the rollout's version (probation or healthy) and had none before it."""
    return [d["device_id"] for d in ro.get("devices") or []
            if d["previous_version"] is None and d["state"] in ("probation", "healthy")
            and (device_id is None or d["device_id"] == device_id)
            and (in_group is None or d["device_id"] in in_group)]  # fmt: skip


def progress(waves: list[dict[str, Any]]) -> str:
    """`0: 1/1, 1: 2/3, 2: -/5`: per wave (counted from 0) healthy of total, `-` for a wave not released yet."""
    return ", ".join(f"{i}: {w['counts'].get('healthy', 0) if w['released'] else '-'}/{w['total']}"
                     for i, w in enumerate(waves))  # fmt: skip


@rollouts.command("show")
@click.argument("rollout_id")
@_options
def show(rollout_id: str, url: str, token: str | None) -> None:
    """Progress per wave and per device."""
    _show(_api(url, token).call("GET", f"/api/v1/rollouts/{rollout_id}"))


def _verb(name: str) -> click.Command:
    @click.argument("rollout_id")
    @click.option("--group", default=None, help="only this group")
    @click.option("--device", "device_id", default=None, help="only this device")
    @_options
    def command(rollout_id: str, group: str | None, device_id: str | None, url: str, token: str | None) -> None:
        scope = {k: v for k, v in {"group": group, "device_id": device_id}.items() if v}
        _show(_api(url, token).call("POST", f"/api/v1/rollouts/{rollout_id}/{name}", json=scope or None))

    command.__doc__ = f"{name.capitalize()} a rollout (or only one group or device)."
    return rollouts.command(name)(command)


for _name in ("pause", "resume", "abort"):
    _verb(_name)


@rollouts.command("rollback")
@click.argument("rollout_id")
@click.option("--group", default=None, help="only this group")
@click.option("--device", "device_id", default=None, help="only this device")
@click.option("--yes", is_flag=True, help="also when it leaves devices with no version at all (their first one)")
@_options
def rollback(rollout_id: str, group: str | None, device_id: str | None, yes: bool, url: str, token: str | None) -> None:
    """Return devices to their previous version: the whole rollout, one group, or one device.

    Devices for which the rollout's version was their first have no previous one: rolling back removes it
    from them, so that needs --yes."""
    api = _api(url, token)
    scope = {k: v for k, v in {"group": group, "device_id": device_id}.items() if v}
    if not yes:
        ro = api.call("GET", f"/api/v1/rollouts/{rollout_id}")
        in_group = {d["id"] for d in api.call("GET", "/api/v1/devices") if d["group"] == group} if group else None
        first = left_with_nothing(ro, device_id, in_group)
        if first:
            what = ("pipeline " if ro.get("kind") == "pipeline" else "") + f"{ro['model']}"
            raise click.ClickException(
                f"rolling back {rollout_id} removes {what} from {len(first)} device(s) that had no earlier version "
                f"(e.g. {first[0]}): they would run nothing; add --yes to do it"
            )
    _show(api.call("POST", f"/api/v1/rollouts/{rollout_id}/rollback", json=scope or None))
