"""Built-in step parameters: strict validation, JSON round trip by op, input names, static type inference."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from protocol.pipeline_steps import (
    STEP_OPS,
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
    accepts_input,
    infer_types,
    parse_step_params,
    step_inputs,
    step_outputs,
)

# One instance of every op, every parameter away from its default where it has one.
EXAMPLES: list[StepParams] = [
    ArgmaxParams(axis=0, keepdims=True),
    TopKParams(k=3, axis=1),
    ThresholdParams(value=0.25, keep=True, fill=-1.5),
    NmsParams(iou_threshold=0.45, score_threshold=0.2, max_boxes=10, box_format="xyxy"),
    CropResizeParams(size=(28, 32), max_crops=4, method="nearest", box_format="xyxy", normalized=False),
    WindowParams(size=16, hop=4),
    ConcatParams(axis=-1),
    SliceParams(axis=1, start=-5, stop=-1, step=2),
    CastParams(dtype="uint8"),
]


def t(shape: list[int | None], dtype: str = "float32") -> TensorType:
    return TensorType.model_validate({"shape": shape, "dtype": dtype})


def test_every_op_has_an_example() -> None:
    assert [p.op for p in EXAMPLES] == list(STEP_OPS)
    assert len(set(STEP_OPS)) == 9


@pytest.mark.parametrize("params", EXAMPLES, ids=lambda p: p.op)
def test_json_round_trip_by_op(params: StepParams) -> None:
    text = params.to_json()
    assert json.loads(text)["op"] == params.op
    again = parse_step_params(text)
    assert type(again) is type(params)
    assert again == params
    assert again.to_json() == text
    assert parse_step_params(json.loads(text)) == params  # from a mapping, as TOML gives it


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"op": "topk", "k": 0}, "k"),
        ({"op": "topk", "k": 2, "axis": 64}, "axis"),
        ({"op": "argmax", "axis": 0, "keepdim": True}, "keepdim"),
        ({"op": "threshold", "value": "inf"}, "value"),
        ({"op": "threshold", "value": 1.0, "fill": "nan"}, "fill"),
        ({"op": "nms", "iou_threshold": 1.5, "max_boxes": 10}, "iou_threshold"),
        ({"op": "nms", "iou_threshold": -0.1, "max_boxes": 10}, "iou_threshold"),
        ({"op": "nms", "iou_threshold": 0.5, "max_boxes": 0}, "max_boxes"),
        ({"op": "nms", "iou_threshold": 0.5, "max_boxes": 5, "box_format": "xywh"}, "box_format"),
        ({"op": "crop_resize", "size": [28, 28], "max_crops": 0}, "max_crops"),
        ({"op": "crop_resize", "size": [28, 28], "max_crops": 257}, "max_crops"),
        ({"op": "crop_resize", "size": [0, 28], "max_crops": 1}, "size"),
        ({"op": "crop_resize", "size": [28], "max_crops": 1}, "size"),
        ({"op": "crop_resize", "size": [28, 28], "max_crops": 1, "method": "bicubic"}, "method"),
        ({"op": "window", "size": 0}, "size"),
        ({"op": "window", "size": 4, "hop": 0}, "hop"),
        ({"op": "concat"}, "axis"),
        ({"op": "slice", "axis": 0, "step": 0}, "step"),
        ({"op": "slice", "axis": 0, "step": -1}, "step"),
        ({"op": "cast", "dtype": "complex64"}, "dtype"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_step_params(data)
    locs = [e["loc"] for e in info.value.errors()]
    assert any(loc[:2] == (data["op"], field) for loc in locs), locs


def test_unknown_op_and_crop_memory_bound() -> None:
    with pytest.raises(ValidationError) as info:
        parse_step_params({"op": "softmax"})
    assert info.value.errors()[0]["type"] == "union_tag_invalid"
    with pytest.raises(ValidationError, match=r"max_crops \* size\[0\] \* size\[1\] must be at most 4194304"):
        CropResizeParams(size=(256, 256), max_crops=256)
    assert CropResizeParams(size=(128, 128), max_crops=256).max_crops == 256  # exactly at the bound


def test_input_and_output_names() -> None:
    assert step_inputs(NmsParams(iou_threshold=0.5, max_boxes=3)) == (("boxes", "scores"), ())
    crop = CropResizeParams(size=(8, 8), max_crops=2)
    assert step_inputs(crop) == (("image", "boxes"), ("count",))
    assert accepts_input(crop, "count") and not accepts_input(crop, "x")
    assert step_outputs(crop) == ("crops", "count")
    assert step_outputs(TopKParams(k=1)) == ("values", "indices")
    assert step_outputs(WindowParams(size=2)) == ("out", "ready")


def test_concat_names_come_from_the_wiring() -> None:
    concat = ConcatParams(axis=0)
    assert step_inputs(concat) == (("x0", "x1"), ())
    assert step_inputs(concat, ["x1", "x0", "x2"]) == (("x0", "x1", "x2"), ())
    assert step_inputs(concat, ["x0", "x3"]) == (("x0", "x1", "x2", "x3"), ())  # the gap shows as missing
    assert step_inputs(concat, ["x0", "y", "x07"]) == (("x0", "x1"), ())  # the others are unknown
    assert [accepts_input(concat, n) for n in ("x0", "x63", "x64", "x01", "x", "y0")] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_infer_good_types_for_every_op() -> None:
    f32 = "float32"
    assert infer_types(ArgmaxParams(), {"x": t([None, 10])}) == {"out": t([None], "int64")}
    assert infer_types(ArgmaxParams(axis=0, keepdims=True), {"x": t([3, 10])}) == {"out": t([1, 10], "int64")}
    assert infer_types(TopKParams(k=3), {"x": t([1, 10], "uint8")}) == {
        "values": t([1, 3], "uint8"),
        "indices": t([1, 3], "int64"),
    }
    assert infer_types(TopKParams(k=3, axis=0), {"x": t([None, 2])})["values"] == t([3, 2])
    assert infer_types(ThresholdParams(value=0.5), {"x": t([2, None])}) == {"out": t([2, None], "bool")}
    assert infer_types(ThresholdParams(value=0.5, keep=True, fill=-1), {"x": t([4], "int8")}) == {"out": t([4], "int8")}
    nms = infer_types(
        NmsParams(iou_threshold=0.5, max_boxes=7), {"boxes": t([1, None, 4]), "scores": t([None], "float16")}
    )
    assert nms == {"boxes": t([7, 4]), "scores": t([7]), "indices": t([7], "int64"), "count": t([], "int32")}
    crop = CropResizeParams(size=(28, 14), max_crops=3)
    got = infer_types(crop, {"image": t([1, 64, 64, 3], "uint8"), "boxes": t([7, 4]), "count": t([], "int32")})
    assert got == {"crops": t([3, 28, 14, 3], f32), "count": t([], "int32")}
    assert infer_types(crop, {"image": t([None, None, None]), "boxes": t([1, 5, 4])})["crops"] == t([3, 28, 14, None])
    assert infer_types(WindowParams(size=8), {"x": t([1, None], "int16")}) == {
        "out": t([8, 1, None], "int16"),
        "ready": t([], "bool"),
    }
    parts = {"x0": t([2, 3]), "x1": t([2, 5]), "x2": t([None, 1])}
    assert infer_types(ConcatParams(axis=1), parts) == {"out": t([2, 9])}
    assert infer_types(ConcatParams(axis=0), {"x0": t([2, None]), "x1": t([None, 4])}) == {"out": t([None, 4])}
    assert infer_types(SliceParams(axis=-1, start=1, stop=None, step=2), {"x": t([3, 6])}) == {"out": t([3, 3])}
    assert infer_types(SliceParams(axis=0, start=-2), {"x": t([5, 2])}) == {"out": t([2, 2])}
    assert infer_types(SliceParams(axis=0, start=0, stop=100), {"x": t([None])}) == {"out": t([None])}
    assert infer_types(CastParams(dtype="int8"), {"x": t([None, 3])}) == {"out": t([None, 3], "int8")}


@pytest.mark.parametrize(
    ("params", "inputs", "message"),
    [
        (ArgmaxParams(), {"x": t([])}, "argmax: input 'x' must have rank >= 1, got a scalar (shape [])"),
        (ArgmaxParams(axis=2), {"x": t([3, 4])}, "argmax: axis 2 is out of range for input 'x' of rank 2"),
        (ArgmaxParams(), {"y": t([3])}, "argmax: no input 'y'; it takes x"),
        (ArgmaxParams(), {}, "argmax: input 'x' is missing"),
        (
            TopKParams(k=5),
            {"x": t([2, 3])},
            "topk: k=5 is more than the 3 values along axis -1 of input 'x' (shape [2, 3])",
        ),
        (TopKParams(k=1, axis=-3), {"x": t([2, 3])}, "topk: axis -3 is out of range for input 'x' of rank 2"),
        (ThresholdParams(value=0.5), {"x": t([3], "bool")}, "threshold: input 'x' must be numeric, got bool"),
        (
            ThresholdParams(value=0.5, keep=True, fill=0.5),
            {"x": t([3], "int8")},
            "threshold: fill=0.5 cannot be represented in input 'x' of dtype int8",
        ),
        (
            ThresholdParams(value=0.5, keep=True, fill=300),
            {"x": t([3], "uint8")},
            "threshold: fill=300.0 cannot be represented in input 'x' of dtype uint8",
        ),
        (
            ThresholdParams(value=0.5, keep=True, fill=1e5),
            {"x": t([3], "float16")},
            "threshold: fill=100000.0 cannot be represented in input 'x' of dtype float16",
        ),
        (
            NmsParams(iou_threshold=0.5, max_boxes=3),
            {"boxes": t([1, 10, 5]), "scores": t([10])},
            "nms: input 'boxes' must have shape [N, 4] or [1, N, 4], got [1, 10, 5]",
        ),
        (
            NmsParams(iou_threshold=0.5, max_boxes=3),
            {"boxes": t([2, 10, 4]), "scores": t([10])},
            "nms: input 'boxes' must have shape [N, 4] or [1, N, 4], got [2, 10, 4]",
        ),
        (
            NmsParams(iou_threshold=0.5, max_boxes=3),
            {"boxes": t([10, 4]), "scores": t([10, 1])},
            "nms: input 'scores' must have shape [N] or [1, N], got [10, 1]",
        ),
        (
            NmsParams(iou_threshold=0.5, max_boxes=3),
            {"boxes": t([10, 4]), "scores": t([1, 12])},
            "nms: inputs 'boxes' and 'scores' disagree on N: 10 boxes, 12 scores",
        ),
        (
            NmsParams(iou_threshold=0.5, max_boxes=3),
            {"boxes": t([10, 4], "bool"), "scores": t([10])},
            "nms: input 'boxes' must be numeric, got bool",
        ),
        (
            CropResizeParams(size=(4, 4), max_crops=2),
            {"image": t([64, 64]), "boxes": t([3, 4])},
            "crop_resize: input 'image' must have shape [H, W, C] or [1, H, W, C], got [64, 64]",
        ),
        (
            CropResizeParams(size=(4, 4), max_crops=2),
            {"image": t([1, 8, 8, 3]), "boxes": t([3, 2])},
            "crop_resize: input 'boxes' must have shape [K, 4] or [1, K, 4], got [3, 2]",
        ),
        (
            CropResizeParams(size=(4, 4), max_crops=2),
            {"image": t([1, 8, 8, 3]), "boxes": t([3, 4]), "count": t([1], "float32")},
            "crop_resize: input 'count' must be an integer scalar (shape [] or [1]), got float32 [1]",
        ),
        (
            CropResizeParams(size=(4, 4), max_crops=2),
            {"image": t([1, 8, 8, 3]), "boxes": t([3, 4]), "count": t([2], "int32")},
            "crop_resize: input 'count' must be an integer scalar (shape [] or [1]), got int32 [2]",
        ),
        (
            CropResizeParams(size=(4, 4), max_crops=2),
            {"image": t([1, 8, 8, 3]), "box": t([3, 4])},
            "crop_resize: no input 'box'; it takes image, boxes, count",
        ),
        (WindowParams(size=3), {"x": t([2]), "y": t([2])}, "window: no input 'y'; it takes x"),
        (ConcatParams(axis=0), {"x0": t([2])}, "concat: input 'x1' is missing"),
        (ConcatParams(axis=0), {"x0": t([2]), "x2": t([2])}, "concat: input 'x1' is missing"),
        (ConcatParams(axis=0), {"x0": t([2]), "x1": t([2]), "z": t([2])}, "concat: no input 'z'; it takes x0, x1"),
        (ConcatParams(axis=0), {"x0": t([]), "x1": t([])}, "concat: input 'x0' must have rank >= 1"),
        (ConcatParams(axis=1), {"x0": t([2]), "x1": t([2])}, "concat: axis 1 is out of range for input 'x0' of rank 1"),
        (
            ConcatParams(axis=0),
            {"x0": t([2]), "x1": t([2], "int64")},
            "concat: input 'x1' has dtype int64 but 'x0' has float32; all inputs must share one dtype",
        ),
        (ConcatParams(axis=0), {"x0": t([2]), "x1": t([2, 1])}, "concat: input 'x1' has rank 2 but 'x0' has rank 1"),
        (
            ConcatParams(axis=0),
            {"x0": t([2, 4]), "x1": t([2, 5])},
            "concat: input 'x1' has shape [2, 5], which differs from 'x0' [2, 4] in dim 1 (only axis 0 may differ)",
        ),
        (
            SliceParams(axis=0, start=5),
            {"x": t([3])},
            "slice: [5::1] selects nothing from axis 0 of input 'x' (shape [3])",
        ),
        (
            SliceParams(axis=0, start=-1, stop=-3),
            {"x": t([None])},
            "slice: [-1:-3:1] selects nothing from axis 0 of input 'x' (shape [?])",
        ),
        (SliceParams(axis=1, start=0), {"x": t([3])}, "slice: axis 1 is out of range for input 'x' of rank 1"),
    ],
)
def test_infer_refuses_with_one_readable_line(params: StepParams, inputs: dict[str, TensorType], message: str) -> None:
    with pytest.raises(StepTypeError) as info:
        infer_types(params, inputs)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_dynamic_dims_never_mismatch() -> None:
    """A None on either side is no mismatch; the known side wins in the output."""
    nms = NmsParams(iou_threshold=0.5, max_boxes=2)
    assert infer_types(nms, {"boxes": t([None, None, None]), "scores": t([None, 5])})["count"] == t([], "int32")
    assert infer_types(TopKParams(k=99), {"x": t([None])})["indices"] == t([99], "int64")
    got = infer_types(ConcatParams(axis=0), {"x0": t([1, None, 3]), "x1": t([2, 4, None])})
    assert got == {"out": t([3, 4, 3])}
