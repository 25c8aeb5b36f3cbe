"""End-to-end golden cases of a pipeline: made where a version is pushed (on each profile's artifacts), checked by
the device's self-test before the stage set serves.

Every output must match within the tolerance, except classifier outputs (`expected_top1`), where the share of
cases whose arg max matches must reach `min_top1_agreement`: a small numeric drift in a stage may move a
probability, and what the pipeline promises of a classifier is its answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from agent.errors import AgentError, SelfTestFailed
from agent.pipeline.runner import PipelineRunner
from protocol.pipeline import PipelineCase, PipelineGolden


def make_golden(
    runner: PipelineRunner,
    samples: Iterable[Mapping[str, np.ndarray]],
    *,
    atol: float,
    rtol: float = 0.0,
    classifier_outputs: Iterable[str] = (),
    min_top1_agreement: float = 1.0,
) -> PipelineGolden:
    """Run each sample through the pipeline and record what it produced."""
    top1 = tuple(classifier_outputs)
    cases = []
    for sample in samples:
        runner.reset()
        result = runner.run(sample)
        outputs = result.outputs
        feeds = {k: np.asarray(v) for k, v in sample.items()}
        cases.append(
            PipelineCase(
                inputs={k: v.astype(np.float64).ravel().tolist() for k, v in feeds.items()},
                expected={k: v.astype(np.float64).ravel().tolist() for k, v in outputs.items()},
                shapes={
                    **{k: list(v.shape) for k, v in feeds.items()},
                    **{k: list(v.shape) for k, v in outputs.items()},
                },
                expected_top1={k: row_top1(outputs[k]) for k in top1 if outputs[k].size},
            )
        )
    return PipelineGolden(cases=cases, atol=atol, rtol=rtol, min_top1_agreement=min_top1_agreement)


def row_top1(values: np.ndarray) -> list[int]:
    """The arg max over the last axis of every row (a scalar or 1-d output is one row)."""
    arr = np.asarray(values)
    rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim >= 1 else arr.reshape(1, 1)
    return [int(i) for i in np.argmax(rows, axis=-1)]


def case_feeds(case: PipelineCase) -> dict[str, np.ndarray]:
    return {k: np.asarray(v).reshape(case.shapes[k]) for k, v in case.inputs.items()}


def check_golden(runner: PipelineRunner, golden: PipelineGolden) -> float:
    """Run every case; raises SelfTestFailed naming the case and output. Returns the worst absolute error."""
    worst = 0.0
    hits = total = 0
    for i, case in enumerate(golden.cases):
        runner.reset()
        try:
            outputs = runner.run(case_feeds(case)).outputs
        except AgentError as e:
            raise SelfTestFailed(f"pipeline golden case {i}: {e}") from e
        for name, got in outputs.items():
            if not np.isfinite(got).all():
                raise SelfTestFailed(f"pipeline golden case {i}: output {name!r} has NaN or inf")
            if name in case.expected_top1:
                want_rows = case.expected_top1[name]
                got_rows = row_top1(got)
                if len(got_rows) != len(want_rows):
                    raise SelfTestFailed(
                        f"pipeline golden case {i}: output {name!r} has {len(got_rows)} rows, expected {len(want_rows)}"
                    )
                total += len(want_rows)
                hits += sum(g == w for g, w in zip(got_rows, want_rows, strict=True))
                continue
            if name not in case.expected:
                continue
            want = np.asarray(case.expected[name], dtype=np.float64)
            flat = got.astype(np.float64).ravel()
            if flat.shape != want.shape:
                raise SelfTestFailed(
                    f"pipeline golden case {i}: output {name!r} has {flat.size} values, expected {want.size}"
                )
            err = float(np.max(np.abs(flat - want))) if want.size else 0.0
            worst = max(worst, err)
            if not np.allclose(flat, want, atol=golden.atol, rtol=golden.rtol):
                raise SelfTestFailed(
                    f"pipeline golden case {i}: output {name!r} differs by {err:.4g} (atol {golden.atol})"
                )
    if total and hits / total < golden.min_top1_agreement:
        raise SelfTestFailed(f"pipeline top-1 agreement {hits}/{total} below {golden.min_top1_agreement}")
    runner.reset()
    return worst
