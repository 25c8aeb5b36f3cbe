"""`python -m tests.agent.slowed_agent SECONDS ARGS...`: the real `edgefleet ARGS...` on a slow device: every
lifecycle step waits SECONDS before its action and SECONDS after it (the state still persisted, its event not
yet taken), so even a step that takes a millisecond here (activating: a symlink swap) lasts long enough for a
test to kill -9 the agent inside it, before or after the step's effect.

Like paused_agent, the hook lives in the tests and wraps the agent's step methods; the agent has no test switch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent.lifecycle import STEP_OF_STATE, Ev, UpdateRecord
from agent.steps import DeviceSteps


def slow_down(seconds: float) -> None:
    """Make every DeviceSteps step take at least 2 * `seconds`, half before its action and half after."""
    for name in set(STEP_OF_STATE.values()):
        original: Callable[[DeviceSteps, UpdateRecord], Ev] = getattr(DeviceSteps, name)

        def slowed(self: DeviceSteps, record: UpdateRecord, _step: Callable[..., Ev] = original) -> Ev:
            time.sleep(seconds)
            event = _step(self, record)
            time.sleep(seconds)
            return event

        setattr(DeviceSteps, name, slowed)


def start_slowed_agent(config: Path, log: Path, seconds: float) -> subprocess.Popen[bytes]:
    """`edgefleet agent run --config CONFIG` as a subprocess whose every step is slowed by `seconds` twice."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.agent.slowed_agent", str(seconds), "agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")},  # the config is all
        )


if __name__ == "__main__":
    seconds, *args = sys.argv[1:]
    slow_down(float(seconds))
    from edgefleet.cli import main

    sys.argv = ["edgefleet", *args]
    main()
