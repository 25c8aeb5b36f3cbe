"""Operator tools outside the daemon: one inference on any model file, or a batch over .npz/CSV."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.errors import InputError
from agent.model import LoadedModel
from agent.runtimes import Array


def read_npz(path: Path, model: LoadedModel) -> dict[str, Array]:
    """Inputs from an .npz: one array per input name or alias; a lone array under `x` or unnamed (`arr_0`, as
    `np.savez(path, array)` writes it) feeds a lone input, as in the converter's data files."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz file: {e}") from e
    names = [b.name for b in model.inputs]
    if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays:
        key = next(iter(arrays))
        if key in ("x", "arr_0"):
            return {names[0]: arrays[key]}
    return arrays


def read_csv(path: Path, model: LoadedModel) -> dict[str, Array]:
    """Rows of flattened features for a single-input model; a non-numeric first row is a header."""
    if len(model.inputs) != 1:
        raise InputError(f"{path}: CSV input needs a single-input model; this one takes {len(model.inputs)}")
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read CSV: {e}") from e
    if rows and not _numeric(rows[0]):
        rows = rows[1:]
    if not rows:
        raise InputError(f"{path}: no data rows")
    try:
        values = np.array([[float(x) for x in r] for r in rows], dtype=np.float32)
    except ValueError as e:
        raise InputError(f"{path}: non-numeric value in CSV: {e}") from e
    return {model.inputs[0].name: values}


def _numeric(row: list[str]) -> bool:
    try:
        [float(x) for x in row]
    except ValueError:
        return False
    return True


def read_inputs(path: Path, model: LoadedModel) -> dict[str, Array]:
    """Inputs from .npz or .csv by suffix."""
    if path.suffix.lower() == ".csv":
        return read_csv(path, model)
    return read_npz(path, model)


def run_batches(
    model: LoadedModel,
    inputs: dict[str, Array],
    batch_size: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Array]:
    """Predict over every row in chunks of `batch_size`; outputs concatenated per name.

    Batch-first inputs hold one row per sample. An input that is not batch-first (a 0-d scalar, recurrent
    state) is either given once, in its own shape, and fed with every chunk, or given per row (one more
    leading axis): then rows run one at a time. Outputs that are not batch-first stack along a new leading axis.
    """
    inputs = {k: np.asarray(v) for k, v in model.resolve(inputs).items()}
    constant = {b.name for b in model.inputs if not b.batch_first and inputs[b.name].ndim == len(b.shape)}
    rows = {len(v) for k, v in inputs.items() if k not in constant and v.ndim}
    if len(rows) > 1:
        raise InputError(f"inputs have different numbers of rows: {sorted(rows)}")
    if not rows:
        raise InputError("no input has rows to run over (every input is given once, in its own shape)")
    total = rows.pop()
    per_row = any(not b.batch_first and b.name not in constant for b in model.inputs)
    step = 1 if per_row else batch_size
    parts: dict[str, list[Array]] = {b.name: [] for b in model.outputs}
    for start in range(0, total, step):
        chunk = {}
        for b in model.inputs:
            value = inputs[b.name]
            if b.name in constant:
                chunk[b.name] = value
            elif b.batch_first:
                chunk[b.name] = value[start : start + step]
            else:
                chunk[b.name] = value[start]
        for name, value in model.predict(chunk).items():
            parts[name].append(value if model.output(name).batch_first else value[None])
        if on_progress is not None:
            on_progress(min(start + step, total), total)
    return {k: np.concatenate(v) for k, v in parts.items()}


def write_outputs(path: Path, outputs: dict[str, Array]) -> None:
    """Save outputs: .npz (one array per output name) or .csv (flattened columns `name_i`)."""
    if path.suffix.lower() == ".csv":
        header: list[str] = []
        columns: list[Array] = []
        for name, value in outputs.items():
            flat = value.reshape(len(value), -1)
            header += [f"{name}_{i}" for i in range(flat.shape[1])]
            columns.append(flat)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(np.concatenate(columns, axis=1).tolist())
        return
    np.savez(path, **outputs)  # type: ignore[arg-type]
