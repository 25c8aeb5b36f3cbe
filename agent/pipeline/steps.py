"""The built-in pipeline steps in numpy, each the op its parameter model in protocol/pipeline_steps.py specifies.

`make_step(params)` builds a `Step`: call it with the input arrays by name, get the output arrays by name.
Everything that depends only on the parameters is worked out once, here; what depends on an input's dtype is
worked out on its first call and kept. Only `window` holds state between calls; `reset()` forgets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from agent.pipeline.arrays import Array, StepError, axis_of, numeric, ranked, take
from agent.pipeline.boxes import CropResize, Nms
from protocol.pipeline_steps import (
    CONCAT_MAX_INPUTS,
    ArgmaxParams,
    CastParams,
    ConcatParams,
    SliceParams,
    StepParams,
    ThresholdParams,
    TopKParams,
    WindowParams,
    fill_fits,
    fmt_shape,
)

__all__ = ["Step", "StepError", "make_step"]


class Step(Protocol):
    """One built-in step, ready to run."""

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]: ...

    def reset(self) -> None: ...


def make_step(params: StepParams) -> Step:
    """The runnable step for `params`."""
    return _STEPS[params.op](params)


class Argmax:
    """The `argmax` step (ArgmaxParams)."""

    def __init__(self, params: ArgmaxParams) -> None:
        self.axis, self.keepdims = params.axis, params.keepdims

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = ranked("argmax", "x", take("argmax", inputs, "x"))
        axis = axis_of("argmax", "x", x, self.axis)
        if x.shape[axis] == 0:
            raise StepError(f"argmax: input 'x' has no values along axis {self.axis} (shape {fmt_shape(x.shape)})")
        return {"out": np.asarray(np.argmax(x, axis=axis, keepdims=self.keepdims), dtype=np.int64)}

    def reset(self) -> None:
        """Stateless."""


class TopK:
    """The `topk` step (TopKParams)."""

    def __init__(self, params: TopKParams) -> None:
        self.k, self.axis = params.k, params.axis

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = ranked("topk", "x", take("topk", inputs, "x"))
        axis = axis_of("topk", "x", x, self.axis)
        n = x.shape[axis]
        if self.k > n:
            raise StepError(f"topk: k={self.k} is more than the {n} values along axis {self.axis} of input 'x'")
        last = np.moveaxis(x, axis, -1)
        # A stable ascending sort of the reversed values, read backwards: descending, ties by the lower index.
        order = np.argsort(last[..., ::-1], axis=-1, kind="stable")[..., : -self.k - 1 : -1]
        indices = (n - 1) - order
        values = np.take_along_axis(last, indices, axis=-1)
        if axis != x.ndim - 1:
            values = np.ascontiguousarray(np.moveaxis(values, -1, axis))
            indices = np.ascontiguousarray(np.moveaxis(indices, -1, axis))
        return {"values": values, "indices": indices.astype(np.int64, copy=False)}

    def reset(self) -> None:
        """Stateless."""


class Threshold:
    """The `threshold` step (ThresholdParams)."""

    def __init__(self, params: ThresholdParams) -> None:
        self.params = params
        self._rules: dict[np.dtype[Any], tuple[np.generic | bool, np.generic | None]] = {}

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = numeric("threshold", "x", take("threshold", inputs, "x"))
        rule = self._rules.get(x.dtype)
        if rule is None:
            rule = self._rules[x.dtype] = self._rule(x.dtype)
        bound, fill = rule
        mask = np.full(x.shape, bound) if isinstance(bound, bool) else np.asarray(x >= bound)
        return {"out": mask if fill is None else np.where(mask, x, fill)}

    def _rule(self, dtype: np.dtype[Any]) -> tuple[np.generic | bool, np.generic | None]:
        """The least `dtype` value >= `value` (or whether every or no value passes), and `fill` in `dtype`."""
        value, fill = self.params.value, self.params.fill
        if self.params.keep and not fill_fits(fill, dtype.name):
            raise StepError(f"threshold: fill={fill} cannot be represented in input 'x' of dtype {dtype}")
        filled = dtype.type(fill) if self.params.keep else None
        if dtype.kind == "f":
            with np.errstate(over="ignore"):
                bound = dtype.type(value)
            if float(bound) < value:
                bound = np.nextafter(bound, dtype.type(np.inf))
            return bound, filled
        info, least = np.iinfo(dtype), math.ceil(value)
        if least > info.max:
            return False, filled
        return (True if least <= info.min else dtype.type(least)), filled

    def reset(self) -> None:
        """Stateless."""


class Window:
    """The `window` step (WindowParams)."""

    def __init__(self, params: WindowParams) -> None:
        self.size, self.hop = params.size, params.hop
        self._frames: Array | None = None  # a ring: slot `_next` is the oldest
        self._next = 0
        self._seen = 0

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = take("window", inputs, "x")
        if self._frames is None:
            self._frames = np.zeros((self.size, *x.shape), dtype=x.dtype)
        elif x.shape != self._frames.shape[1:] or x.dtype != self._frames.dtype:
            held = f"{fmt_shape(self._frames.shape[1:])} {self._frames.dtype}"
            raise StepError(f"window: input 'x' is {fmt_shape(x.shape)} {x.dtype}, but the window holds {held} frames")
        self._frames[self._next] = x
        self._next = (self._next + 1) % self.size
        self._seen += 1
        out = np.concatenate((self._frames[self._next :], self._frames[: self._next]))
        ready = self._seen >= self.size and (self._seen - self.size) % self.hop == 0
        return {"out": out, "ready": np.asarray(ready)}

    def reset(self) -> None:
        """Forget every frame: the next call starts an empty window."""
        self._frames, self._next, self._seen = None, 0, 0


class Concat:
    """The `concat` step (ConcatParams)."""

    _NAMES = tuple(f"x{i}" for i in range(CONCAT_MAX_INPUTS))

    def __init__(self, params: ConcatParams) -> None:
        self.axis = params.axis

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        parts: list[Array] = []
        for name in self._NAMES:
            if name not in inputs:
                break
            parts.append(np.asarray(inputs[name]))
        if len(parts) < 2:
            raise StepError(f"concat: input {self._NAMES[len(parts)]!r} is missing")
        first = ranked("concat", "x0", parts[0])
        axis = axis_of("concat", "x0", first, self.axis)
        for i, part in enumerate(parts[1:], start=1):
            if part.dtype != first.dtype:
                raise StepError(f"concat: input 'x{i}' has dtype {part.dtype} but 'x0' has {first.dtype}")
            if part.shape[:axis] + part.shape[axis + 1 :] != first.shape[:axis] + first.shape[axis + 1 :]:
                raise StepError(
                    f"concat: input 'x{i}' has shape {fmt_shape(part.shape)}, which does not fit 'x0' "
                    f"{fmt_shape(first.shape)} (only axis {self.axis} may differ)"
                )
        return {"out": np.concatenate(parts, axis=axis)}

    def reset(self) -> None:
        """Stateless."""


class Slice:
    """The `slice` step (SliceParams)."""

    def __init__(self, params: SliceParams) -> None:
        self.axis = params.axis
        self._slice = slice(params.start, params.stop, params.step)

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = ranked("slice", "x", take("slice", inputs, "x"))
        axis = axis_of("slice", "x", x, self.axis)
        return {"out": x[(slice(None),) * axis + (self._slice,)]}

    def reset(self) -> None:
        """Stateless."""


class Cast:
    """The `cast` step (CastParams)."""

    def __init__(self, params: CastParams) -> None:
        self.dtype = np.dtype(params.dtype)
        self._converters: dict[np.dtype[Any], Callable[[Array], Array]] = {}

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = take("cast", inputs, "x")
        convert = self._converters.get(x.dtype)
        if convert is None:
            convert = self._converters[x.dtype] = converter(x.dtype, self.dtype)
        return {"out": np.asarray(convert(x))}

    def reset(self) -> None:
        """Stateless."""


def converter(src: np.dtype[Any], dst: np.dtype[Any]) -> Callable[[Array], Array]:
    """The function casting `src` arrays to `dst` by the rules of CastParams."""
    if src == dst:
        return lambda x: x
    if dst.kind == "b":
        return lambda x: x != 0
    if src.kind == "b":
        return lambda x: x.astype(dst)
    if dst.kind == "f":

        def to_float(x: Array) -> Array:
            with np.errstate(over="ignore"):  # past the target's range is +-inf, by definition
                return x.astype(dst)

        return to_float
    info = np.iinfo(dst)
    if src.kind in "iu":
        have = np.iinfo(src)
        lo, hi = src.type(max(info.min, have.min)), src.type(min(info.max, have.max))
        if lo == have.min and hi == have.max:
            return lambda x: x.astype(dst)
        return lambda x: np.clip(x, lo, hi).astype(dst)
    return _float_to_int(src, dst)


def _float_to_int(src: np.dtype[Any], dst: np.dtype[Any]) -> Callable[[Array], Array]:
    """Round half to even, saturate, NaN to 0; the clip bounds are the nearest `src` values inside the range."""
    info, finite = np.iinfo(dst), np.finfo(src)
    if info.max >= int(finite.max):
        hi = src.type(finite.max)
    else:
        hi = src.type(info.max)
        if int(hi) > info.max:
            hi = np.nextafter(hi, src.type(-np.inf))
    lo = src.type(-finite.max) if info.min < -int(finite.max) else src.type(info.min)

    def to_int(x: Array) -> Array:
        rounded = np.rint(x, out=np.empty_like(x))  # an array even for 0-d x, so it can be clipped in place
        above = rounded > hi if int(hi) < info.max else None
        below = rounded < lo if int(lo) > info.min else None
        np.clip(rounded, lo, hi, out=rounded)
        np.copyto(rounded, 0, where=np.isnan(rounded))
        out = rounded.astype(dst)
        if above is not None:
            np.copyto(out, info.max, where=above)
        if below is not None:
            np.copyto(out, info.min, where=below)
        return out

    return to_int


_STEPS: dict[str, Callable[[Any], Step]] = {
    "argmax": Argmax,
    "topk": TopK,
    "threshold": Threshold,
    "nms": Nms,
    "crop_resize": CropResize,
    "window": Window,
    "concat": Concat,
    "slice": Slice,
    "cast": Cast,
}
