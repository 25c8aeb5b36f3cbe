"""The numpy steps against references written the obvious way (Python loops), and against their inferred types."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from agent.errors import InputError
from agent.pipeline.steps import StepError, make_step
from protocol.pipeline_steps import (
    ArgmaxParams,
    CastParams,
    ConcatParams,
    CropResizeParams,
    NmsParams,
    SliceParams,
    StepParams,
    StepTypeError,
    TensorType,
    ThresholdParams,
    TopKParams,
    WindowParams,
    infer_types,
    step_outputs,
)

FEW = settings(max_examples=40, deadline=None)
NUMERIC = ["float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64"]
shapes = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def small_arrays(dtype: str, shape: Any = shapes) -> st.SearchStrategy[np.ndarray]:
    """Values with many ties; no NaN (tests of NaN are explicit)."""
    if dtype == "bool":
        elements: st.SearchStrategy[Any] = st.booleans()
    elif dtype.startswith("float"):
        elements = st.sampled_from([-2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 3.0, 100.0])
    else:
        elements = st.integers(0 if dtype == "uint8" else -3, 5)
    return arrays(np.dtype(dtype), shape, elements=elements)


def run(params: StepParams, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run the step and check its outputs against the types the protocol infers, static and all-dynamic."""
    outputs = make_step(params)(inputs)
    assert tuple(outputs) == step_outputs(params)
    assert all(isinstance(v, np.ndarray) for v in outputs.values())
    if all(a.size for a in inputs.values()):
        static = {k: TensorType(shape=list(a.shape), dtype=str(a.dtype)) for k, a in inputs.items()}
        dynamic = {k: TensorType(shape=[None] * a.ndim, dtype=str(a.dtype)) for k, a in inputs.items()}
        for name, want in infer_types(params, static).items():
            assert (list(outputs[name].shape), str(outputs[name].dtype)) == (want.shape, want.dtype), name
        for name, loose in infer_types(params, dynamic).items():
            assert loose.dtype == str(outputs[name].dtype)
            assert len(loose.shape) == outputs[name].ndim
            assert all(d is None or d == g for d, g in zip(loose.shape, outputs[name].shape, strict=True)), name
    return outputs


def lanes(x: np.ndarray, axis: int) -> list[list[Any]]:
    """Every 1-d lane of `x` along `axis`, as Python lists, in the C order of the other axes."""
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]).tolist()


def from_lanes(rows: Sequence[Sequence[Any]], shape: tuple[int, ...], axis: int) -> np.ndarray:
    """The inverse of `lanes` for lanes of a new length."""
    moved = [*shape[:axis], *shape[axis + 1 :], len(rows[0]) if rows else 0]
    return np.moveaxis(np.array(rows).reshape(moved), -1, axis)


@FEW
@given(st.sampled_from([*NUMERIC, "bool"]).flatmap(small_arrays), st.data())
def test_argmax(x: np.ndarray, data: st.DataObject) -> None:
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    keepdims = data.draw(st.booleans())
    out = run(ArgmaxParams(axis=axis, keepdims=keepdims), x=x)["out"]
    expected = [max(range(len(lane)), key=lambda i, lane=lane: (lane[i], -i)) for lane in lanes(x, axis)]
    want = from_lanes([[e] for e in expected], x.shape, axis % x.ndim)
    assert np.array_equal(out, want if keepdims else want.squeeze(axis))
    assert out.dtype == np.int64


def test_argmax_counts_nan_largest() -> None:
    x = np.array([[1.0, np.nan, 5.0, np.nan], [2.0, 7.0, 7.0, 1.0]], dtype=np.float32)
    assert run(ArgmaxParams(), x=x)["out"].tolist() == [1, 1]


@FEW
@given(st.sampled_from(NUMERIC).flatmap(small_arrays), st.data())
def test_topk(x: np.ndarray, data: st.DataObject) -> None:
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    k = data.draw(st.integers(1, x.shape[axis]))
    out = run(TopKParams(k=k, axis=axis), x=x)
    ranked = [sorted(range(len(lane)), key=lambda i, lane=lane: (-lane[i], i))[:k] for lane in lanes(x, axis)]
    values = [[lane[i] for i in order] for lane, order in zip(lanes(x, axis), ranked, strict=True)]
    assert np.array_equal(out["indices"], from_lanes(ranked, x.shape, axis % x.ndim))
    assert np.array_equal(out["values"], from_lanes(values, x.shape, axis % x.ndim).astype(x.dtype))


