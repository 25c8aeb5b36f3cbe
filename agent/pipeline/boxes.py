"""The box steps: non-maximum suppression and crop-and-resize, as NmsParams and CropResizeParams specify."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.pipeline.arrays import Array, StepError, numeric, take, unbatched
from protocol.pipeline_steps import CropResizeParams, NmsParams, fmt_shape

# Columns that put a box in [y1, x1, y2, x2] order.
_TO_YXYX = {"yxyx": [0, 1, 2, 3], "xyxy": [1, 0, 3, 2]}
_CHUNK = 256  # NMS candidates settled per round: a [256, 256] IoU matrix is 0.5 MB


class Nms:
    """The `nms` step (NmsParams)."""

    def __init__(self, params: NmsParams) -> None:
        self.params = params
        self._columns = _TO_YXYX[params.box_format]

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        boxes = unbatched("nms", "boxes", numeric("nms", "boxes", take("nms", inputs, "boxes")), ("N", "4"))
        scores = unbatched("nms", "scores", numeric("nms", "scores", take("nms", inputs, "scores")), ("N",))
        if len(boxes) != len(scores):
            raise StepError(f"nms: inputs 'boxes' and 'scores' disagree on N: {len(boxes)} boxes, {len(scores)} scores")
        keep = self._keep(boxes, scores.astype(np.float64))
        m, count = self.params.max_boxes, len(keep)
        out_boxes = np.zeros((m, 4), dtype=np.float32)
        out_scores = np.zeros(m, dtype=np.float32)
        out_indices = np.full(m, -1, dtype=np.int64)
        out_boxes[:count] = boxes[keep]
        out_scores[:count] = scores[keep]
        out_indices[:count] = keep
        return {"boxes": out_boxes, "scores": out_scores, "indices": out_indices, "count": np.asarray(count, np.int32)}

    def _keep(self, boxes: Array, scores: Array) -> Array:
        """Indices of the kept boxes, in kept order.

        Candidates go in chunks in visit order: one matrix drops those a box kept earlier suppresses, another
        settles the chunk among itself in a loop that does one vector operation per kept box."""
        candidates = np.flatnonzero(scores >= self.params.score_threshold)  # NaN fails the comparison
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        b = boxes[order].astype(np.float64)[:, self._columns]
        corners = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], axis=1)
        limit, threshold = self.params.max_boxes, self.params.iou_threshold
        kept: list[int] = []  # positions in `order`
        for start in range(0, len(order), _CHUNK):
            chunk = corners[start : start + _CHUNK]
            alive = np.arange(len(chunk))
            if kept:
                alive = alive[~(_iou(corners[kept], chunk) > threshold).any(axis=0)]
            overlaps = _iou(chunk[alive], chunk[alive]) > threshold
            suppressed = np.zeros(len(alive), dtype=bool)
            for j, position in enumerate(alive.tolist()):
                if suppressed[j]:
                    continue
                kept.append(start + position)
                if len(kept) == limit:
                    return order[kept]
                suppressed |= overlaps[j]
        return order[kept]

    def reset(self) -> None:
        """Stateless."""


class CropResize:
    """The `crop_resize` step (CropResizeParams)."""

    def __init__(self, params: CropResizeParams) -> None:
        self.params = params
        self._columns = _TO_YXYX[params.box_format]
        h, w = params.size
        self._rows, self._cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        p = self.params
        op = "crop_resize"
        image = unbatched(op, "image", numeric(op, "image", take(op, inputs, "image")), ("H", "W", "C"))
        boxes = unbatched(op, "boxes", numeric(op, "boxes", take(op, inputs, "boxes")), ("K", "4"))
        n = min(len(boxes), p.max_crops)
        if "count" in inputs:
            n = min(n, max(_count(np.asarray(inputs["count"])), 0))
        height, width, channels = image.shape
        crops = np.zeros((p.max_crops, *p.size, channels), dtype=np.float32)
        if n and height and width:
            b = boxes[:n].astype(np.float64)[:, self._columns]
            if p.normalized:
                b *= np.array([height - 1, width - 1, height - 1, width - 1], dtype=np.float64)
            ys, y_in = _samples(b[:, 0], b[:, 2], self._rows, height)
            xs, x_in = _samples(b[:, 1], b[:, 3], self._cols, width)
            if p.method == "nearest":
                rows, cols = np.floor(ys + 0.5).astype(np.intp), np.floor(xs + 0.5).astype(np.intp)
                pixels = image.reshape(height * width, channels)
                crops[:n] = np.take(pixels, (rows * width)[:, :, None] + cols[:, None, :], axis=0)
            else:
                _bilinear(image, ys, xs, crops[:n])
            if not y_in.all():
                crops[:n][~y_in] = 0.0
            if not x_in.all():
                crops[:n].transpose(0, 2, 1, 3)[~x_in] = 0.0
        return {"crops": crops, "count": np.asarray(n, dtype=np.int32)}

    def reset(self) -> None:
        """Stateless."""


def _iou(earlier: Array, later: Array) -> Array:
    """[P, Q] IoU of [P, 4] and [Q, 4] boxes (ymin, xmin, ymax, xmax): inter / (area + area - inter), 0 for no union."""
    height = np.minimum(earlier[:, None, 2], later[None, :, 2]) - np.maximum(earlier[:, None, 0], later[None, :, 0])
    width = np.minimum(earlier[:, None, 3], later[None, :, 3]) - np.maximum(earlier[:, None, 1], later[None, :, 1])
    inter = np.maximum(height, 0.0) * np.maximum(width, 0.0)
    area_earlier = (earlier[:, 2] - earlier[:, 0]) * (earlier[:, 3] - earlier[:, 1])
    area_later = (later[:, 2] - later[:, 0]) * (later[:, 3] - later[:, 1])
    union = area_earlier[:, None] + area_later[None, :] - inter
    iou: Array = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


def _samples(start: Array, stop: Array, steps: Array, size: int) -> tuple[Array, Array]:
    """Sample coordinates [n, len(steps)] from `start` to `stop` per box, clamped into [0, size - 1], and which
    of them were inside it to begin with."""
    if len(steps) > 1:
        coords = start[:, None] + steps[None, :] * (stop - start)[:, None] / (len(steps) - 1)
    else:
        coords = ((start + stop) / 2)[:, None]
    inside = (coords >= 0) & (coords <= size - 1)  # NaN is outside
    return np.where(inside, coords, 0.0), inside


def _bilinear(image: Array, ys: Array, xs: Array, out: Array) -> None:
    """Bilinear samples of `image` [H, W, C] at rows `ys` [n, h] and columns `xs` [n, w] (all inside) into `out`.

    In float32, in place, on [n, h, w * C] views with the column weights repeated per channel: the arithmetic
    then runs along contiguous rows (broadcast over a last axis of C, it took twice as long)."""
    (n, h), (_, w), (height, width, channels) = ys.shape, xs.shape, image.shape
    if image.dtype != np.float32 and image.size <= 4 * out.size:
        image = image.astype(np.float32)  # converting the image once costs less than converting four gathers
    pixels = image.reshape(height * width, channels)
    top, left = np.floor(ys), np.floor(xs)
    y_frac = (ys - top).astype(np.float32)[:, :, None]
    x_frac = np.repeat((xs - left).astype(np.float32), channels, axis=1)[:, None, :]
    top_row, bottom_row = top.astype(np.intp)[:, :, None] * width, np.ceil(ys).astype(np.intp)[:, :, None] * width
    left_col, right_col = left.astype(np.intp)[:, None, :], np.ceil(xs).astype(np.intp)[:, None, :]

    def gather(rows: Array, cols: Array) -> Array:
        return np.take(pixels, rows + cols, axis=0).reshape(n, h, w * channels)

    upper = gather(top_row, left_col).astype(np.float32, copy=False)
    scratch = np.subtract(gather(top_row, right_col), upper, dtype=np.float32)
    scratch *= x_frac
    upper += scratch  # upper left + (upper right - upper left) * x_frac
    lower = gather(bottom_row, left_col).astype(np.float32, copy=False)
    np.subtract(gather(bottom_row, right_col), lower, out=scratch, dtype=np.float32)
    scratch *= x_frac
    lower += scratch
    lower -= upper
    lower *= y_frac
    np.add(upper, lower, out=out.reshape(n, h, w * channels))  # upper + (lower - upper) * y_frac


def _count(count: Array) -> int:
    if count.shape not in ((), (1,)) or count.dtype.kind not in "iu":
        raise StepError(
            f"crop_resize: input 'count' must be an integer scalar (shape [] or [1]), "
            f"got {count.dtype} {fmt_shape(count.shape)}"
        )
    return int(count.reshape(()))
