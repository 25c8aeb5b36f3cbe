"""Built-in pipeline steps as data: parameter models, input and output names, static type inference.

The glue between a pipeline's models is one of the ops below, never user code. A spec carries the op and its
parameters (`StepParams`, discriminated by `op`); the hub checks the wiring at push with `infer_types`; the agent
runs the numpy implementation (agent/pipeline/steps.py), whose tests hold it to the docstrings here.

    step_inputs(params, supplied=())  -> (required, optional) input names, given the names the wiring supplies
    accepts_input(params, name)       -> whether `name` can be an input of the step at all
    step_outputs(params)              -> output names
    infer_types(params, inputs)       -> output name -> TensorType, or StepTypeError naming the input

Every op has fixed input names except `concat`, which takes `x0, x1, ... x{n-1}` with n decided by the wiring:
`step_inputs` then requires x0 up to the highest index supplied (at least x0 and x1), so a gap shows as a missing
input and any other name (`y`, `x01`, `x64`) as an unknown one.

A dimension is an int >= 1 or None (dynamic). Inference propagates None and reports a mismatch only where both
sides are known. Boxes have four coordinates: `yxyx` is [y1, x1, y2, x2] (TensorFlow's order), `xyxy` is
[x1, y1, x2, y2]. Outputs may share memory with inputs (slice returns a view); steps never modify their inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import Field, TypeAdapter, model_validator

from protocol.base import Contract
from protocol.manifest import DType, FiniteFloat

Dim = Annotated[int, Field(ge=1)]
Axis = Annotated[int, Field(ge=-64, le=63)]  # numpy holds at most 64 dimensions
Index = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
BoxFormat = Literal["yxyx", "xyxy"]
CONCAT_MAX_INPUTS = 64
MAX_CROP_PIXELS = 2**22  # max_crops * h * w: bounds the memory of one crop_resize output

FLOAT_MAX: dict[str, float] = {"float16": 65504.0, "float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}
INT_RANGES: dict[str, tuple[int, int]] = {
    "uint8": (0, 2**8 - 1),
    **{f"int{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
}


class StepTypeError(ValueError):
    """Inputs a step cannot take (names, shapes, dtypes); the message names the op and the input."""


class TensorType(Contract):
    """A tensor's static type; a `None` dimension is dynamic."""

    shape: list[Dim | None]
    dtype: DType


class ArgmaxParams(Contract):
    """`out` (int64): the index of the largest value of `x` along `axis`, the first one on ties; NaN counts as
    larger than every number. `keepdims` keeps that axis with size 1, else it is removed."""

    op: Literal["argmax"] = "argmax"
    axis: Axis = -1
    keepdims: bool = False


class TopKParams(Contract):
    """The `k` largest values of `x` along `axis`, in descending order, ties by the lower index first (NaN counts
    as larger than every number): `values` (x's dtype) and their `indices` (int64); the axis has size k."""

    op: Literal["topk"] = "topk"
    k: Annotated[int, Field(ge=1, le=65536)]
    axis: Axis = -1


class ThresholdParams(Contract):
    """`x >= value`, compared exactly as real numbers (NaN never passes). `out` is that mask (bool) when `keep` is
    false; when true, `x` where it passes and `fill` elsewhere, in x's dtype (fill must be representable in it)."""

    op: Literal["threshold"] = "threshold"
    value: FiniteFloat
    keep: bool = False
    fill: FiniteFloat = 0.0