def test_topk_ties_and_nan() -> None:
    x = np.array([1.0, 3.0, np.nan, 3.0, 2.0], dtype=np.float32)
    out = run(TopKParams(k=4), x=x)
    assert out["indices"].tolist() == [2, 1, 3, 4]
    assert np.array_equal(out["values"], np.array([np.nan, 3, 3, 2], np.float32), equal_nan=True)


@FEW
@given(st.sampled_from(NUMERIC).flatmap(small_arrays), st.data())
def test_threshold(x: np.ndarray, data: st.DataObject) -> None:
    # Thresholds at, just above and just below the values themselves, where rounding would show.
    base = data.draw(st.sampled_from([float(v) for v in x.flat]) | st.floats(-1e3, 1e3))
    value = base + data.draw(st.sampled_from([0.0, 1e-9, -1e-9, 0.5]))
    keep = data.draw(st.booleans())
    fill = float(data.draw(st.integers(-2, 2) if x.dtype.kind in "iu" else st.sampled_from([-1.5, 0.0, 7.25])))
    if x.dtype == np.uint8:
        fill = abs(fill)
    out = run(ThresholdParams(value=value, keep=keep, fill=fill), x=x)["out"]
    passes = [float(v) >= value for v in x.flat]
    if keep:
        want = [v if p else fill for v, p in zip(x.flat, passes, strict=True)]
        assert np.array_equal(out, np.array(want, dtype=x.dtype).reshape(x.shape))
    else:
        assert out.tolist() == np.array(passes).reshape(x.shape).tolist()


def test_threshold_exact_comparison_and_nan() -> None:
    x = np.array([0.1, 0.2, np.nan, np.inf], dtype=np.float32)
    # float32(0.1) is 0.100000001490116...: above 0.1 and below 0.1000000015.
    assert run(ThresholdParams(value=0.1), x=x)["out"].tolist() == [True, True, False, True]
    assert run(ThresholdParams(value=0.1000000015), x=x)["out"].tolist() == [False, True, False, True]
    assert run(ThresholdParams(value=1e300), x=x)["out"].tolist() == [False, False, False, True]
    ints = np.array([-128, 0, 3, 127], dtype=np.int8)
    assert run(ThresholdParams(value=2.5, keep=True, fill=-1), x=ints)["out"].tolist() == [-1, -1, 3, 127]
    assert run(ThresholdParams(value=-1e9), x=ints)["out"].tolist() == [True] * 4
    assert run(ThresholdParams(value=1e9), x=ints)["out"].tolist() == [False] * 4


def reference_cast(v: Any, src: np.dtype[Any], dst: np.dtype[Any]) -> Any:
    """One value, by the rules written out."""
    if dst.kind == "b":
        return bool(v != 0)
    if src.kind == "b":
        return int(v)
    if dst.kind == "f":  # the nearest value: a float converts from its exact double, an integer by numpy's scalar cast
        with np.errstate(over="ignore"):
            return dst.type(float(v)) if src.kind == "f" else src.type(v).astype(dst)
    lo, hi = int(np.iinfo(dst).min), int(np.iinfo(dst).max)
    if src.kind == "f":
        f = float(v)
        if math.isnan(f):
            return 0
        if math.isinf(f):
            return hi if f > 0 else lo
        return min(max(round(f), lo), hi)  # Python's round: half to even
    return min(max(int(v), lo), hi)


