"""Shadow evaluation on the device (issue 21, device half).

The comparison and the window accumulation against plain numpy / Python references (hypothesis); the runner with
real onnxruntime models; and the daemon end to end: the stub hub's real TUF repository over HTTP, a real broker,
real models, the events a hub-side observer receives.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from prometheus_client import generate_latest

from agent.errors import AgentError, OutputMismatch
from agent.inference import InferenceService
from agent.metrics import AgentMetrics
from agent.model import LoadedModel
from agent.serving import ServingRegistry
from agent.settings import ShadowSettings
from agent.shadow.compare import Comparison, compare, paired
from agent.shadow.runner import ShadowRunner, idle_after
from agent.shadow.window import ShadowWindow
from agent.telemetry.recorders import Recorders
from protocol.http import artifact_target
from protocol.manifest import Task
from protocol.shadow import DesiredShadow, ShadowSummary, merge_shadow
from tests.agent.harness import Observer, wait_for
from tests.agent.hubstub import HubStub
from tests.agent.shadow_support import (
    affine_manifest,
    committed,
    desire,
    disagreeing_bias,
    onnx_affine,
    publish_affine,
    shadow_events,
    shadow_state,
    windows,
)

RNG = np.random.default_rng(21)
W = RNG.normal(size=(4, 3))
B = RNG.normal(size=3)


# ---- the comparison against a plain reference ---------------------------------------------------------
def reference(
    kind: str, c: np.ndarray, s: np.ndarray, atol: float, rtol: float
) -> tuple[int, float, float, float, int]:
    """(agreed rows, abs sum, sq sum, max abs, elements) of (rows x values) arrays, one row and value at a time."""
    agreed = 0
    for cr, sr in zip(c.astype(np.float64).tolist(), s.astype(np.float64).tolist(), strict=True):
        if kind == "classifier":
            same = (cr[0] > 0.5) == (sr[0] > 0.5) if len(cr) == 1 else int(np.argmax(cr)) == int(np.argmax(sr))
        else:
            same = all(
                (abs(a - b) <= atol + rtol * abs(b)) if math.isfinite(a) and math.isfinite(b)
                else (math.isnan(a) and math.isnan(b)) or a == b
                for a, b in zip(cr, sr, strict=True)
            )  # fmt: skip
        agreed += int(same)
    diffs = [
        abs(a - b)
        for a, b in zip(c.astype(np.float64).ravel().tolist(), s.astype(np.float64).ravel().tolist(), strict=True)
        if math.isfinite(a) and math.isfinite(b)
    ]
    return agreed, sum(diffs), sum(d * d for d in diffs), max(diffs, default=0.0), len(diffs)


values = st.floats(-1e3, 1e3, width=32) | st.sampled_from([np.nan, np.inf, -np.inf, 0.5])


@st.composite
def output_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 5)))
    serving = draw(hnp.arrays(np.float32, shape, elements=values))
    # The candidate: the serving values nudged (some within any tolerance, some not), or values of its own.
    noise = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from([0.0, 0.0, 1e-6, -1e-3, 0.05, 2.0])))
    own = draw(hnp.arrays(np.float32, shape, elements=values))
    use_own = draw(hnp.arrays(np.bool_, shape))
    with np.errstate(invalid="ignore", over="ignore"):
        candidate = np.where(use_own, own, serving + noise).astype(np.float32)
    return candidate, serving


@given(output_pairs(), st.sampled_from(["classifier", "regressor"]), st.floats(0, 0.1), st.floats(0, 0.1))
@settings(max_examples=300, deadline=None)
def test_compare_matches_a_plain_reference(pair: tuple[np.ndarray, np.ndarray], kind: str, atol: float,
                                           rtol: float) -> None:  # fmt: skip
    c, s = pair
    got = compare(kind, [("y", c, s)], rows=len(s), atol=atol, rtol=rtol)  # type: ignore[arg-type]
    agreed, abs_sum, sq_sum, worst, elements = reference(kind, c, s, atol, rtol)
    assert (got.rows, got.agreed, got.elements) == (len(s), agreed, elements)
    assert got.abs_error_sum == pytest.approx(abs_sum, rel=1e-9, abs=1e-12)
    assert got.sq_error_sum == pytest.approx(sq_sum, rel=1e-9, abs=1e-12)
    assert got.max_abs_error == pytest.approx(worst, rel=1e-12)


def test_compare_pairs_outputs_and_refuses_what_does_not_line_up() -> None:
    y = np.zeros((2, 3), np.float32)
    assert [n for n, _, _ in paired({"out": y}, {"y": y})] == ["y"]  # renamed: by position
    with pytest.raises(OutputMismatch):
        paired({"a": y, "b": y}, {"y": y})
    with pytest.raises(OutputMismatch, match="shape"):
        compare("regressor", [("y", y[:1], y)], rows=2, atol=0, rtol=0)
    # A label output (one integer per row) is compared as it is; a whole tensor decides every row alike.
    labels = compare("classifier", [("label", np.array([1, 2, 3]), np.array([1, 0, 3]))], rows=3, atol=0, rtol=0)
    assert (labels.rows, labels.agreed) == (3, 2)
    whole = compare("regressor", [("y", y, y), ("state", np.ones(5), np.zeros(5))], rows=2, atol=0.1, rtol=0)
    assert (whole.agreed, whole.elements, whole.abs_error_sum) == (0, 11, 5.0)


# ---- the window accumulation against plain sums --------------------------------------------------------
comparisons = st.builds(
    lambda rows, agreed_share, abs_sum, worst, elements: Comparison(
        rows, int(rows * agreed_share), abs_sum, abs_sum * worst, worst, elements
    ),
    st.integers(0, 8),
    st.floats(0, 1),
    st.floats(0, 50),
    st.floats(0, 5),
    st.integers(0, 40),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), comparisons, st.floats(0, 100), st.floats(0, 100)),
        st.tuples(st.just("failed"), st.integers(1, 4)),
        st.tuples(st.just("dropped")),
        st.tuples(st.just("close")),
    ),
    max_size=60,
)


@given(operations)
@settings(max_examples=200, deadline=None)
def test_windows_add_up_to_the_plain_totals(ops: list[tuple[Any, ...]]) -> None:
    window = ShadowWindow("demo", 2, "regressor", clock=lambda: 0.0)
    closed: list[ShadowSummary] = []
    totals = dict.fromkeys(("samples", "agreed", "dropped", "failed", "elements", "s_lat", "c_lat", "n"), 0.0)
    abs_sum = worst = 0.0
    for op in ops:
        if op[0] == "add":
            _, comparison, serving_ms, candidate_ms = op
            window.add(comparison, serving_ms, candidate_ms, serving_version=1)
            if comparison.rows == 0:  # a request of no rows is no evidence
                continue
            totals["samples"] += comparison.rows
            totals["agreed"] += comparison.agreed
            totals["elements"] += comparison.elements
            totals["s_lat"] += serving_ms
            totals["c_lat"] += candidate_ms
            totals["n"] += 1
            abs_sum += comparison.abs_error_sum
            worst = max(worst, comparison.max_abs_error)
        elif op[0] == "failed":
            window.add_failed(op[1], serving_version=1)
            totals["failed"] += op[1]
        elif op[0] == "dropped":
            window.add_dropped()
            totals["dropped"] += 1
        elif (summary := window.close()) is not None:
            closed.append(summary)
    if (summary := window.close()) is not None:
        closed.append(summary)
    merged = merge_shadow(closed)
    if merged is None:
        assert totals["samples"] == totals["failed"] == totals["dropped"] == 0
        return
    assert (merged.samples, merged.agreed, merged.failed, merged.dropped, merged.elements) == (
        totals["samples"], totals["agreed"], totals["failed"], totals["dropped"], totals["elements"]
    )  # fmt: skip
    assert merged.abs_error_sum == pytest.approx(abs_sum) and merged.max_abs_error == worst
    assert merged.serving_ms_sum == pytest.approx(totals["s_lat"])
    assert merged.candidate_ms_sum == pytest.approx(totals["c_lat"])
    assert sum(merged.serving_latency_buckets) == sum(merged.candidate_latency_buckets) == totals["n"]
    assert all(s.samples or s.failed or s.dropped for s in closed)  # an empty window is never sent


def test_a_window_is_due_by_rows_or_by_time_and_closes_when_the_serving_version_changes() -> None:
    now = [100.0]
    window = ShadowWindow("demo", 2, "classifier", clock=lambda: now[0])
    assert not window.due(window_s=10, window_samples=5)  # empty: never due
    now[0] = 200.0
    window.add(Comparison(rows=2, agreed=2), 1.0, 1.0, serving_version=1)  # the window's time starts here
    assert not window.due(window_s=10, window_samples=5)
    now[0] = 209.0
    window.add_failed(3, serving_version=1)
    assert window.due(window_s=10, window_samples=5)  # 2 compared + 3 failed rows
    assert not window.due(window_s=10, window_samples=6)
    now[0] = 210.0
    assert window.due(window_s=10, window_samples=6)
    assert window.serves_other(2) and not window.serves_other(1)
    summary = window.close()
    assert summary is not None and summary.serving_version == 1 and summary.disagreement == pytest.approx(3 / 5)
    assert window.empty and window.close() is None


def test_idle_keeps_the_worker_within_its_budget() -> None:
    for budget in (0.1, 0.25, 0.5, 1.0):
        busy = 0.004
        assert busy / (busy + idle_after(busy, budget)) == pytest.approx(budget)


# ---- the runner with real models -------------------------------------------------------------------------
def affine_model(tmp_path: Path, name: str, version: int, w: np.ndarray, b: np.ndarray, task: Task = Task.REGRESSION,
                 **kw: Any) -> tuple[LoadedModel, Any]:  # fmt: skip
    art = onnx_affine(tmp_path / f"{name}_v{version}.onnx", w, b, batch_one_only=kw.pop("batch_one_only", False))
    manifest = affine_manifest(art, name, version, task, **kw)
    return LoadedModel.from_file(art, manifest=manifest), manifest


def runner_for(candidate: tuple[LoadedModel, Any], sent: list[ShadowSummary], **kw: Any) -> ShadowRunner:
    settings_ = ShadowSettings(**{"queue_size": 10_000, "cpu_budget": 1.0, "window_samples": 10_000, **kw.pop("s", {})})
    return ShadowRunner(*candidate, settings=settings_, emit=sent.append, metrics=AgentMetrics(),
                        **{"fraction": 1.0, **kw})  # fmt: skip


def test_sampling_takes_about_the_fraction_asked_for(tmp_path: Path) -> None:
    serving = affine_model(tmp_path, "demo", 1, W, B)
    sent: list[ShadowSummary] = []
    runner = runner_for(affine_model(tmp_path, "demo", 2, W, B), sent, fraction=0.3, rng=random.Random(5)).start()
    x = RNG.normal(size=(1, 4)).astype(np.float32)
    y = serving[0].predict({"x": x})
    n = 2000
    for _ in range(n):
        runner.offer({"x": x}, y, 0.1, 1)
    wait_for(lambda: runner.status()["queued"] == 0 and runner.totals["samples"] > 0, what="queue drained")
    runner.stop()
    merged = merge_shadow(sent)
    assert merged is not None and merged.dropped == 0 and merged.agreed == merged.samples
    band = 5 * math.sqrt(n * 0.3 * 0.7)  # five standard deviations of a binomial count
    assert abs(merged.samples - n * 0.3) < band


def test_budget_failures_and_a_serving_version_change(tmp_path: Path) -> None:
    """The worker idles (1 - b) / b of its busy time; a candidate that refuses a request counts its rows as failed;
    a new serving version closes the window; stop sends the open one."""
    serving = affine_model(tmp_path, "demo", 1, W, B)
    candidate = affine_model(tmp_path, "demo", 2, W, B, batch_one_only=True)  # refuses any batch but 1
    sent: list[ShadowSummary] = []
    runner = runner_for(candidate, sent, s={"cpu_budget": 0.5}).start()
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    runner.offer({"x": x[:1]}, serving[0].predict({"x": x[:1]}), 0.2, 1)
    runner.offer({"x": x}, serving[0].predict({"x": x}), 0.2, 1)  # three rows the candidate cannot answer
    wait_for(lambda: runner.totals["failed"] == 3 and runner.totals["samples"] == 1, what="both handled")
    runner.offer({"x": x[:1]}, serving[0].predict({"x": x[:1]}), 0.2, 2)  # v2 serves now
    wait_for(lambda: len(sent) == 1, what="the v1 window closed")
    last = runner.stop()
    assert not runner.running
    first = sent[0]
    assert (first.serving_version, first.samples, first.agreed, first.failed) == (1, 1, 1, 3)
    assert last is not None and sent[-1] == last and (last.serving_version, last.samples) == (2, 1)
    status = runner.status()
    assert status["idle_s"] == pytest.approx(status["busy_s"], abs=0.002)  # budget 0.5: idle as long as busy
    assert "ModelLoadError" in status["last_failure"]


def test_requests_still_queued_at_the_stop_are_counted_as_dropped_in_the_last_window(tmp_path: Path) -> None:
    """Nothing sampled is lost without a trace: what the worker never reached before the stop is `dropped`."""
    serving = affine_model(tmp_path, "demo", 1, W, B)
    sent: list[ShadowSummary] = []
    metrics = AgentMetrics()
    settings_ = ShadowSettings(queue_size=100, cpu_budget=1.0, window_samples=10_000)
    runner = ShadowRunner(*affine_model(tmp_path, "demo", 2, W, B), settings=settings_, emit=sent.append,
                          metrics=metrics, fraction=1.0)  # fmt: skip  # not started: every offer stays queued
    x = RNG.normal(size=(1, 4)).astype(np.float32)
    y = serving[0].predict({"x": x})
    for _ in range(7):
        runner.offer({"x": x}, y, 0.1, 1)
    assert runner.status()["queued"] == 7
    last = runner.stop()
    assert last is not None and sent == [last]
    assert (last.samples, last.dropped) == (0, 7)
    assert runner.totals["dropped"] == 7 and runner.status()["queued"] == 0
    assert metrics.registry.get_sample_value("edgefleet_agent_shadow_dropped_total", {"model": "demo"}) == 7


# ---- the serving path: errors per row (telemetry counts requests per row too) ---------------------------
def test_a_failed_batch_counts_an_error_per_row(tmp_path: Path) -> None:
    model, _ = affine_model(tmp_path, "demo", 1, W, B, batch_one_only=True)
    serving = ServingRegistry()
    serving.install("demo", 1, model)
    recorders = Recorders("dev-1", "x86_gateway", window_size=1000, window_seconds=3600)
    service = InferenceService(serving, AgentMetrics(), recorders)
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    service.predict("demo", {"x": x[:1]})
    with pytest.raises(AgentError):
        service.predict("demo", {"x": x})
    summary = recorders.close(all_windows=True)[0]
    assert (summary.n, summary.errors) == (4, 3)


# ---- the daemon end to end ---------------------------------------------------------------------------------


def stream(agent: Any, name: str, x: np.ndarray) -> list[Any]:
    """The answers to x sent as requests of 1 to 4 rows."""
    answers, i, sizes = [], 0, [1, 3, 2, 4]
    while i < len(x):
        size = sizes[len(answers) % len(sizes)]
        answers.append(agent.predict(name, {"x": x[i : i + size]}))
        i += size
    return answers


def serving_untouched(agent: Any, name: str) -> None:
    served = agent.serving.get(name)
    assert served is not None and served.version == 1
    assert (agent.store.slot_version(name, "active"), agent.store.slot_version(name, "previous")) == (1, None)
    record = agent.lifecycle.load(name)
    assert (record.state, record.target_version) == ("committed", 1)


@pytest.mark.integration
def test_candidates_that_agree_or_disagree_never_change_the_answers(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent: Callable[..., Any]
) -> None:
    x = RNG.normal(size=(301, 4)).astype(np.float32)
    shifted = disagreeing_bias(W, B, x, 0.3)
    targets, artifacts = {}, {}
    for name, version, bias in (("same", 1, B), ("same", 2, B), ("shift", 1, B), ("shift", 2, shifted)):
        targets[name, version], artifacts[name, version] = publish_affine(
            hub, tmp_path, name, version, W, bias, Task.CLASSIFICATION
        )
    agent = make_agent(shadow={"queue_size": 10_000, "cpu_budget": 1.0, "window_samples": 64, "window_s": 3600})
    models = [("same", 1, targets["same", 1]), ("shift", 1, targets["shift", 1])]
    desire(observer, 1, models)
    wait_for(lambda: committed(observer, "same", 1) and committed(observer, "shift", 1), what="v1 of both")
    before = {name: stream(agent, name, x) for name in ("same", "shift")}
    shadows = [DesiredShadow(name=n, version=2, manifest_target=targets[n, 2], fraction=1.0, rollout_id="r-21")
               for n in ("same", "shift")]  # fmt: skip
    desire(observer, 2, models, shadows)
    wait_for(lambda: all(shadow_state(agent, n) == "running" for n in ("same", "shift")), what="shadows running")
    runners = dict(agent.shadows.active)
    during = {name: stream(agent, name, x) for name in ("same", "shift")}
    for name in ("same", "shift"):
        for a, b in zip(before[name], during[name], strict=True):
            assert np.array_equal(a.outputs["y"], b.outputs["y"])  # bit for bit the same answers
            assert (b.source, b.version) == ("device", 1)
        serving_untouched(agent, name)
    wait_for(lambda: all(r.totals["samples"] == len(x) for r in runners.values()), what="every row compared")
    desire(observer, 3, models)  # the hub is done with both candidates
    wait_for(lambda: not agent.shadows.active, what="shadows ended")
    assert not any(r.running for r in runners.values())
    for name in ("same", "shift"):
        assert not (tmp_path / "device" / "shadow" / "models" / name).exists()
        assert not (tmp_path / "device" / "shadow" / "downloads" / name).exists()
        # Every row is in the windows the hub received, the last one sent when the shadow ended (301 rows are not
        # a multiple of 64).
        wait_for(lambda n=name: sum(w.samples for w in windows(observer, n)) == len(x), what=f"{name} windows")
        serving_untouched(agent, name)
    events = shadow_events(observer)
    assert {(e["version"], e["rollout_id"]) for e in events} == {(2, "r-21")}
    same, shift = merge_shadow(windows(observer, "same")), merge_shadow(windows(observer, "shift"))
    assert same is not None and shift is not None
    assert (same.kind, same.serving_version, same.samples, same.agreed, same.dropped) == ("classifier", 1, 301, 301, 0)
    assert same.disagreement == 0 and same.max_abs_error == 0
    # The disagreement expected from both models' real outputs on the same rows, computed here.
    expected = {}
    for version in (1, 2):
        model = LoadedModel.from_file(artifacts["shift", version])
        expected[version] = model.predict({"x": x})["y"].argmax(axis=1)
    share = float(np.mean(expected[1] != expected[2]))
    assert 0.25 < share < 0.35
    assert shift.samples == 301 and shift.disagreement == pytest.approx(share, abs=1e-12)
    assert shift.latency_ratio is not None and sum(shift.serving_latency_buckets) == len(during["shift"])


def artifact_gets(hub: HubStub, name: str, version: int) -> list[str]:
    """The stub hub's log lines of GETs of that version's artifact (its hash-named TUF target file)."""
    target = artifact_target(name, version, "x86_gateway", f"{name}_v{version}.onnx")
    info = hub.repo.targets()[target]
    directory, _, file = target.rpartition("/")
    return [r for r in hub.requests if r.startswith(f"GET /tuf/targets/{directory}/{info.hashes['sha256']}.{file} ")]


@pytest.mark.integration
def test_a_full_queue_drops_and_counts_and_never_holds_up_a_prediction(
    tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:
    """The shadow worker is held inside the candidate (on an Event of this test) with one request waiting in its
    queue of one: a burst of predictions all return meanwhile, each one counted as dropped. The open window goes
    to the events outbox when the agent stops and reaches the hub after the restart, which takes the candidate up
    again from its verified copy on disk, without downloading it a second time."""
    from agent.daemon import Agent
    from tests.agent.harness import agent_settings

    t1, _ = publish_affine(hub, tmp_path, "demo", 1, W, B, Task.REGRESSION)
    t2, _ = publish_affine(hub, tmp_path, "demo", 2, W * 1.01, B, Task.REGRESSION)
    settings_ = agent_settings(tmp_path / "device", hub, unique_root,
                               shadow={"queue_size": 1, "cpu_budget": 1.0, "window_s": 3600})  # fmt: skip
    agent = Agent(settings_)
    agent.start()
    try:
        shadow = DesiredShadow(name="demo", version=2, manifest_target=t2, fraction=1.0)
        desire(observer, 1, [("demo", 1, t1)], [shadow])
        wait_for(lambda: shadow_state(agent, "demo") == "running", what="shadow running")
        runner = agent.shadows.active["demo"]
        held, entered = threading.Event(), threading.Event()
        candidate = runner.model.predict

        def held_predict(inputs: Any) -> Any:
            entered.set()
            assert held.wait(60), "the test never released the shadow worker"
            return candidate(inputs)

        runner.model.predict = held_predict  # type: ignore[method-assign]
        x = RNG.normal(size=(60, 4)).astype(np.float32)
        agent.predict("demo", {"x": x[:1]})
        wait_for(entered.is_set, what="the worker holding the first request")
        answers = [agent.predict("demo", {"x": x[i : i + 1]}) for i in range(1, 60)]
        # Every prediction of the burst returned while the worker was still held: none waited for it.
        assert not held.is_set() and entered.is_set() and len(answers) == 59
        assert all(a.version == 1 for a in answers)
        status = agent.health_view()["shadows"]["demo"]
        assert (status["queued"], status["dropped"], status["samples"]) == (1, 58, 0)
        text = generate_latest(agent.metrics.registry).decode()
        assert 'edgefleet_agent_shadow_dropped_total{model="demo"} 58.0' in text
        held.set()
        wait_for(lambda: runner.totals["samples"] == 2, what="the held and the queued request compared")
        assert artifact_gets(hub, "demo", 2)  # the candidate was downloaded once
        gets = len(artifact_gets(hub, "demo", 2))
    finally:
        held.set()
        agent.stop()
    assert not runner.running
    again = Agent(settings_)
    again.start()
    try:
        wait_for(lambda: windows(observer, "demo"), what="the window sent at the stop, after the restart")
        (window,) = windows(observer, "demo")
        assert (window.samples, window.dropped, window.failed, window.serving_version) == (2, 58, 0, 1)
        wait_for(lambda: shadow_state(again, "demo") == "running", what="the shadow running again")
        assert len(artifact_gets(hub, "demo", 2)) == gets  # from the verified copy on disk
        assert again.shadows.steps.starts("demo", 2) == 1  # the clean stop reset the start counter
        serving_untouched(again, "demo")
    finally:
        again.stop()


@pytest.mark.integration
def test_a_candidate_that_fails_verification_is_reported_once_and_the_serving_model_is_untouched(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent: Callable[..., Any]
) -> None:
    t1, _ = publish_affine(hub, tmp_path, "demo", 1, W, B, Task.REGRESSION)
    t2, _ = publish_affine(hub, tmp_path, "demo", 2, W, B + 1, Task.REGRESSION)
    path = hub.repo.target_file(artifact_target("demo", 2, "x86_gateway", "demo_v2.onnx"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the served artifact is no longer what the signed metadata names
    path.write_bytes(bytes(data))
    agent = make_agent(retry_failed_after_s=0.2)  # an idle retry pass every 0.2 s
    shadow = DesiredShadow(name="demo", version=2, manifest_target=t2, fraction=0.5, rollout_id="r-9")
    desire(observer, 1, [("demo", 1, t1)], [shadow])
    wait_for(lambda: shadow_events(observer), what="the shadow refusal")
    (event,) = shadow_events(observer)
    assert (event["model"], event["version"], event["rollout_id"]) == ("demo", 2, "r-9")
    assert "DigestMismatch" in event["reason"] and not event.get("details")
    assert committed(observer, "demo", 1)
    serving_untouched(agent, "demo")
    assert agent.predict("demo", {"x": [[0.1, 0.2, 0.3, 0.4]]}).version == 1
    assert "demo" not in agent.shadows.active
    view = agent.health_view()["shadows"]["demo"]
    assert (view["state"], view["version"]) == ("failed", 2) and "DigestMismatch" in view["reason"]
    # Not tried again: not on the idle retry passes, not when the same desired state comes again ...
    desire(observer, 1, [("demo", 1, t1)], [shadow])
    reconciled = agent.reconciles
    wait_for(lambda: agent.reconciles >= reconciled + 5, what="more reconcile passes")
    assert len(shadow_events(observer)) == 1
    # ... until the hub publishes a new generation.
    desire(observer, 2, [("demo", 1, t1)], [shadow])
    wait_for(lambda: len(shadow_events(observer)) == 2, what="tried again in generation 2")
    serving_untouched(agent, "demo")


@pytest.mark.integration
def test_a_regressor_candidate_reports_its_errors_and_agreement_within_the_golden_tolerance(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent: Callable[..., Any]
) -> None:
    """Error statistics and agreement (atol + rtol * |serving|) of a slightly retrained regressor, against numpy on
    both models' real outputs; then the hub activates the candidate, which is taken from the shadow's verified copy."""
    t1, a1 = publish_affine(hub, tmp_path, "demo", 1, W, B, Task.REGRESSION)
    w2 = W + RNG.normal(scale=0.02, size=W.shape)
    t2, a2 = publish_affine(hub, tmp_path, "demo", 2, w2, B, Task.REGRESSION, atol=0.02, rtol=0.01)
    agent = make_agent(shadow={"queue_size": 10_000, "cpu_budget": 1.0, "window_samples": 50, "window_s": 3600})
    desire(observer, 1, [("demo", 1, t1)], [DesiredShadow(name="demo", version=2, manifest_target=t2, fraction=1.0)])
    wait_for(lambda: shadow_state(agent, "demo") == "running", what="shadow running")
    runner = agent.shadows.active["demo"]
    x = RNG.normal(size=(203, 4)).astype(np.float32)
    answers = stream(agent, "demo", x)
    wait_for(lambda: runner.totals["samples"] == len(x), what="every row compared")
    desire(observer, 2, [("demo", 2, t2)])  # the hub activates the candidate
    wait_for(lambda: committed(observer, "demo", 2), what="v2 committed")
    wait_for(lambda: sum(w.samples for w in windows(observer, "demo")) == len(x), what="all windows")
    merged = merge_shadow(windows(observer, "demo"))
    assert merged is not None and merged.kind == "regressor"
    serving = np.concatenate([a.outputs["y"] for a in answers]).astype(np.float64)
    candidate = LoadedModel.from_file(a2).predict({"x": x})["y"].astype(np.float64)
    assert np.array_equal(serving, LoadedModel.from_file(a1).predict({"x": x})["y"])
    diff = np.abs(candidate - serving)
    agreed = int(np.all(diff <= 0.02 + 0.01 * np.abs(serving), axis=1).sum())
    assert 0 < agreed < len(x)  # the tolerance splits the rows: both outcomes are exercised
    assert (merged.samples, merged.agreed, merged.elements) == (len(x), agreed, diff.size)
    assert merged.mean_abs_error == pytest.approx(float(diff.mean()), rel=1e-9)
    assert merged.sq_error_sum == pytest.approx(float(np.square(diff).sum()), rel=1e-9)
    assert merged.max_abs_error == pytest.approx(float(diff.max()), rel=1e-12)
    # The activation took the verified candidate from the shadow store (checked against the signed metadata again)
    # and the shadow's files were deleted after.
    downloaded = observer.events_when("downloaded", lambda e: e["version"] == 2)[0]
    assert "shadow" in downloaded["details"]["local_copy"]
    assert len(artifact_gets(hub, "demo", 2)) == 1
    wait_for(lambda: not (tmp_path / "device" / "shadow" / "models" / "demo").exists(), what="candidate deleted")
    assert agent.serving.get("demo").version == 2 and "demo" not in agent.shadows.active


@pytest.mark.integration
def test_a_candidate_that_will_not_load_or_keeps_taking_the_agent_down_is_given_up(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent: Callable[..., Any]
) -> None:
    """A signed, verified artifact the runtime cannot load is reported like a refusal; a candidate that was started
    three times without a clean stop (the agent died loading or running it) is not started a fourth time."""
    from protocol.manifest import ArtifactRef
    from tests.agent.builders import sha256_file

    t1, _ = publish_affine(hub, tmp_path, "demo", 1, W, B, Task.REGRESSION)
    art = onnx_affine(tmp_path / "valid.onnx", W, B)
    garbage = tmp_path / "demo_v2.onnx"
    garbage.write_bytes(b"not an onnx model at all" * 40)
    manifest = affine_manifest(art, "demo", 2, Task.REGRESSION)
    manifest = manifest.model_copy(update={"artifact": ArtifactRef(file=garbage.name, sha256=sha256_file(garbage),
                                                                   size=garbage.stat().st_size)})  # fmt: skip
    t2 = hub.publish(manifest, garbage)
    o1, _ = publish_affine(hub, tmp_path, "other", 1, W, B, Task.REGRESSION)
    o2, _ = publish_affine(hub, tmp_path, "other", 2, W, B, Task.REGRESSION)
    agent = make_agent()
    starts = tmp_path / "device" / "shadow" / "starts"
    starts.mkdir(parents=True, exist_ok=True)
    (starts / "other.json").write_text('{"version": 2, "starts": 3}')  # three starts that never stopped cleanly
    shadows = [DesiredShadow(name="demo", version=2, manifest_target=t2, fraction=1.0),
               DesiredShadow(name="other", version=2, manifest_target=o2, fraction=1.0)]  # fmt: skip
    desire(observer, 1, [("demo", 1, t1), ("other", 1, o1)], shadows)
    wait_for(lambda: len(shadow_events(observer)) == 2, what="both shadows given up")
    reasons = {e["model"]: e["reason"] for e in shadow_events(observer)}
    assert reasons["demo"].startswith("cannot load") and "started 3 times" in reasons["other"]
    assert not agent.shadows.active
    for name in ("demo", "other"):
        serving_untouched(agent, name)
        assert shadow_state(agent, name) == "failed"


@pytest.mark.integration
def test_a_candidate_comes_as_a_signed_patch_from_the_serving_version(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent: Callable[..., Any]
) -> None:
    """The shadow's download is the update's: the hub's patch from the serving v1 (hub/deltas.py) rebuilds the
    candidate, verified against the signed metadata, and the full artifact is never fetched."""
    from hub import deltas

    t1, a1 = publish_affine(hub, tmp_path, "demo", 1, W, B, Task.REGRESSION)
    t2, a2 = publish_affine(hub, tmp_path, "demo", 2, W, B + 0.5, Task.REGRESSION)
    full = artifact_target("demo", 2, "x86_gateway", a2.name)
    patch = deltas.patch_for(artifact=full, new=a2.read_bytes(), from_version=1, old=a1.read_bytes())
    assert patch is not None
    hub.repo.add_targets({patch.target: patch.data})
    agent = make_agent()
    desire(observer, 1, [("demo", 1, t1)], [DesiredShadow(name="demo", version=2, manifest_target=t2, fraction=1.0)])
    wait_for(lambda: shadow_state(agent, "demo") == "running", what="shadow running")
    assert artifact_gets(hub, "demo", 2) == []
    assert any(patch.target.rsplit("/", 1)[-1] in r for r in hub.requests)
    held = agent.shadows.steps.store
    assert held.artifact("demo", 2).read_bytes() == a2.read_bytes()
    serving_untouched(agent, "demo")