class NmsParams(Contract):
    """Greedy non-maximum suppression, one image.

    Inputs `boxes` [N, 4] or [1, N, 4] and `scores` [N] or [1, N]. Boxes with score < `score_threshold` (or NaN)
    are dropped. The rest are visited by descending score, ties by the lower index; a box is kept unless its IoU
    with an already kept box is > `iou_threshold`; at most `max_boxes` are kept. A box's corners may come in
    either order (each axis is taken as [min, max]); IoU = intersection / union in float64, 0 where the union is 0.
    Outputs, padded to `max_boxes` rows in kept order: `boxes` [max_boxes, 4] float32 (as given, same format;
    zeros past `count`), `scores` [max_boxes] float32 (zeros past `count`), `indices` [max_boxes] int64 (the
    rows of N; -1 past `count`), `count` int32 scalar [].
    """

    op: Literal["nms"] = "nms"
    iou_threshold: Annotated[float, Field(ge=0, le=1)]
    score_threshold: FiniteFloat = 0.0
    max_boxes: Annotated[int, Field(ge=1, le=4096)]
    box_format: BoxFormat = "yxyx"


class CropResizeParams(Contract):
    """Crop boxes out of an image and resize each to `size` = [h, w], like TensorFlow's crop_and_resize.

    Inputs `image` [H, W, C] or [1, H, W, C], `boxes` [K, 4] or [1, K, 4], optional `count` (integer, shape []
    or [1]). The first n = min(K, max_crops, max(count, 0)) boxes are cropped (count absent: min(K, max_crops)).
    A box coordinate Y is in pixel-centre units, Y = y * (H - 1) for `normalized` boxes (y in [0, 1] spans the
    image), else Y = y. Crop row i samples the image at Y1 + i * (Y2 - Y1) / (h - 1) (float64, in that order),
    or (Y1 + Y2) / 2 when h == 1; columns likewise with X and w. A box with Y1 > Y2 samples upside down.
    A sample outside [0, H - 1] x [0, W - 1] is 0. `bilinear` interpolates the four neighbouring pixels
    (floor and ceil of each coordinate); `nearest` takes pixel floor(coordinate + 0.5).
    Outputs `crops` [max_crops, h, w, C] float32 (rows n and later are zeros) and `count` = n, int32 scalar [].
    """

    op: Literal["crop_resize"] = "crop_resize"
    size: tuple[Annotated[int, Field(ge=1, le=2048)], Annotated[int, Field(ge=1, le=2048)]]
    max_crops: Annotated[int, Field(ge=1, le=256)]
    method: Literal["bilinear", "nearest"] = "bilinear"
    box_format: BoxFormat = "yxyx"
    normalized: bool = True

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        pixels = self.max_crops * self.size[0] * self.size[1]
        if pixels > MAX_CROP_PIXELS:
            raise ValueError(f"max_crops * size[0] * size[1] must be at most {MAX_CROP_PIXELS}, got {pixels}")
        return self


class WindowParams(Contract):
    """The last `size` frames of `x`, one frame per run, kept while the pipeline runs (reset starts it empty).

    `out` [size, *frame] in x's dtype, oldest first, newest last; slots not yet filled are zeros at the front.
    `ready` (bool scalar []) is true on frame n (counting from 1) when n >= size and (n - size) % hop == 0.
    Every frame must have the first frame's shape and dtype."""

    op: Literal["window"] = "window"
    size: Annotated[int, Field(ge=1, le=4096)]
    hop: Annotated[int, Field(ge=1, le=4096)] = 1


class ConcatParams(Contract):
    """`out`: inputs x0, x1, ... x{n-1} (n >= 2) joined along `axis` in index order; all share one dtype and
    rank, and every dimension but `axis`."""

    op: Literal["concat"] = "concat"
    axis: Axis


class SliceParams(Contract):
    """`out` = x[start:stop:step] along `axis` (numpy semantics: negative indices count from the end, bounds clip).

    A slice that selects nothing from a known dimension is refused when the spec is checked."""

    op: Literal["slice"] = "slice"
    axis: Axis
    start: Index = 0
    stop: Index | None = None
    step: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1


class CastParams(Contract):
    """`out` = x converted to `dtype`. Float to integer rounds half to even, then saturates to the target range
    (NaN becomes 0, +-inf the range's ends); integer to integer saturates; to bool, nonzero (and NaN) is true;
    bool to a number is 0 or 1; to a float, the nearest value (beyond its range, +-inf)."""

    op: Literal["cast"] = "cast"
    dtype: DType


