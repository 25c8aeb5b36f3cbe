"""How a candidate's answer to one request compares with the serving version's, row by row.

A row is one sample of the request's batch. A classifier's row agrees when the top-1 class is the same (the
first output, as the self-test and the telemetry recorder read it); a regressor's row agrees when every output
value of the row is within the candidate's golden tolerance, `|candidate - serving| <= atol + rtol * |serving|`
(numpy's `isclose`, NaN equal to NaN, an infinity to the same infinity). Error statistics are over every numeric
output element whose two values are both finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agent.errors import OutputMismatch
from protocol.shadow import SUM_MAX

Kind = Literal["classifier", "regressor"]
FLOAT_MAX = SUM_MAX  # sums are capped here: a summary's numbers must stay finite to be JSON


@dataclass(frozen=True)
class Comparison:
    """One request's rows compared: how many, how many agreed, and the error sums over their output elements."""

    rows: int
    agreed: int
    abs_error_sum: float = 0.0
    sq_error_sum: float = 0.0
    max_abs_error: float = 0.0
    elements: int = 0


Pair = tuple[str, np.ndarray, np.ndarray]


def paired(candidate: Mapping[str, np.ndarray], serving: Mapping[str, np.ndarray]) -> list[Pair]:
    """(serving name, candidate array, serving array) per output: by name when both name the same outputs, else by
    position when they have as many; OutputMismatch otherwise."""
    if candidate.keys() == serving.keys():
        return [(name, np.asarray(candidate[name]), np.asarray(value)) for name, value in serving.items()]
    if len(candidate) == len(serving):
        return [(name, np.asarray(c), np.asarray(s)) for (name, s), c in zip(serving.items(), candidate.values(),
                                                                             strict=True)]  # fmt: skip
    raise OutputMismatch(f"candidate outputs {sorted(candidate)} do not match serving outputs {sorted(serving)}")


def rows_of(first: np.ndarray, batch_first: bool = True) -> int:
    """Rows of a request from its first output: the batch of a batch-first output, else one."""
    return int(first.shape[0]) if batch_first and first.ndim >= 1 else 1


def compare(
    kind: Kind,
    pairs: Sequence[Pair],
    *,
    rows: int,
    atol: float,
    rtol: float,
) -> Comparison:
    """Compare one request's outputs (`paired`), `rows` samples of it. An output whose first dim is `rows` is
    compared row by row; any other (a whole tensor) decides every row alike."""
    if not pairs:
        raise OutputMismatch("no outputs to compare")
    for name, c, s in pairs:
        if c.shape != s.shape:
            raise OutputMismatch(f"output {name!r}: candidate shape {list(c.shape)}, serving {list(s.shape)}")
    flat = [(_per_row(c, rows), _per_row(s, rows)) for _, c, s in pairs]
    if kind == "classifier":
        agree = _same_top1(*flat[0], rows)
    else:
        agree = np.ones(rows, np.bool_)
        for c, s in flat:
            agree &= _within(c, s, atol, rtol)
    abs_sum = sq_sum = worst = 0.0
    elements = 0
    for c, s in flat:
        if not (_numeric(c) and _numeric(s)):
            continue
        a, b = c.astype(np.float64), s.astype(np.float64)
        both = np.isfinite(a) & np.isfinite(b)
        diff = np.abs(a[both] - b[both])
        if diff.size:
            with np.errstate(over="ignore"):
                abs_sum += float(diff.sum())
                sq_sum += float(np.square(diff).sum())
            worst = max(worst, float(diff.max()))
            elements += int(diff.size)
    return Comparison(
        rows=rows,
        agreed=int(np.count_nonzero(agree)),
        abs_error_sum=min(abs_sum, FLOAT_MAX),
        sq_error_sum=min(sq_sum, FLOAT_MAX),
        max_abs_error=min(worst, FLOAT_MAX),
        elements=elements,
    )


def _per_row(x: np.ndarray, rows: int) -> np.ndarray:
    """`x` as (rows, values per row), or (1, values) for a whole tensor that decides every row."""
    if x.ndim >= 1 and x.shape[0] == rows:
        return x.reshape(rows, -1)
    return x.reshape(1, -1)


def _numeric(x: np.ndarray) -> bool:
    return x.dtype.kind in "biuf"


def _same_top1(c: np.ndarray, s: np.ndarray, rows: int) -> np.ndarray:
    """Per row: the same top-1 class. A row of one value is a label (integers: equal) or a binary classifier's
    probability of the positive class (floats: on the same side of 0.5); several values: the same argmax."""
    if c.shape[1] == 1:
        if c.dtype.kind == "f" or s.dtype.kind == "f":
            same: np.ndarray = (c[:, 0] > 0.5) == (s[:, 0] > 0.5)
        else:
            same = c[:, 0] == s[:, 0]
    elif c.shape[1] == 0:
        same = np.ones(len(c), np.bool_)
    else:
        same = np.argmax(c, axis=1) == np.argmax(s, axis=1)
    return np.broadcast_to(same, (rows,)) if len(same) != rows else same


def _within(c: np.ndarray, s: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Per row: every value within `atol + rtol * |serving|` (numbers), or equal (anything else)."""
    if c.shape[1] == 0:
        return np.ones(len(c), np.bool_)
    close: np.ndarray
    if _numeric(c) and _numeric(s):
        close = np.asarray(np.isclose(c.astype(np.float64), s.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True))
    else:
        close = np.asarray(np.equal(c, s), np.bool_)
    return np.asarray(close.all(axis=1), np.bool_)
