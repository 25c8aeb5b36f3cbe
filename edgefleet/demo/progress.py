"""Progress lines while the demo works, for output that is not a terminal (`make demo | tee log`).

In a terminal the live tables move; piped, they are not drawn, and a step such as training three models or a
rollout waiting on its gates would leave the log silent for a minute. `Progress` says what the demo is doing
whenever nothing was printed for `interval_s`: the step, how long it has run, and the step's own status (a
rollout's wave and device states, devices enrolled, ...). It runs in a thread because the long steps block
the main one (training runs inside TensorFlow).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

PROGRESS_S = 5.0  # piped output gets a line at least this often

Say = Callable[[str], None]
Status = Callable[[], str]


def clock_text(seconds: float) -> str:
    """`42 s`, `3:07` (minutes:seconds)."""
    s = int(seconds)
    return f"{s} s" if s < 60 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """The demo's current step, and a line about it whenever the output was quiet for `interval_s`."""

    def __init__(self, say: Say, *, interval_s: float = PROGRESS_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._say, self.interval_s, self._monotonic = say, interval_s, monotonic
        self._lock = threading.Lock()
        self._what = "starting"
        self._status: Status | None = None
        self._step_started = self._last_line = monotonic()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def what(self) -> str:
        """The step running now (what an interruption stopped)."""
        return self._what

    def step(self, what: str, status: Status | None = None) -> None:
        """A new step starts: `what` it does, and how to ask it how far it got (called from the progress thread)."""
        with self._lock:
            self._what, self._status, self._step_started = what, status, self._monotonic()

    def said(self) -> None:
        """A line was printed: the next progress line is due `interval_s` from now."""
        with self._lock:
            self._last_line = self._monotonic()

    def start(self) -> Progress:
        self._thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._halt.wait(self.due_in()):
            self.tick()

    def due_in(self) -> float:
        with self._lock:
            return max(0.0, self._last_line + self.interval_s - self._monotonic())

    def tick(self) -> bool:
        """Print the progress line if one is due; True if it did."""
        with self._lock:
            now = self._monotonic()
            if now - self._last_line < self.interval_s:
                return False
            what, status, started = self._what, self._status, self._step_started
        line = f"... {what} ({clock_text(now - started)})"
        if status is not None:
            try:
                line += f": {status()}"
            except Exception as e:  # a status the hub could not answer now: the line still says the step
                line += f" (status unavailable: {type(e).__name__})"
        if self._halt.is_set():
            return False
        self._say(line)
        self.said()
        return True
