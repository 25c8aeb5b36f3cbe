"""Calibration and validation data: `.npy` (inputs only) or `.npz` (`x` or one array per input name, `y` labels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.errors import DataError

LABEL_KEYS = ("y", "labels")


@dataclass(frozen=True)
class Dataset:
    """Inputs by tensor name (float32, batch first) and optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def take(self, idx: np.ndarray | slice) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in self.inputs.items()}


def _check_array(name: str, arr: np.ndarray, shape: list[int | None], where: str) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{where}: input {name!r} has dtype {arr.dtype}, expected float32")
    if np.issubdtype(arr.dtype, np.integer) and where.startswith("calibration"):
        raise DataError(f"{where}: input {name!r} has dtype {arr.dtype}; calibration data must be floating point")
    want = [d for d in shape[1:]]
    got = list(arr.shape[1:])
    if arr.ndim != len(shape) or any(w is not None and w != g for w, g in zip(want, got, strict=False)):
        raise DataError(
            f"{where}: input {name!r} has shape {tuple(arr.shape)}, model expects (N, "
            f"{', '.join('?' if d is None else str(d) for d in want)})"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{where}: input {name!r} is empty")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise DataError(f"{where}: input {name!r} contains NaN or inf")
    return arr


def load_dataset(
    path: Path, input_shapes: dict[str, list[int | None]], *, where: str, labels_allowed: bool
) -> Dataset:
    """Read and check DATA against the model's inputs; `DataError` with one readable line otherwise."""
    where = f"{where} data {path.name}"
    try:
        if path.suffix == ".npy":
            raw: dict[str, np.ndarray] = {"x": np.load(path, allow_pickle=False)}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        else:
            raise DataError(f"{where}: expected a .npy or .npz file")
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: cannot read: {e}") from e
    labels = None
    for key in LABEL_KEYS:
        if key in raw:
            labels = raw.pop(key)
            if not labels_allowed:
                labels = None
            break
    names = list(input_shapes)
    if len(names) == 1 and names[0] not in raw:
        if len(raw) != 1:
            raise DataError(f"{where}: expected one input array (key 'x' or {names[0]!r}), found {sorted(raw)}")
        raw = {names[0]: next(iter(raw.values()))}
    missing = [n for n in names if n not in raw]
    if missing:
        raise DataError(f"{where}: missing input arrays {missing}; found {sorted(raw)}")
    inputs = {n: _check_array(n, raw[n], input_shapes[n], where) for n in names}
    sizes = {len(v) for v in inputs.values()}
    if len(sizes) != 1:
        raise DataError(f"{where}: input arrays differ in length {sorted(sizes)}")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != sizes.pop() or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{where}: labels 'y' must be a 1-D integer array, one per sample")
        labels = labels.astype(np.int64)
    return Dataset(inputs=inputs, labels=labels)