@FEW
@given(st.sampled_from([*NUMERIC, "bool"]), st.sampled_from([*NUMERIC, "bool"]), st.data())
def test_cast(src: str, dst: str, data: st.DataObject) -> None:
    elements = None if src != "float16" else st.floats(width=16)  # NaN, inf and the whole range
    if src.startswith("int") or src == "uint8":
        info = np.iinfo(src)
        elements = st.integers(int(info.min), int(info.max)) | st.sampled_from([int(info.min), int(info.max), 0])
    elif src in ("float32", "float64"):
        elements = st.floats(width=int(src[-2:])) | st.sampled_from([0.5, 1.5, 2.5, -2.5, 2**31 - 0.5, 2**63, 255.5])
    x = data.draw(arrays(np.dtype(src), shapes, elements=elements))
    out = run(CastParams(dtype=dst), x=x)["out"]
    want = [reference_cast(v, x.dtype, np.dtype(dst)) for v in x.flat]
    assert out.dtype == np.dtype(dst)
    assert np.array_equal(out.ravel(), np.array(want, dtype=dst), equal_nan=out.dtype.kind == "f")


def test_cast_examples() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 2.5, 3.5, -2.5, 3e9, 300.0], dtype=np.float32)
    assert run(CastParams(dtype="int32"), x=x)["out"].tolist() == [0, 2**31 - 1, -(2**31), 2, 4, -2, 2**31 - 1, 300]
    assert run(CastParams(dtype="uint8"), x=x)["out"].tolist() == [0, 255, 0, 2, 4, 0, 255, 255]
    assert run(CastParams(dtype="int8"), x=np.array([200, -200, 5], np.int64))["out"].tolist() == [127, -128, 5]
    assert run(CastParams(dtype="int64"), x=np.array(2.5, np.float16))["out"].tolist() == 2


def nested_slice(value: Any, depth: int, sl: slice) -> Any:
    return value[sl] if depth == 0 else [nested_slice(v, depth - 1, sl) for v in value]


@FEW
@given(st.sampled_from(NUMERIC).flatmap(small_arrays), st.data())
def test_slice(x: np.ndarray, data: st.DataObject) -> None:
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    start = data.draw(st.integers(-6, 6))
    stop = data.draw(st.none() | st.integers(-6, 6))
    step = data.draw(st.integers(1, 3))
    params = SliceParams(axis=axis, start=start, stop=stop, step=step)
    out = make_step(params)({"x": x})["out"]
    assert out.tolist() == nested_slice(x.tolist(), axis % x.ndim, slice(start, stop, step))
    if out.size:
        run(params, x=x)  # the types agree
    else:
        with pytest.raises(StepTypeError, match="selects nothing"):
            infer_types(params, {"x": TensorType(shape=list(x.shape), dtype=str(x.dtype))})


def nested_concat(parts: list[Any], depth: int) -> Any:
    if depth == 0:
        return [v for p in parts for v in p]
    return [nested_concat([p[i] for p in parts], depth - 1) for i in range(len(parts[0]))]


@FEW
@given(st.sampled_from(NUMERIC), array_shapes(min_dims=1, max_dims=3, max_side=3), st.data())
def test_concat(dtype: str, shape: tuple[int, ...], data: st.DataObject) -> None:
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=2, max_size=4))
    parts = [
        data.draw(small_arrays(dtype, (*shape[: axis % len(shape)], n, *shape[axis % len(shape) + 1 :]))) for n in sizes
    ]
    out = run(ConcatParams(axis=axis), **{f"x{i}": p for i, p in enumerate(parts)})["out"]
    assert out.tolist() == nested_concat([p.tolist() for p in parts], axis % len(shape))
    assert out.dtype == np.dtype(dtype)


