"""Targeting and wave planning (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from hub.rollouts.planner import assign_waves, current_version, matches, next_desired, wave_sizes
from hub.schemas import RolloutCreate, RolloutTarget


def device(i: str, **kw: Any) -> dict[str, Any]:
    return {"id": i, "profile": "p", "group_name": "g", "tags": {}, "desired": None, "reported": None,
            "desired_generation": 0, **kw}  # fmt: skip


def test_target_criteria_all_must_match() -> None:
    d = device("a", tags={"site": "x", "hw": "v2"})
    assert matches(RolloutTarget(), d)
    assert matches(RolloutTarget(group="g", profile="p", tags={"site": "x"}, devices=["a", "b"]), d)
    assert not matches(RolloutTarget(tags={"site": "y"}), d)
    assert not matches(RolloutTarget(devices=["b"]), d)
    assert not matches(RolloutTarget(profile="q"), d)
    assert not matches(RolloutTarget(group="h"), d)


@pytest.mark.parametrize(
    ("n", "canary", "stages", "sizes"),
    [(10, 10, [50, 100], [1, 4, 5]), (3, 10, [100], [1, 2]), (0, 10, [100], [0]), (5, 0, [100], [5]),
     (1, 50, [50, 100], [1]), (3, 34, [67, 100], [2, 1]), (2, 50, [100], [1, 1])],
)  # fmt: skip
def test_wave_sizes(n: int, canary: float, stages: list[float], sizes: list[int]) -> None:
    assert wave_sizes(n, canary, stages) == sizes
    assert sum(sizes) == n


def test_waves_are_stable_and_differ_between_rollouts() -> None:
    ids = [f"d{i}" for i in range(50)]
    first = assign_waves("r1", ids, [5, 45])
    assert first == assign_waves("r1", list(reversed(ids)), [5, 45])
    canaries = {d for d, w in first.items() if w == 0}
    assert len(canaries) == 5 and canaries != {d for d, w in assign_waves("r2", ids, [5, 45]).items() if w == 0}


def test_next_desired_keeps_other_models_and_bumps_generation() -> None:
    now = datetime(2026, 11, 25, tzinfo=UTC)
    d = device("a", desired_generation=4, desired={"models": [
        {"name": "kws", "version": 2, "manifest_target": "models/kws/2/p/manifest.json"},
        {"name": "digits", "version": 1, "manifest_target": "models/digits/1/p/manifest.json"}]})  # fmt: skip
    state = next_desired(d, model="digits", version=3, rollout_id="r", rollback=False, now=now)
    assert state.generation == 5
    assert [(m.name, m.version) for m in state.models] == [("digits", 3), ("kws", 2)]
    assert current_version(d, "digits") == 1
    gone = next_desired(d, model="digits", version=None, rollout_id="r", rollback=True, now=now)
    assert [m.name for m in gone.models] == ["kws"]


def test_rollout_create_validates_stages() -> None:
    with pytest.raises(ValueError, match="increasing"):
        RolloutCreate(model="m", version=1, stages=[50, 40, 100])
    with pytest.raises(ValueError, match="100"):
        RolloutCreate(model="m", version=1, stages=[50])


def test_next_desired_sets_a_pipeline_beside_models_of_the_same_name() -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    model = {"name": "digits", "version": 1, "manifest_target": "models/digits/1/rpi/manifest.json"}
    pipeline = {"name": "digits", "version": 1, "pipeline_target": "pipelines/digits/1/rpi/pipeline.json"}
    d = device("a", profile="rpi", desired_generation=2, desired={"models": [model], "pipelines": [pipeline]})
    state = next_desired(d, model="digits", version=2, rollout_id="r", rollback=False, now=now, kind="pipeline")
    assert [(m.name, m.version) for m in state.models] == [("digits", 1)]  # the model of that name is untouched
    assert [(p.name, p.version, p.pipeline_target) for p in state.pipelines] == [
        ("digits", 2, "pipelines/digits/2/rpi/pipeline.json")
    ]
    assert current_version(d, "digits", "pipeline") == 1
    gone = next_desired(d, model="digits", version=None, rollout_id="r", rollback=True, now=now, kind="pipeline")
    assert gone.pipelines == [] and [m.name for m in gone.models] == ["digits"]


def test_rollout_create_takes_a_model_or_a_pipeline() -> None:
    assert RolloutCreate(pipeline="p", version=1).kind == "pipeline"
    assert RolloutCreate(model="m", version=1).name == "m"
    for bad in ({"version": 1}, {"model": "m", "pipeline": "p", "version": 1}):
        with pytest.raises(ValueError, match="give either model or pipeline"):
            RolloutCreate.model_validate(bad)
