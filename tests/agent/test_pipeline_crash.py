"""kill -9 the agent in every lifecycle state of a pipeline update: the old stage set or the new one serves
after the restart, never a mix, and the update converges (the model kill table of test_crash.py, for a
pipeline whose two stages run on two runtimes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.harness import Observer, wait_for
from tests.agent.hubstub import HubStub
from tests.agent.pipelines import PROFILE, desire, publish_pipeline
from tests.agent.ports import listen_port
from tests.agent.procs import kill9, start_agent, stop, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# state the agent is killed in -> (does v2 pass its self-test?, the version active once it converged)
CRASH_TABLE: dict[str, tuple[bool, int]] = {
    "downloading": (True, 2),
    "verifying": (True, 2),
    "staged": (True, 2),
    "activating": (True, 2),
    "self_test": (True, 2),
    "probation": (True, 2),
    "rolling_back": (False, 1),
}


def complete_active(data: Path) -> int | None:
    """The store invariant: `active` is absent, or a version directory whose pipeline manifest pins exactly the
    stage models beside it, each artifact matching its signed manifest. Returns that version."""
    link = data / "pipelines" / "mixed" / "active"
    if not link.is_symlink():
        return None
    version_dir = link.resolve()
    pipeline = json.loads((version_dir / "pipeline.json").read_text())
    for stage, ref in pipeline["stages"].items():
        folder = version_dir / "stages" / stage
        manifest = json.loads((folder / "manifest.json").read_text())
        assert (manifest["name"], manifest["version"]) == (ref["model"], ref["version"])
        artifact = folder / manifest["artifact"]["file"]
        assert hashlib.sha256(artifact.read_bytes()).hexdigest() == manifest["artifact"]["sha256"]
    return int(pipeline["spec"]["version"])


def served_stages(port: int) -> dict[str, Any] | None:
    """What the daemon serves now, from one read of one served object: {"version": pipeline version, "stages":
    {stage: model version}} ({} when nothing serves; None while the API does not answer)."""
    try:
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/pipelines", timeout=2).json()["pipelines"]
    except httpx.HTTPError:
        return None
    view = next((p for p in listed if p["name"] == "mixed" and "stages" in p), None)
    if view is None:
        return {}
    return {"version": view["serving_version"], "stages": {k: v["version"] for k, v in view["stages"].items()}}


@pytest.mark.parametrize("state", list(CRASH_TABLE))
def test_kill9_in_each_pipeline_state_serves_one_whole_set_then_converges(
    state: str,
    tmp_path: Path,
    hub: HubStub,
    observer: Observer,
    unique_root: str,
    tflite_paths: dict[str, Path],
) -> None:
    v2_good, expected = CRASH_TABLE[state]
    port = listen_port()
    data = tmp_path / "device"
    config = write_config(
        tmp_path / "agent.toml", data, hub, unique_root, profile=PROFILE, api_enabled=True, api_port=port
    )
    log = tmp_path / "agent.log"
    t1, _ = publish_pipeline(hub, tmp_path, tflite_paths["float"], 1)
    t2, _ = publish_pipeline(hub, tmp_path, tflite_paths["float"], 2, broken_head=not v2_good)
    marker = data / "pipeline-lifecycle" / f"paused-in-{state}"
    proc = start_agent(config, log, pause=f"pipeline:{state}@2")
    try:
        desire(observer, 1, [(1, t1)])
        v1 = {"version": 1, "stages": {"embed": 1, "head": 1}}
        wait_for(
            lambda: complete_active(data) == 1 and served_stages(port) == v1,
            timeout=60,
            what=f"v1 serving ({log.read_text()[-500:]})",
        )
        desire(observer, 2, [(2, t2)])
        wait_for(marker.exists, timeout=60, what=f"paused in {state} ({log.read_text()[-500:]})")
        kill9(proc)
        marker.unlink()
        assert complete_active(data) in (1, 2)
        proc = start_agent(config, log)
        # Right after the restart and until it converges: one whole set serves, v1's or v2's.
        wait_for(lambda: served_stages(port) is not None, timeout=30, what="local API")
        for _ in range(20):
            now = served_stages(port)
            assert now in (
                None,
                {},
                {"version": 1, "stages": {"embed": 1, "head": 1}},
                {"version": 2, "stages": {"embed": 2, "head": 2}},
            ), now
        final = "committed" if v2_good else "rolled_back"
        wait_for(
            lambda: (
                (data / "pipeline-lifecycle" / "mixed.json").read_text().count(f'"state": "{final}"')
                and served_stages(port) == {"version": expected, "stages": {"embed": expected, "head": expected}}
            ),
            timeout=60,
            what=f"converged to {final} v{expected} ({log.read_text()[-500:]})",
        )
        assert complete_active(data) == expected
        assert observer.events_when(final, lambda e: e.get("pipeline") == "mixed" and e["version"] == expected)
    finally:
        stop(proc)