def test_window_keeps_the_last_frames_and_resets() -> None:
    window = make_step(WindowParams(size=3, hop=2))
    outs, ready = [], []
    for i in range(1, 8):
        result = window({"x": np.array([i, -i], dtype=np.int16)})
        outs.append(result["out"][:, 0].tolist())
        ready.append(bool(result["ready"]))
        assert result["out"].shape == (3, 2) and result["out"].dtype == np.int16
    assert outs == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 7]]
    assert ready == [False, False, True, False, True, False, True]
    held = window({"x": np.array([8, -8], dtype=np.int16)})["out"]
    window.reset()
    after = window({"x": np.array([9, -9], dtype=np.int16)})
    assert after["out"].tolist() == [[0, 0], [0, 0], [9, -9]] and not after["ready"]
    assert held.tolist() == [[6, -6], [7, -7], [8, -8]]  # an output is not overwritten by later frames
    with pytest.raises(StepError, match=r"window: input 'x' is \[3\] int16, but the window holds \[2\] int16 frames"):
        window({"x": np.zeros(3, dtype=np.int16)})
    assert run(WindowParams(size=1), x=np.array(2.5, np.float32))["out"].tolist() == [2.5]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two [ymin, xmin, ymax, xmax] boxes."""
    h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = h * w
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes: np.ndarray, scores: np.ndarray, p: NmsParams) -> list[int]:
    corners = []
    for row in boxes.tolist():
        y1, x1, y2, x2 = row if p.box_format == "yxyx" else (row[1], row[0], row[3], row[2])
        corners.append((min(y1, y2), min(x1, x2), max(y1, y2), max(x1, x2)))
    s = scores.tolist()
    order = sorted((i for i in range(len(s)) if s[i] >= p.score_threshold), key=lambda i: (-s[i], i))
    kept: list[int] = []
    for i in order:
        if len(kept) < p.max_boxes and all(iou(corners[k], corners[i]) <= p.iou_threshold for k in kept):
            kept.append(i)
    return kept


coords = st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 1.0])


@FEW
@given(
    st.integers(0, 10).flatmap(
        lambda n: st.tuples(
            arrays(np.float32, (n, 4), elements=coords),
            arrays(np.float32, (n,), elements=st.sampled_from([-0.5, 0.0, 0.2, 0.5, 0.5, 0.9, np.nan])),
        )
    ),
    st.builds(
        NmsParams,
        iou_threshold=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
        score_threshold=st.sampled_from([0.0, 0.2, -1.0]),
        max_boxes=st.integers(1, 6),
        box_format=st.sampled_from(["yxyx", "xyxy"]),
    ),
    st.booleans(),
)
def test_nms(data: tuple[np.ndarray, np.ndarray], params: NmsParams, batched: bool) -> None:
    boxes, scores = data
    kept = reference_nms(boxes, scores, params)
    out = run(params, boxes=boxes[None] if batched else boxes, scores=scores[None] if batched else scores)
    m, n = params.max_boxes, len(kept)
    assert int(out["count"]) == n
    assert out["indices"].tolist() == kept + [-1] * (m - n)
    assert np.array_equal(out["boxes"], np.vstack([boxes[kept], np.zeros((m - n, 4), np.float32)]))
    assert np.array_equal(out["scores"], np.concatenate([scores[kept], np.zeros(m - n, np.float32)]))


@pytest.mark.parametrize("max_boxes", [40, 1000])
def test_nms_many_overlapping_boxes(max_boxes: int) -> None:
    """More candidates than one round settles (256), crowded so that boxes suppress across rounds."""
    rng = np.random.default_rng(3)
    corner = rng.integers(0, 12, size=(700, 2))
    boxes = np.hstack([corner, corner + rng.integers(1, 4, size=(700, 2))]).astype(np.float32)
    scores = rng.integers(0, 50, size=700).astype(np.float32) / 50  # many ties
    params = NmsParams(iou_threshold=0.3, score_threshold=0.1, max_boxes=max_boxes)
    kept = reference_nms(boxes, scores, params)
    assert 40 <= len(kept) < 600  # the case is what it claims: crowded, and the limit bites at 40
    out = run(params, boxes=boxes, scores=scores)
    assert out["indices"][: len(kept)].tolist() == kept
    assert int(out["count"]) == len(kept)


def test_nms_example() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [1, 1, 10, 10], [0, 20, 10, 30], [10, 10, 0, 0], [50, 50, 60, 60]], dtype=np.float32
    )
    scores = np.array([0.8, 0.9, 0.25, 0.8, 0.2499], dtype=np.float32)
    out = run(NmsParams(iou_threshold=0.5, score_threshold=0.25, max_boxes=4), boxes=boxes, scores=scores)
    # 1 first (0.9); 0 overlaps it by 81/100; 3 is box 0 with its corners swapped; 2 stands alone with a score
    # exactly at the threshold (kept); 4 stands alone just below it (dropped).
    assert out["indices"].tolist() == [1, 2, -1, -1]
    assert out["boxes"].tolist() == [[1, 1, 10, 10], [0, 20, 10, 30], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert out["scores"].tolist() == [np.float32(0.9), 0.25, 0, 0]
    assert int(out["count"]) == 2


def reference_crop(image: np.ndarray, boxes: np.ndarray, p: CropResizeParams, count: int | None) -> np.ndarray:
    """Per pixel, per channel, with explicit bilinear weights."""
    height, width, channels = image.shape
    h, w = p.size
    n = min(len(boxes), p.max_crops, len(boxes) if count is None else max(count, 0))
    out = np.zeros((p.max_crops, h, w, channels))
    for b in range(n):
        row = [float(v) for v in boxes[b]]
        y1, x1, y2, x2 = row if p.box_format == "yxyx" else (row[1], row[0], row[3], row[2])
        if p.normalized:
            y1, y2, x1, x2 = y1 * (height - 1), y2 * (height - 1), x1 * (width - 1), x2 * (width - 1)
        for i in range(h):
            y = y1 + i * (y2 - y1) / (h - 1) if h > 1 else (y1 + y2) / 2
            for j in range(w):
                x = x1 + j * (x2 - x1) / (w - 1) if w > 1 else (x1 + x2) / 2
                if not (0 <= y <= height - 1 and 0 <= x <= width - 1):
                    continue
                for c in range(channels):
                    if p.method == "nearest":
                        out[b, i, j, c] = image[math.floor(y + 0.5), math.floor(x + 0.5), c]
                        continue
                    top, bottom, left, right = math.floor(y), math.ceil(y), math.floor(x), math.ceil(x)
                    dy, dx = y - top, x - left
                    v = [[float(image[r, q, c]) for q in (left, right)] for r in (top, bottom)]
                    upper = v[0][0] * (1 - dx) + v[0][1] * dx
                    lower = v[1][0] * (1 - dx) + v[1][1] * dx
                    out[b, i, j, c] = upper * (1 - dy) + lower * dy
    return out


box_coords = st.sampled_from([-0.25, 0.0, 0.1, 1 / 3, 0.5, 0.8, 1.0, 1.25])


@FEW
@given(
    image=st.sampled_from(["uint8", "float32"]).flatmap(
        lambda d: arrays(
            np.dtype(d),
            st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 2)),
            elements=st.integers(0, 255) if d == "uint8" else st.floats(-10, 10, width=32),
        )
    ),
    boxes=arrays(np.float32, st.tuples(st.integers(1, 4), st.just(4)), elements=box_coords),
    params=st.builds(
        CropResizeParams,
        size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
        max_crops=st.integers(1, 3),
        method=st.sampled_from(["bilinear", "nearest"]),
        box_format=st.sampled_from(["yxyx", "xyxy"]),
        normalized=st.booleans(),
    ),
    count=st.none() | st.integers(-1, 5),
    batched=st.booleans(),
)
def test_crop_resize(
    image: np.ndarray, boxes: np.ndarray, params: CropResizeParams, count: int | None, batched: bool
) -> None:
    if not params.normalized:
        boxes = boxes * 4  # pixel coordinates, some outside the image
    inputs = {"image": image[None] if batched else image, "boxes": boxes[None] if batched else boxes}
    if count is not None:
        inputs["count"] = np.array([count] if batched else count, dtype=np.int32)
    out = run(params, **inputs)
    want = reference_crop(image, boxes, params, count)
    assert int(out["count"]) == min(len(boxes), params.max_crops, len(boxes) if count is None else max(count, 0))
    np.testing.assert_allclose(out["crops"], want, rtol=0, atol=4e-6 * (1 + float(np.abs(image).max())))


def test_crop_resize_example() -> None:
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    params = CropResizeParams(size=(2, 3), max_crops=2)
    out = run(params, image=image, boxes=np.array([[0, 0, 1, 1]], np.float32), count=np.array([5]))
    assert out["crops"][..., 0].tolist() == [[[0, 1.5, 3], [12, 13.5, 15]], [[0, 0, 0], [0, 0, 0]]]
    assert int(out["count"]) == 1
    # Half outside: samples at rows 1.5 and 4.5, columns 1.5, 3 and 4.5; those beyond 3 are zeros.
    outside = run(params, image=image, boxes=np.array([[0.5, 0.5, 1.5, 1.5]], np.float32))["crops"][0, ..., 0]
    assert outside.tolist() == [[7.5, 9, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    ("params", "inputs", "message"),
    [
        (ArgmaxParams(), {"x": np.float32(1)}, "argmax: input 'x' must have rank >= 1, got a scalar (shape [])"),
        (ArgmaxParams(), {"x": np.zeros((2, 0))}, "argmax: input 'x' has no values along axis -1 (shape [2, 0])"),
        (ArgmaxParams(axis=3), {"x": np.zeros((2, 3))}, "argmax: axis 3 is out of range for input 'x' of rank 2"),
        (TopKParams(k=4), {"x": np.zeros(3)}, "topk: k=4 is more than the 3 values along axis -1 of input 'x'"),
        (ThresholdParams(value=0), {}, "threshold: input 'x' is missing"),
        (ThresholdParams(value=0), {"x": np.zeros(2, bool)}, "threshold: input 'x' must be numeric, got bool"),
        (
            ThresholdParams(value=0, keep=True, fill=0.5),
            {"x": np.zeros(2, np.int32)},
            "threshold: fill=0.5 cannot be represented in input 'x' of dtype int32",
        ),
        (
            NmsParams(iou_threshold=0.5, max_boxes=2),
            {"boxes": np.zeros((1, 10, 5)), "scores": np.zeros(10)},
            "nms: input 'boxes' must have shape [N, 4] or [1, N, 4], got [1, 10, 5]",
        ),
        (
            NmsParams(iou_threshold=0.5, max_boxes=2),
            {"boxes": np.zeros((10, 4)), "scores": np.zeros(9)},
            "nms: inputs 'boxes' and 'scores' disagree on N: 10 boxes, 9 scores",
        ),
        (
            CropResizeParams(size=(2, 2), max_crops=1),
            {"image": np.zeros((2, 4, 4, 1)), "boxes": np.zeros((1, 4))},
            "crop_resize: input 'image' must have shape [H, W, C] or [1, H, W, C], got [2, 4, 4, 1]",
        ),
        (
            CropResizeParams(size=(2, 2), max_crops=1),
            {"image": np.zeros((4, 4, 1)), "boxes": np.zeros((1, 4)), "count": np.array(1.0)},
            "crop_resize: input 'count' must be an integer scalar (shape [] or [1]), got float64 []",
        ),
        (ConcatParams(axis=0), {"x0": np.zeros(2)}, "concat: input 'x1' is missing"),
        (
            ConcatParams(axis=0),
            {"x0": np.zeros(2), "x1": np.zeros(2, np.int64)},
            "concat: input 'x1' has dtype int64 but 'x0' has float64",
        ),
        (
            ConcatParams(axis=1),
            {"x0": np.zeros((2, 2)), "x1": np.zeros((3, 2))},
            "concat: input 'x1' has shape [3, 2], which does not fit 'x0' [2, 2] (only axis 1 may differ)",
        ),
        (SliceParams(axis=-2, start=0), {"x": np.zeros(3)}, "slice: axis -2 is out of range for input 'x' of rank 1"),
    ],
)
def test_bad_inputs_raise_step_error(params: StepParams, inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(StepError) as info:
        make_step(params)(inputs)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError) and isinstance(info.value, InputError)


def test_steps_do_not_modify_their_inputs() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 5)).astype(np.float32)
    before = x.copy()
    steps: list[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = [
        make_step(p)
        for p in (
            ArgmaxParams(),
            TopKParams(k=2, axis=0),
            ThresholdParams(value=0, keep=True),
            CastParams(dtype="int8"),
            SliceParams(axis=1, start=1),
        )
    ]
    for step in steps:
        step({"x": x})
    make_step(CropResizeParams(size=(2, 2), max_crops=1))({"image": x[:, :, None], "boxes": np.ones((1, 4))})
    assert np.array_equal(x, before)
