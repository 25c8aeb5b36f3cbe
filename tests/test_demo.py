"""`edgefleet demo --once --devices 10`: the whole chain, and a summary that matches the hub's API."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgefleet.brokers import free_port
from tests.support.procs import alive, descendants

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[1]


def _hub_api(data_dir: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    """The demo's hub, started again on its data dir (MQTT off) to read what it recorded."""
    port = free_port()
    env = {
        **os.environ,
        "EDGEFLEET_HUB_DATA_DIR": str(data_dir),
        "EDGEFLEET_HUB_ADMIN_TOKEN": token,
        "EDGEFLEET_HUB_MQTT_ENABLED": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet", "hub", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code < 500:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("hub did not restart")


def _run_demo(args: list[str], env: dict[str, str] | None = None) -> Demo:
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "demo", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "COLUMNS": "160", **(env or {})})  # fmt: skip
    return Demo(proc)


class Demo:
    """A demo subprocess whose output (stdout and stderr, piped: not a terminal) is read with the time of each line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def text(self) -> str:
        return "\n".join(line for _t, line in self.lines)

    def wait_for(self, words: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(words in line for _t, line in self.lines):
                return
            time.sleep(0.2)
        raise AssertionError(f"no {words!r} in the demo's output:\n{self.text[-3000:]}")

    def end(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(10)
        return code


def check_progress(demo: Demo, long_phases: tuple[tuple[str, str], ...]) -> None:
    """Piped output: a progress line in every stretch between two lines of the story longer than two progress
    intervals (by the times the lines were read), and in each long phase (from its first line to its last)."""
    from edgefleet.demo.progress import PROGRESS_S

    story = [i for i, (_t, line) in enumerate(demo.lines) if line.startswith("> ")]
    for a, b in itertools.pairwise(story):
        took = demo.lines[b][0] - demo.lines[a][0]
        between = [line for _t, line in demo.lines[a + 1 : b] if line.startswith("... ")]
        if took > 2 * PROGRESS_S:
            assert between, f"{took:.0f} s without a progress line after {demo.lines[a][1]!r}:\n{demo.text}"
    for first, last in long_phases:
        start = next(i for i in story if demo.lines[i][1].startswith(first))
        end = next(i for i in story if i > start and demo.lines[i][1].startswith(last))
        progress = [line for _t, line in demo.lines[start:end] if line.startswith("... ")]
        said = sum(1 for i in story if start <= i < end)
        if demo.lines[end][0] - demo.lines[start][0] > (said + 1) * PROGRESS_S:  # its own lines cannot fill it
            assert progress, f"no progress line from {first!r} to {last!r}:\n{demo.text}"


def test_demo_once_ten_devices(tmp_path: Path) -> None:
    demo = _run_demo(["--once", "--devices", "10", "--workdir", str(tmp_path)])
    code = demo.end(timeout=900)
    out = demo.text
    assert code == 0, out[-6000:]
    assert "EdgeFleet demo: summary" in out
    assert out.splitlines()[-1] == f"work files kept in {tmp_path} (--workdir)"
    # progress while training, while each rollout waits on its waves and gates, and wherever else it is long
    (tmp_path / "output.txt").write_text(out)
    check_progress(demo, (("> training digits CNNs", "> building digit-locator"),
                          ("> rollout v1: wave 0 (canary)", "> rollout v1: completed"),
                          ("> rollout v2: wave 0 (canary)", "> rollout v2: completed"),
                          ("> rollout v3: wave 0 (canary)", "> rollout v3: rolled_back")))  # fmt: skip
    # one wave vocabulary: counted from 0 as the API counts them, wave 0 the canary (as on the dashboard)
    text = " ".join(out.split())  # the console wraps long lines
    assert "rollout v1: wave 0 (canary) 10% of the fleet, then wave 1 to 50%, wave 2 to 100%" in text
    assert re.search(r"rollout v1: wave 0 \(canary\) 1/1 healthy, wave 1 \(4 devices\) released", text), text[-3000:]
    assert "canary 1" not in text and "stage " not in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rollouts"]["1"]["state"] == "completed"
    assert summary["rollouts"]["2"]["state"] == "completed"
    # v3 predicts one class for every digit: the drift gate's finding, as the story tells it, not a self-test
    v3 = summary["rollouts"]["3"]
    assert v3["state"] == "rolled_back" and v3["reason"].startswith("wave 0: "), v3
    assert "drift: " in v3["reason"] and "predicted classes drifted" in v3["reason"], v3["reason"]
    assert "self-test" not in v3["reason"] and "latency" not in v3["reason"], v3["reason"]
    assert summary["offline_converged"] is True
    assert summary["answers"].get("cloud:1", 0) > 0  # answered by the cloud while devices had no model
    assert summary["versions"] == {"v2": 10}
    pipeline_rollout = summary["pipeline_rollout"]
    assert (pipeline_rollout["state"], pipeline_rollout["healthy"], pipeline_rollout["total"]) == ("completed", 10, 10)
    _check_pipeline_reading(summary["pipeline"], out, tmp_path)

    from edgefleet.demo.environment import DemoEnvironment

    proc, url = _hub_api(tmp_path / "env" / "hub", DemoEnvironment(tmp_path).admin_token)
    try:
        headers = {"Authorization": f"Bearer {DemoEnvironment(tmp_path).admin_token}"}
        listed = httpx.get(f"{url}/api/v1/rollouts", headers=headers).json()
        rollouts = {r["version"]: r for r in listed if r["kind"] == "model"}
        for version, entry in summary["rollouts"].items():
            assert rollouts[int(version)]["state"] == entry["state"]
            assert rollouts[int(version)]["reason"] == entry["reason"]
        (listed_pipeline,) = [r for r in listed if r["kind"] == "pipeline"]
        assert (listed_pipeline["model"], listed_pipeline["version"]) == ("digit-reader", 1)
        assert listed_pipeline["state"] == pipeline_rollout["state"]
        assert listed_pipeline["reason"] == pipeline_rollout["reason"]
        assert [w["total"] for w in listed_pipeline["waves"]] == [2, 8]  # canary, then the rest
        assert [w["counts"] for w in listed_pipeline["waves"]] == [{"healthy": 2}, {"healthy": 8}]
        devices = httpx.get(f"{url}/api/v1/devices", headers=headers).json()
        assert len(devices) == 10
        assert {d["current_versions"]["digits"] for d in devices} == {2}
        assert [d["current_pipelines"] for d in devices] == [{"digit-reader": 1}] * 10
        assert next(d for d in devices if d["id"] == summary["offline_device"])["current_versions"]["digits"] == 2
    finally:
        proc.terminate()
        proc.wait(10)


def _check_pipeline_reading(reading: dict[str, Any], stdout: str, workdir: Path) -> None:
    """The pipeline's lines come from the devices' answers: every canvas answered by v1 on every device, stage
    timings for every node, and as many read right as the same artifacts read here, run locally."""
    from agent.pipeline.local import local_runner
    from edgefleet.demo.models import PROFILES
    from edgefleet.demo.pipeline import CANVAS, CANVAS_SEED, LOCATOR, NODES, pipeline_spec
    from edgefleet.samples import digit_canvases, digits

    data = digits()
    assert reading["canvases"] == reading["answered"] == len(data.y_val)
    assert reading["versions"] == {"v1": len(data.y_val)} and reading["errors"] == {}
    assert len(reading["devices"]) == 10
    assert reading["accuracy"] == pytest.approx(reading["right"] / reading["answered"])
    assert reading["accuracy"] >= 0.85
    assert reading["bare_answered"] == len(data.y_val) and reading["bare_accuracy"] >= 0.85
    assert list(reading["timings_ms"]) == list(NODES) and all(ms > 0 for ms in reading["timings_ms"].values())
    text = " ".join(stdout.split())  # the console wraps long lines
    timings = re.search(r"pipeline digit-reader v1 on 10 devices, mean time per node: (.*?) > ", text)
    assert timings is not None, text[-3000:]
    assert all(re.search(rf"\b{node} \d+\.\d+ ms", timings.group(1)) for node in NODES), timings.group(1)
    assert f"digit-reader read {reading['right']}/{reading['answered']} canvases right" in text

    # Canvas i went to device i % 10, which runs profile i % 2 (the demo's fleet), on the artifacts pushed.
    models = workdir / "models"
    spec = pipeline_spec(models / "out-v2")
    canvases, _ = digit_canvases(data.x_val, CANVAS, seed=CANVAS_SEED)
    right = 0
    for p, profile in enumerate(PROFILES):
        stages = {"locate": models / f"out-{LOCATOR}" / profile, "classify": models / "out-v2" / profile}
        runner = local_runner(spec, stages)
        for i in range(p, len(canvases), len(PROFILES)):
            digit = runner.run({"image": canvases[i : i + 1]}).outputs["digit"]
            right += int(np.asarray(digit).ravel()[0] == data.y_val[i])
    assert abs(right - reading["right"]) <= 2, (right, reading["right"])  # thread counts may flip a near-tie


STOP_LINE = re.compile(r"^(?P<how>Ctrl-C|SIGTERM): stopped the demo while (?P<during>.+) "
                       r"\((?:(?P<stopped>.+) stopped|(?P<nothing>nothing else was running yet))\); "
                       r"work files (?P<work>.+)$")  # fmt: skip


def _interrupt(tmp_path: Path, signum: int, when: str, *args: str) -> tuple[re.Match[str], Path, set[int]]:
    """Start the demo (its temporary folders under tmp_path/tmp), signal it once `when` is in its output, check
    that everything it started stopped; its stop line, the temporary folder and what ran when it was signalled."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    demo = _run_demo(["--devices", "3", *args], env={"TMPDIR": str(temp)})
    started: set[int] = set()
    try:
        demo.wait_for(when, timeout=600)
        started = descendants(demo.proc.pid)
        demo.proc.send_signal(signum)
        code = demo.end(timeout=120)
    finally:
        left = {pid for pid in started if alive(pid)}
        for pid in left:  # not to leave them to the rest of the suite should the demo have orphaned them
            os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the demo ended: {left}"
    assert code == 128 + signum, demo.text[-3000:]
    assert "Traceback" not in demo.text, demo.text
    # piped output: progress lines while the models trained (the longest silent step before)
    assert any(line.startswith("... training digits CNNs") for _t, line in demo.lines), demo.text
    last = demo.lines[-1][1]
    stop = STOP_LINE.match(last)
    assert stop is not None, demo.text[-3000:]
    return stop, temp, started


