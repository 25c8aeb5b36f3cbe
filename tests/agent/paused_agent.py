"""`python -m tests.agent.paused_agent STATE@VERSION ARGS...`: the real `edgefleet ARGS...`, except that it
stops at the start of one lifecycle step (the state already persisted) until the test kills it -9.
`crash:STATE@VERSION` instead dies there at once (exit 137, as a runtime that segfaults or the OOM killer).
`pipeline:STATE@VERSION` pauses a pipeline's update instead of a model's (marker in `pipeline-lifecycle/`).

The hook lives here, in the tests, and wraps the agent's step method for that state; the agent's own
code has no test switch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from agent.lifecycle import STEP_OF_STATE, Ev, UpdateRecord
from agent.steps import DeviceSteps
from protocol.messages import LifecycleState as State


def pause_in(state: str, version: int, crash: bool = False, pipeline: bool = False) -> None:
    """Make DeviceSteps (PipelineSteps with `pipeline`) block in `state` for `version`, leaving
    `lifecycle/paused-in-<state>` (`pipeline-lifecycle/...`) as the signal (or, with `crash`, end the process)."""
    from agent.pipeline.updates import PipelineSteps

    name = STEP_OF_STATE[State(state)]
    cls = PipelineSteps if pipeline else DeviceSteps
    folder = "pipeline-lifecycle" if pipeline else "lifecycle"
    original: Callable[[DeviceSteps, UpdateRecord], Ev] = getattr(cls, name)

    def paused(self: DeviceSteps, record: UpdateRecord) -> Ev:
        if record.target_version == version:
            if crash:
                os._exit(137)
            marker = self.settings.data_dir / folder / f"paused-in-{state}"
            marker.write_text(json.dumps({"pid": os.getpid()}))
            while True:
                time.sleep(1)
        return original(self, record)

    setattr(cls, name, paused)


if __name__ == "__main__":
    spec, *args = sys.argv[1:]
    crash = spec.startswith("crash:")
    pipeline = spec.startswith("pipeline:")
    state, version = spec.removeprefix("crash:").removeprefix("pipeline:").split("@")
    pause_in(state, int(version), crash=crash, pipeline=pipeline)
    from edgefleet.cli import main

    sys.argv = ["edgefleet", *args]
    main()