PARAM_MODELS = (
    ArgmaxParams,
    TopKParams,
    ThresholdParams,
    NmsParams,
    CropResizeParams,
    WindowParams,
    ConcatParams,
    SliceParams,
    CastParams,
)
StepParams = Annotated[
    ArgmaxParams
    | TopKParams
    | ThresholdParams
    | NmsParams
    | CropResizeParams
    | WindowParams
    | ConcatParams
    | SliceParams
    | CastParams,
    Field(discriminator="op"),
]
STEP_OPS: tuple[str, ...] = tuple(m.model_fields["op"].default for m in PARAM_MODELS)
_ADAPTER: TypeAdapter[StepParams] = TypeAdapter(StepParams)


def parse_step_params(data: str | bytes | Mapping[str, Any]) -> StepParams:
    """Validate a params object (JSON text or a mapping with `op`); pydantic.ValidationError otherwise."""
    if isinstance(data, str | bytes):
        return _ADAPTER.validate_json(data)
    return _ADAPTER.validate_python(data)


_FIXED_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "argmax": (("x",), ()),
    "topk": (("x",), ()),
    "threshold": (("x",), ()),
    "nms": (("boxes", "scores"), ()),
    "crop_resize": (("image", "boxes"), ("count",)),
    "window": (("x",), ()),
    "slice": (("x",), ()),
    "cast": (("x",), ()),
}
_OUTPUTS: dict[str, tuple[str, ...]] = {
    "argmax": ("out",),
    "topk": ("values", "indices"),
    "threshold": ("out",),
    "nms": ("boxes", "scores", "indices", "count"),
    "crop_resize": ("crops", "count"),
    "window": ("out", "ready"),
    "concat": ("out",),
    "slice": ("out",),
    "cast": ("out",),
}


def concat_index(name: str) -> int | None:
    """`"x3"` -> 3; None for anything that is not a concat input name (`x03`, `y`, `x64`)."""
    m = re.fullmatch(r"x(0|[1-9][0-9]{0,2})", name)
    if m is None or int(m.group(1)) >= CONCAT_MAX_INPUTS:
        return None
    return int(m.group(1))


def step_inputs(params: StepParams, supplied: Iterable[str] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) input names; for concat, x0 up to the highest index in `supplied` (at least x1)."""
    if params.op != "concat":
        return _FIXED_INPUTS[params.op]
    indices = [i for i in map(concat_index, supplied) if i is not None]
    n = max(2, max(indices, default=0) + 1)
    return tuple(f"x{i}" for i in range(n)), ()


def accepts_input(params: StepParams, name: str) -> bool:
    """Whether `name` can be wired into this step at all."""
    if params.op == "concat":
        return concat_index(name) is not None
    required, optional = _FIXED_INPUTS[params.op]
    return name in required or name in optional


def step_outputs(params: StepParams) -> tuple[str, ...]:
    """The step's output names."""
    return _OUTPUTS[params.op]


