"""`StepError` and the input checks every built-in step shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import InputError
from protocol.pipeline_steps import fmt_shape

Array = npt.NDArray[Any]


class StepError(InputError, ValueError):
    """A step given inputs it cannot run on (missing, wrong rank, shape or dtype); names the op and the input."""


def take(op: str, inputs: Mapping[str, Any], name: str) -> Array:
    """Input `name` as an array; StepError when it is missing."""
    try:
        return np.asarray(inputs[name])
    except KeyError as e:
        raise StepError(f"{op}: input {name!r} is missing") from e


def ranked(op: str, name: str, a: Array) -> Array:
    """`a` when it has at least one dimension."""
    if a.ndim == 0:
        raise StepError(f"{op}: input {name!r} must have rank >= 1, got a scalar (shape [])")
    return a


def numeric(op: str, name: str, a: Array) -> Array:
    """`a` when its dtype is an integer or float one."""
    if a.dtype.kind not in "iuf":
        raise StepError(f"{op}: input {name!r} must be numeric, got {a.dtype}")
    return a


def axis_of(op: str, name: str, a: Array, axis: int) -> int:
    """`axis` as a non-negative index into `a`'s dimensions."""
    if not -a.ndim <= axis < a.ndim:
        raise StepError(f"{op}: axis {axis} is out of range for input {name!r} of rank {a.ndim}")
    return axis % a.ndim


def unbatched(op: str, name: str, a: Array, pattern: tuple[str, ...]) -> Array:
    """`a` without an optional leading batch dim of 1; `pattern` names the dims, digits fix them."""
    inner = a[0] if a.ndim == len(pattern) + 1 and a.shape[0] == 1 else a
    if inner.ndim != len(pattern) or any(
        p.isdigit() and d != int(p) for d, p in zip(inner.shape, pattern, strict=True)
    ):
        want = ", ".join(pattern)
        raise StepError(f"{op}: input {name!r} must have shape [{want}] or [1, {want}], got {fmt_shape(a.shape)}")
    return inner
