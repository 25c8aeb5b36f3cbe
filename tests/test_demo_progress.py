"""The demo's progress lines and its stop line, without running the demo (tests/test_demo.py runs it)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edgefleet.demo import _clean_up, _stopped_line
from edgefleet.demo.progress import Progress, clock_text
from edgefleet.demo.view import rollout_line, wave_released_line


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_line_whenever_the_output_was_quiet_for_the_interval_naming_the_step_and_its_status() -> None:
    clock, lines = Clock(), []
    progress = Progress(lines.append, interval_s=5.0, monotonic=clock)
    progress.step("training digits CNNs")
    clock.t += 4.9
    assert not progress.tick() and lines == []
    clock.t += 0.1
    assert progress.tick() and lines == ["... training digits CNNs (5 s)"]
    clock.t += 3
    progress.said()  # the story printed a line of its own: the next progress line is due 5 s after it
    clock.t += 4
    assert not progress.tick()
    clock.t += 1
    assert progress.tick() and lines[-1] == "... training digits CNNs (13 s)"
    progress.step("rolling out v2", lambda: "running at wave 0 (canary) of 0-1, 1/4 healthy")
    clock.t += 65
    assert progress.tick() and lines[-1] == "... rolling out v2 (1:05): running at wave 0 (canary) of 0-1, 1/4 healthy"

    def broken() -> str:
        raise ConnectionError("hub busy")

    progress.step("rolling out v3", broken)
    clock.t += 5
    assert progress.tick() and lines[-1] == "... rolling out v3 (5 s) (status unavailable: ConnectionError)"
    assert progress.what == "rolling out v3"
    assert clock_text(59.9) == "59 s" and clock_text(600) == "10:00"


def test_the_thread_says_it_while_the_main_thread_is_busy() -> None:
    lines: list[str] = []
    progress = Progress(lines.append, interval_s=0.02).start()
    progress.step("a step that blocks")
    deadline = time.monotonic() + 30
    while len(lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # a blocked main thread: only the progress thread prints
    progress.stop()
    assert len(lines) >= 3 and all(line.startswith("... a step that blocks (") for line in lines), lines
    after = len(lines)
    time.sleep(0.1)
    assert len(lines) == after and not any(t.name == "demo-progress" for t in threading.enumerate())


def test_the_stop_line_says_what_stopped_it_what_it_stopped_and_where_the_files_are(tmp_path: Path) -> None:
    own = tmp_path / "edgefleet-demo-x"
    (own / "env").mkdir(parents=True)
    work = _clean_up(own, owned=True, keep=False)
    assert not own.exists() and work == f"work files ({own}) removed; --keep keeps them"
    line = _stopped_line("Ctrl-C", "rolling out v2", ["the hub", "the Mosquitto broker", "10 agents"], work)
    assert line == (f"Ctrl-C: stopped the demo while rolling out v2 (the hub, the Mosquitto broker and 10 agents "
                    f"stopped); work files ({own}) removed; --keep keeps them")  # fmt: skip
    kept = tmp_path / "kept"
    kept.mkdir()
    assert _clean_up(kept, owned=True, keep=True) == f"work files kept in {kept}" and kept.exists()
    assert _clean_up(kept, owned=False, keep=False) == f"work files kept in {kept} (--workdir)" and kept.exists()
    assert _stopped_line("SIGTERM", "training digits CNNs", [], "w") == (
        "SIGTERM: stopped the demo while training digits CNNs (nothing else was running yet); w")  # fmt: skip


def test_rollout_lines_name_waves_from_0_as_the_api_does() -> None:
    ro = {"state": "running", "current_wave": 1, "spec": {"canary_percent": 20},
          "waves": [{"wave": 0, "total": 2, "counts": {"healthy": 2}},
                    {"wave": 1, "total": 8, "counts": {"healthy": 1, "downloading": 7}}]}  # fmt: skip
    assert rollout_line(ro) == "running at wave 1 of 0-1, 3/10 healthy (downloading 7)"
    assert wave_released_line(ro, 0) == "wave 0 (canary) 2/2 healthy, wave 1 (8 devices) released"
