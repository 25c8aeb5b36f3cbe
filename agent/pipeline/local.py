"""A pipeline run outside the daemon: a spec file and each stage's artifact given by hand (`agent predict
--pipeline SPEC --stage NAME=PATH`), checked the way the hub checks a push before anything runs.

A stage's PATH is an artifact (.tflite / .onnx, with the manifest that names it beside it when there is one)
or a folder holding `manifest.json` and its artifact (the converter's per-profile output).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from agent.errors import InputError
from agent.model import LoadedModel
from agent.pipeline.runner import PipelineRunner, stage_io
from protocol.layout import MANIFEST_FILE
from protocol.manifest import Manifest
from protocol.pipeline import PipelineSpec, PipelineSpecError, check_wiring, spec_from_data, spec_from_toml


def load_spec_file(path: Path) -> PipelineSpec:
    """A spec from TOML (as authored) or JSON (as the hub serves it); one line naming the file and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from e
    try:
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise PipelineSpecError(f"not valid JSON: {e}") from e
            return spec_from_data(data.get("spec", data) if isinstance(data, dict) else data)
        return spec_from_toml(text)
    except PipelineSpecError as e:
        raise InputError(f"{path}: {e}") from e


def parse_stage_options(options: tuple[str, ...]) -> dict[str, Path]:
    """`("locate=out/rpi", ...)` -> {"locate": Path("out/rpi")}; one line for a malformed option."""
    stages: dict[str, Path] = {}
    for option in options:
        name, sep, path = option.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--stage {option!r}: expected NAME=PATH (a stage name and its artifact or folder)")
        if name in stages:
            raise InputError(f"--stage {name}: given twice")
        stages[name] = Path(path)
    return stages


def load_stage(path: Path, threads: int = 1) -> LoadedModel:
    """One stage model from an artifact file or a converter output folder (manifest + artifact)."""
    if path.is_dir():
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise InputError(f"{path}: no {MANIFEST_FILE} in this folder")
        in_dir = _manifest(manifest_path)
        return LoadedModel.from_file(path / in_dir.artifact.file, threads=threads, manifest=in_dir)
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    beside = path.parent / MANIFEST_FILE
    found = _manifest(beside) if beside.is_file() else None
    # A manifest beside it that describes another artifact is not this one's.
    own = found if found is not None and found.artifact.file == path.name else None
    return LoadedModel.from_file(path, threads=threads, manifest=own)


def _manifest(path: Path) -> Manifest:
    try:
        return Manifest.from_json(path.read_bytes())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable manifest: {str(e).splitlines()[0]}") from e


def local_runner(spec: PipelineSpec, stage_paths: Mapping[str, Path], threads: int = 1) -> PipelineRunner:
    """Load every stage, check the wiring against the models as the hub would, and build the runner."""
    names = [s.name for s in spec.stages]
    unknown = [n for n in stage_paths if n not in names]
    if unknown:
        raise InputError(f"--stage {unknown[0]}: the pipeline has no such stage; its stages are {', '.join(names)}")
    missing = [s for s in spec.stages if s.name not in stage_paths]
    if missing:
        s = missing[0]
        raise InputError(f"stage {s.name!r} ({s.model} v{s.version}): give its artifact with --stage {s.name}=PATH")
    models = {}
    for name, path in stage_paths.items():
        try:
            models[name] = load_stage(path, threads)
        except InputError as e:
            raise InputError(f"stage {name!r}: {e}") from e
    try:
        check_wiring(spec, {n: stage_io(m) for n, m in models.items()})
    except PipelineSpecError as e:
        raise InputError(f"pipeline {spec.name!r}: {e}") from e
    return PipelineRunner(spec, models)


def run_rows(
    runner: PipelineRunner,
    inputs: Mapping[str, np.ndarray],
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Every row of INPUTS through the pipeline, one call per row (a pipeline's inputs are one sample each);
    outputs stacked row after row."""
    rows = {len(v) for v in inputs.values() if np.ndim(v)}
    if len(rows) != 1:
        raise InputError(f"inputs must have one number of rows; got {sorted(rows) or 'none'}")
    total = rows.pop()
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(total):
        result = runner.run({k: v[i] for k, v in inputs.items()})
        for name, value in result.outputs.items():
            parts.setdefault(name, []).append(value)
        if on_progress is not None:
            on_progress(i + 1, total)
    return {name: np.concatenate(values) if values[0].ndim else np.stack(values) for name, values in parts.items()}


def read_pipeline_inputs(path: Path, spec: PipelineSpec) -> dict[str, np.ndarray]:
    """Pipeline inputs from an .npz: one array per input name; a lone array (`x`, `arr_0`) feeds a lone input."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz file: {e}") from e
    names = [i.name for i in spec.inputs]
    if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays and next(iter(arrays)) in ("x", "arr_0"):
        return {names[0]: next(iter(arrays.values()))}
    unknown = [k for k in arrays if k not in names]
    if unknown:
        raise InputError(
            f"{path}: array {unknown[0]!r} is no input of pipeline {spec.name!r}; it takes {', '.join(names)}"
        )
    return arrays