def test_ctrl_c_stops_everything_says_so_in_one_line_and_removes_the_work_files(tmp_path: Path) -> None:
    stop, temp, started = _interrupt(tmp_path, signal.SIGINT, "real agents enrolled")
    assert len(started) >= 5  # the hub, the broker and three agents at least (the demo's own helpers may add more)
    assert stop["how"] == "Ctrl-C"
    assert stop["during"].startswith(("starting 3 agents", "waiting for the first cloud answers")), stop.string
    assert stop["stopped"] is not None and "the hub" in stop["stopped"] and "3 agents" in stop["stopped"], stop.string
    removed = re.fullmatch(r"\((?P<root>.+)\) removed; --keep keeps them", stop["work"])
    assert removed is not None, stop["work"]
    root = Path(removed["root"])
    assert root.parent == temp and root.name.startswith("edgefleet-demo-") and not root.exists()
    # nothing else the demo or what it started made is left behind either (onnxruntime keeps a 51-byte session
    # id, `.ses`, in the temporary folder of whoever loads it, as in /tmp: not the demo's to remove)
    assert [p.name for p in temp.iterdir() if p.name != ".ses"] == []


def test_sigterm_while_training_stops_it_and_keeps_the_work_files_with_keep(tmp_path: Path) -> None:
    """`kill` / `timeout` / a closed terminal end the demo as Ctrl-C does, here in its first and longest step (the
    Ctrl-C test above stops a running hub, broker and agents; this one takes seconds, not a whole set-up)."""
    stop, temp, _started = _interrupt(tmp_path, signal.SIGTERM, "... training digits CNNs", "--keep")
    assert stop["how"] == "SIGTERM"
    assert stop["during"].startswith("training digits CNNs (v1, v2, v3)"), stop.string
    assert stop["nothing"] is not None, stop.string  # the broker and the hub start after the models are made
    kept = re.fullmatch(r"kept in (?P<root>.+)", stop["work"])
    assert kept is not None, stop["work"]
    root = Path(kept["root"])
    assert root.parent == temp and (root / "models").is_dir() and not (root / "env" / "hub").exists()
    assert [p.name for p in temp.iterdir() if p.name != ".ses"] == [root.name]  # .ses: onnxruntime's, as above


def test_the_digit_locator_finds_each_digit_on_its_canvas(tmp_path: Path) -> None:
    """The pipeline's first stage as built (before conversion): the row exactly, the column within a pixel or so."""
    import onnxruntime as ort

    from edgefleet.samples import digit_canvases, digit_locator_onnx, digits

    canvases, corners = digit_canvases(digits().x_val, 24, seed=5)
    session = ort.InferenceSession(str(digit_locator_onnx(tmp_path / "locator.onnx", 24)))
    boxes = session.run(["boxes"], {"canvas": canvases})[0] * 23  # normalised by size - 1
    assert boxes.shape == (len(canvases), 4)
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 7, atol=1e-4)  # 8 rows, pixel centre to pixel centre
    np.testing.assert_allclose(boxes[:, 0], corners[:, 0], atol=1e-4)
    column_error = np.abs(boxes[:, 1] - corners[:, 1])
    assert column_error.max() < 1.5 and np.median(column_error) < 0.25, np.percentile(column_error, [50, 90, 100])
    blank = session.run(["boxes"], {"canvas": np.zeros((1, 24, 24, 1), np.float32)})[0]
    assert np.isfinite(blank).all()