def fmt_shape(shape: Iterable[int | None]) -> str:
    """`[1, ?, 4]`: a shape as messages write it."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def infer_types(params: StepParams, inputs: Mapping[str, TensorType]) -> dict[str, TensorType]:
    """The output types of a step fed `inputs`; StepTypeError naming the op and input when they do not fit."""
    op = params.op
    required, optional = step_inputs(params, inputs)
    unknown = [n for n in inputs if n not in required and n not in optional]
    if unknown:
        raise StepTypeError(f"{op}: no input {unknown[0]!r}; it takes {', '.join((*required, *optional))}")
    missing = [n for n in required if n not in inputs]
    if missing:
        raise StepTypeError(f"{op}: input {missing[0]!r} is missing")
    match params:
        case ArgmaxParams():
            x = _ranked(op, "x", inputs["x"])
            axis = _axis(op, "x", params.axis, len(x.shape))
            shape = [*x.shape[:axis], *([1] if params.keepdims else []), *x.shape[axis + 1 :]]
            return {"out": TensorType(shape=shape, dtype="int64")}
        case TopKParams():
            return _infer_topk(params, inputs["x"])
        case ThresholdParams():
            return {"out": _infer_threshold(params, inputs["x"])}
        case NmsParams():
            return _infer_nms(params, inputs["boxes"], inputs["scores"])
        case CropResizeParams():
            return _infer_crop_resize(params, inputs)
        case WindowParams():
            x = inputs["x"]
            out = TensorType(shape=[params.size, *x.shape], dtype=x.dtype)
            return {"out": out, "ready": TensorType(shape=[], dtype="bool")}
        case ConcatParams():
            return {"out": _infer_concat(params, [inputs[n] for n in required])}
        case SliceParams():
            return {"out": _infer_slice(params, inputs["x"])}
        case CastParams():
            return {"out": TensorType(shape=inputs["x"].shape, dtype=params.dtype)}
    raise AssertionError(f"unhandled op {op}")  # pragma: no cover - the union is exhaustive


def _ranked(op: str, name: str, t: TensorType) -> TensorType:
    if not t.shape:
        raise StepTypeError(f"{op}: input {name!r} must have rank >= 1, got a scalar (shape [])")
    return t


def _numeric(op: str, name: str, t: TensorType) -> TensorType:
    if t.dtype == "bool":
        raise StepTypeError(f"{op}: input {name!r} must be numeric, got bool")
    return t


def _axis(op: str, name: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise StepTypeError(f"{op}: axis {axis} is out of range for input {name!r} of rank {rank}")
    return axis % rank


def _unbatched(op: str, name: str, t: TensorType, pattern: list[str]) -> list[int | None]:
    """The shape without an optional leading batch dim of 1; `pattern` names the dims, digits fix them."""
    shape = t.shape[1:] if len(t.shape) == len(pattern) + 1 and t.shape[0] in (1, None) else t.shape
    fits = len(shape) == len(pattern) and all(
        d is None or not p.isdigit() or d == int(p) for d, p in zip(shape, pattern, strict=False)
    )
    if not fits:
        want = ", ".join(pattern)
        raise StepTypeError(f"{op}: input {name!r} must have shape [{want}] or [1, {want}], got {fmt_shape(t.shape)}")
    return shape


def _agree(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def _infer_topk(params: TopKParams, x: TensorType) -> dict[str, TensorType]:
    _ranked("topk", "x", x)
    axis = _axis("topk", "x", params.axis, len(x.shape))
    size = x.shape[axis]
    if size is not None and params.k > size:
        raise StepTypeError(
            f"topk: k={params.k} is more than the {size} values along axis {params.axis} "
            f"of input 'x' (shape {fmt_shape(x.shape)})"
        )
    shape = [*x.shape[:axis], params.k, *x.shape[axis + 1 :]]
    return {"values": TensorType(shape=shape, dtype=x.dtype), "indices": TensorType(shape=shape, dtype="int64")}


def _infer_threshold(params: ThresholdParams, x: TensorType) -> TensorType:
    _numeric("threshold", "x", x)
    if not params.keep:
        return TensorType(shape=x.shape, dtype="bool")
    if not fill_fits(params.fill, x.dtype):
        raise StepTypeError(f"threshold: fill={params.fill} cannot be represented in input 'x' of dtype {x.dtype}")
    return x


def fill_fits(fill: float, dtype: str) -> bool:
    """Whether `fill` is a value of `dtype` (an integral value in range; a float within the finite range)."""
    if dtype in INT_RANGES:
        lo, hi = INT_RANGES[dtype]
        return fill.is_integer() and lo <= fill <= hi
    return dtype in FLOAT_MAX and abs(fill) <= FLOAT_MAX[dtype]


def _infer_nms(params: NmsParams, boxes: TensorType, scores: TensorType) -> dict[str, TensorType]:
    n_boxes, _ = _unbatched("nms", "boxes", _numeric("nms", "boxes", boxes), ["N", "4"])
    (n_scores,) = _unbatched("nms", "scores", _numeric("nms", "scores", scores), ["N"])
    if not _agree(n_boxes, n_scores):
        raise StepTypeError(f"nms: inputs 'boxes' and 'scores' disagree on N: {n_boxes} boxes, {n_scores} scores")
    m = params.max_boxes
    return {
        "boxes": TensorType(shape=[m, 4], dtype="float32"),
        "scores": TensorType(shape=[m], dtype="float32"),
        "indices": TensorType(shape=[m], dtype="int64"),
        "count": TensorType(shape=[], dtype="int32"),
    }


def _infer_crop_resize(params: CropResizeParams, inputs: Mapping[str, TensorType]) -> dict[str, TensorType]:
    *_, channels = _unbatched(
        "crop_resize", "image", _numeric("crop_resize", "image", inputs["image"]), ["H", "W", "C"]
    )
    _unbatched("crop_resize", "boxes", _numeric("crop_resize", "boxes", inputs["boxes"]), ["K", "4"])
    count = inputs.get("count")
    if count is not None and (count.dtype not in INT_RANGES or count.shape not in ([], [1], [None])):
        raise StepTypeError(
            f"crop_resize: input 'count' must be an integer scalar (shape [] or [1]), "
            f"got {count.dtype} {fmt_shape(count.shape)}"
        )
    h, w = params.size
    return {
        "crops": TensorType(shape=[params.max_crops, h, w, channels], dtype="float32"),
        "count": TensorType(shape=[], dtype="int32"),
    }


def _infer_concat(params: ConcatParams, parts: list[TensorType]) -> TensorType:
    first = _ranked("concat", "x0", parts[0])
    rank = len(first.shape)
    axis = _axis("concat", "x0", params.axis, rank)
    for i, t in enumerate(parts[1:], start=1):
        if t.dtype != first.dtype:
            raise StepTypeError(
                f"concat: input 'x{i}' has dtype {t.dtype} but 'x0' has {first.dtype}; "
                "all inputs must share one dtype (add a cast step)"
            )
        if len(t.shape) != rank:
            raise StepTypeError(f"concat: input 'x{i}' has rank {len(t.shape)} but 'x0' has rank {rank}")
        for d, (a, b) in enumerate(zip(first.shape, t.shape, strict=True)):
            if d != axis and not _agree(a, b):
                raise StepTypeError(
                    f"concat: input 'x{i}' has shape {fmt_shape(t.shape)}, which differs from 'x0' "
                    f"{fmt_shape(first.shape)} in dim {d} (only axis {params.axis} may differ)"
                )
    shape = [next((t.shape[d] for t in parts if t.shape[d] is not None), None) for d in range(rank)]
    sizes = [t.shape[axis] for t in parts]
    shape[axis] = None if None in sizes else sum(s for s in sizes if s is not None)
    return TensorType(shape=shape, dtype=first.dtype)


def _infer_slice(params: SliceParams, x: TensorType) -> TensorType:
    _ranked("slice", "x", x)
    axis = _axis("slice", "x", params.axis, len(x.shape))
    size = x.shape[axis]
    start, stop, step = params.start, params.stop, params.step
    # Empty for every size: both bounds counted from the same end, stop not past start.
    never = stop is not None and (start >= 0) == (stop >= 0) and stop <= start
    length = None if size is None else len(range(*slice(start, stop, step).indices(size)))
    if never or length == 0:
        raise StepTypeError(
            f"slice: [{start}:{'' if stop is None else stop}:{step}] selects nothing from axis {params.axis} "
            f"of input 'x' (shape {fmt_shape(x.shape)})"
        )
    shape = list(x.shape)
    shape[axis] = length
    return TensorType(shape=shape, dtype=x.dtype)
