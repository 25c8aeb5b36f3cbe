"""`edgefleet pipelines push|list` over the hub API (URL, token and errors as `edgefleet models`: hub/ops_cli.py)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import click
import numpy as np

from hub.ops_cli import _api, _options, _table
from protocol.pipeline import PipelineSpec, PipelineSpecError, spec_from_data, spec_from_toml


@click.group()
def pipelines() -> None:
    """Push and list pipeline versions (stage models and built-in steps shipped as one unit)."""


def read_spec(path: Path) -> PipelineSpec:
    """The spec, checked locally: TOML as authored, or JSON (as the hub serves it, and the one way to write a dynamic
    dimension: null); one line naming the file and the key otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"{path}: cannot read: {e}") from e
    try:
        if path.suffix != ".json":
            return spec_from_toml(text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PipelineSpecError(f"not valid JSON: {e}") from e
        return spec_from_data(data.get("spec", data) if isinstance(data, dict) else data)
    except PipelineSpecError as e:
        raise click.ClickException(f"{path}: {_one_line(str(e))}") from e


def read_samples(path: Path, spec: PipelineSpec) -> dict[str, Any]:
    """An .npz with one array per pipeline input, samples along the first axis (a lone `x`/`arr_0` array feeds a
    lone input), as the nested lists the hub takes."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise click.ClickException(f"{path}: not a readable .npz file: {_one_line(str(e))}") from e
    names = [i.name for i in spec.inputs]
    if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays and next(iter(arrays)) in ("x", "arr_0"):
        arrays = {names[0]: next(iter(arrays.values()))}
    unknown = [k for k in arrays if k not in names]
    if unknown:
        raise click.ClickException(
            f"{path}: array {unknown[0]!r} is no input of pipeline {spec.name!r}; it takes {', '.join(names)}"
        )
    missing = [k for k in names if k not in arrays]
    if missing:
        raise click.ClickException(f"{path}: no array for input {missing[0]!r}")
    return {k: v.tolist() for k, v in arrays.items()}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _stages(stages: dict[str, Any]) -> str:
    return ", ".join(f"{name}={s['model']} v{s['version']}" for name, s in stages.items())


@pipelines.command("push")
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    metavar="PROFILE",
    help="publish for this profile (repeatable); default: every profile where each stage has an artifact",
)
@click.option(
    "--samples",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=".npz, one array per pipeline input with samples along the first axis, for the golden cases "
    "(default: 4 seeded random samples)",
)
@_options
def push(spec_file: Path, profiles: tuple[str, ...], samples: Path | None, url: str, token: str | None) -> None:
    """Push the pipeline version SPEC_FILE (TOML, or JSON): the hub checks it, runs it per profile and signs it."""
    spec = read_spec(spec_file)
    body: dict[str, Any] = {"spec": json.loads(spec.to_json())}
    if profiles:
        body["profiles"] = list(profiles)
    if samples is not None:
        body["samples"] = read_samples(samples, spec)
    result = _api(url, token).call("POST", "/api/v1/pipelines", json=body)
    rows = [[r["name"], r["version"], r["profile"], _stages(r["stages"]), r["golden_cases"], status]
            for status in ("stored", "unchanged") for r in result[status]]  # fmt: skip
    _table("pushed", ["pipeline", "version", "profile", "stages", "golden cases", "status"], rows)


@pipelines.command("list")
@_options
def list_pipelines(url: str, token: str | None) -> None:
    """Every pipeline version, its profiles and stages."""
    rows = [[p["name"], p["version"], ", ".join(p["profiles"]), _stages(p["stages"]), p["created_at"]]
            for p in _api(url, token).call("GET", "/api/v1/pipelines")]  # fmt: skip
    _table("pipelines", ["pipeline", "version", "profiles", "stages", "created"], rows)
