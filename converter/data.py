"""Calibration and validation data: `.npy` (inputs only) or `.npz` (`x` or one array per input name, `y` labels).

Every array's first axis counts samples. A batch-first input (first dim dynamic or 1) holds one sample per
row: `(N, *shape[1:])`. An input that is not batch-first (a 0-d scalar such as a sample rate, recurrent state
such as `[2, None, 128]`) holds the whole tensor of each sample: `(N, *shape)`. A model with such an input
is run one sample at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.errors import DataError
from protocol.manifest import TensorSpec

LABEL_KEYS = ("y", "labels")
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Dataset:
    """Inputs by tensor name (in each input's dtype, samples first), optional integer labels, and which inputs
    are whole tensors per sample rather than rows of a batch."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    whole: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def max_batch(self) -> int | None:
        """1 when some input is whole per sample (samples cannot stack), else no limit."""
        return 1 if self.whole else None

    def take(self, start: int, stop: int) -> Feed:
        """The feed for samples [start, stop): rows of batch-first inputs, the whole value of the others."""
        if self.whole and stop - start != 1:
            raise ValueError("a model with whole-tensor inputs runs one sample at a time")
        return {k: np.asarray(v[start]) if k in self.whole else v[start:stop] for k, v in self.inputs.items()}

    def subset(self, idx: np.ndarray) -> Dataset:
        labels = self.labels[idx] if self.labels is not None else None
        return Dataset({k: v[idx] for k, v in self.inputs.items()}, labels, self.whole)


def run_all(
    fn: Callable[[Feed], dict[str, np.ndarray]], data: Dataset, batch: int = 64, max_batch: int | None = None
) -> dict[str, np.ndarray]:
    """`fn` over every sample, outputs per name with samples first.

    Batches of `batch` rows when every input is batch-first, the model takes batches (`max_batch`) and every
    output comes back with one row per sample; otherwise one sample per call, each output stacked along a
    new first axis (a model whose outputs are not batch-first, or that was built for batch 1).
    """
    n = len(data)
    if data.max_batch is None and max_batch is None and n > 1:
        first = fn(data.take(0, min(batch, n)))
        size = min(batch, n)
        if all(np.ndim(v) >= 1 and np.shape(v)[0] == size for v in first.values()):
            parts = [first] + [fn(data.take(i, min(i + batch, n))) for i in range(batch, n, batch)]
            return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in first}
    calls = [fn(data.take(i, i + 1)) for i in range(n)]
    return {k: np.stack([np.asarray(c[k]) for c in calls]) for k in calls[0]}


def per_sample(outputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Outputs as (n, features): rows of a batch or stacked per-sample values, flattened per sample."""
    return {k: v.reshape(n, -1) for k, v in outputs.items()}


def _check_array(spec: TensorSpec, arr: np.ndarray, where: str, calibration: bool) -> np.ndarray:
    name, shape = spec.name, spec.shape
    kind = np.dtype(spec.dtype).kind
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise DataError(f"{where}: input {name!r} has dtype {arr.dtype}, expected {spec.dtype}")
    if kind == "f" and calibration and not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{where}: input {name!r} has dtype {arr.dtype}; calibration data must be floating point")
    want = list(shape[1:]) if spec.batch_first else list(shape)
    if arr.ndim != len(want) + 1 or any(w is not None and w != g for w, g in zip(want, arr.shape[1:], strict=False)):
        raise DataError(
            f"{where}: input {name!r} has shape {tuple(arr.shape)}, model expects (N, "
            f"{', '.join('?' if d is None else str(d) for d in want)})"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{where}: input {name!r} is empty")
    if kind == "f":
        arr = arr.astype(spec.dtype, copy=False)
        if not np.isfinite(arr).all():
            raise DataError(f"{where}: input {name!r} contains NaN or inf")
        return arr
    if np.issubdtype(arr.dtype, np.floating) and not (np.isfinite(arr).all() and np.array_equal(arr, np.trunc(arr))):
        raise DataError(f"{where}: input {name!r} is {spec.dtype} but holds values that are not whole numbers")
    if kind == "b":
        if not np.isin(arr, (0, 1)).all():
            raise DataError(f"{where}: input {name!r} is bool but holds values other than 0 and 1")
        return arr.astype(np.bool_)
    info = np.iinfo(np.dtype(spec.dtype))
    if arr.min() < info.min or arr.max() > info.max:
        raise DataError(f"{where}: input {name!r} holds values outside {spec.dtype} [{info.min}, {info.max}]")
    return arr.astype(spec.dtype)


def load_dataset(path: Path, inputs: list[TensorSpec], *, where: str, labels_allowed: bool) -> Dataset:
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
    names = [s.name for s in inputs]
    if len(names) == 1 and names[0] not in raw:
        if len(raw) != 1 or ("x" not in raw and "arr_0" not in raw):
            raise DataError(f"{where}: expected one input array (key 'x' or {names[0]!r}), found {sorted(raw)}")
        raw = {names[0]: next(iter(raw.values()))}
    missing = [n for n in names if n not in raw]
    if missing:
        raise DataError(f"{where}: missing input arrays {missing}; found {sorted(raw)}")
    unused = sorted(set(raw) - set(names))
    if unused:
        raise DataError(f"{where}: arrays {unused} are not inputs of the model (it takes {names})")
    arrays = {s.name: _check_array(s, raw[s.name], where, where.startswith("calibration")) for s in inputs}
    sizes = {len(v) for v in arrays.values()}
    if len(sizes) != 1:
        raise DataError(f"{where}: input arrays differ in length {sorted(sizes)}")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != sizes.pop() or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{where}: labels 'y' must be a 1-D integer array, one per sample")
        labels = labels.astype(np.int64)
    whole = frozenset(s.name for s in inputs if not s.batch_first)
    return Dataset(inputs=arrays, labels=labels, whole=whole)
