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
    columns = ["wave", "devices", "released", "states"]
    if (ro.get("spec") or {}).get("shadow"):
        columns.append("shadow")
        for row, w in zip(rows, ro["waves"], strict=True):
            row.append(shadow_text(w.get("shadow")))
    _table(f"rollout {ro['id']}: {ro['model']} v{ro['version']} {ro['state']} at {wave_position(ro)} "
           f"({ro['reason'] or ''})", columns, rows)  # fmt: skip
    if ro.get("devices"):
        _table("devices", ["device", "wave", "state", "held", "previous", "reason"],
               [[d["device_id"], wave_label(d["wave"], ro), d["state"], "yes" if d["held"] else "",
                 d["previous_version"], d["reason"]] for d in ro["devices"]])  # fmt: skip


def shadow_text(evidence: dict[str, Any] | None) -> str:
    """A wave's shadow phase in a few words: `passed: 120 rows, 0.8% disagree, latency 1.02x`."""
    if not evidence:
        return "not started"
    parts = [f"{evidence['samples'] + evidence['failed']} rows"]
    if evidence.get("disagreement") is not None:
        parts.append(f"{evidence['disagreement']:.1%} disagree")
    if evidence.get("latency_ratio") is not None:
        parts.append(f"latency {evidence['latency_ratio']:.2f}x")
    if evidence.get("dropped"):
        parts.append(f"{evidence['dropped']} dropped")
    return f"{evidence['verdict']}: {', '.join(parts)}"


def shadow_body(fraction: float | None, min_samples: int | None, max_disagreement: float | None,
                max_latency_ratio: float | None, max_duration_s: float | None) -> dict[str, Any] | None:  # fmt: skip
    """The rollout's `shadow` from the --shadow-* options (any of them asks for a shadow phase), or None."""
    given = {"fraction": fraction, "min_samples": min_samples, "max_disagreement": max_disagreement,
             "max_latency_ratio": max_latency_ratio, "max_duration_s": max_duration_s}  # fmt: skip
    chosen = {k: v for k, v in given.items() if v is not None}
    return chosen or None


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
@click.option("--shadow-fraction", type=float, default=None,
              help="shadow-test the version on this share of each device's live requests before each wave "
                   "activates it (any --shadow-* option asks for a shadow phase; docs/shadow.md) [default: 0.1]")
@click.option("--shadow-min-samples", type=int, default=None,
              help="compared rows a wave needs before it is judged [default: 200]")
@click.option("--shadow-max-disagreement", type=float, default=None,
              help="largest share of rows whose answer may differ from the serving version's [default: 0.05]")
@click.option("--shadow-max-latency-ratio", type=float, default=None,
              help="largest candidate / serving mean latency [default: 1.5]")
@click.option("--shadow-max-duration", "shadow_max_duration_s", type=float, default=None,
              help="seconds a wave may take to gather its rows, else the rollout pauses [default: 3600]")
@_options
def create(model: str, version: int, rollout_id: str | None, group: str | None, profile: str | None,
           tags: tuple[str, ...], device_ids: tuple[str, ...], canary_percent: float, stages: str,
           success_threshold: float, error_threshold: float, timeout_s: float, probation_s: float,
           auto_rollback: bool, is_pipeline: bool, shadow_fraction: float | None, shadow_min_samples: int | None,
           shadow_max_disagreement: float | None, shadow_max_latency_ratio: float | None,
           shadow_max_duration_s: float | None, url: str, token: str | None) -> None:  # fmt: skip
    """Roll MODEL VERSION (a pipeline's, with --pipeline) out to a group, tags, a profile or explicit devices,
    in waves counted from 0: wave 0 is the canary, then one wave per stage. With --shadow-*, each wave's devices
    first run the version beside the serving one on live requests, and the wave activates only if it agrees."""
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
    shadow = shadow_body(shadow_fraction, shadow_min_samples, shadow_max_disagreement, shadow_max_latency_ratio,
                         shadow_max_duration_s)  # fmt: skip
    if shadow is not None:
        body["shadow"] = shadow
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
