"""kill -9 the agent in every lifecycle state and mid-download: it restarts consistent and converges."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer, wait_for
from tests.agent.hubstub import HubStub
from tests.agent.ports import listen_port
from tests.agent.procs import assert_one_complete_active, kill9, start_agent, stop, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# state the agent is killed in -> (does v2 pass its self-test?, the version active after restart)
CRASH_TABLE: dict[str, tuple[bool, int]] = {
    "downloading": (True, 2),
    "verifying": (True, 2),
    "staged": (True, 2),
    "activating": (True, 2),
    "self_test": (True, 2),
    "probation": (True, 2),
    "rolling_back": (False, 1),
}
# tests/agent/slowed_agent.py: every step waits this long before and after its action, so each state lasts
# long enough to be hit by a kill at a chosen instant.
SLOW_S = 0.03


def publish(hub: HubStub, tmp_path: Path, version: int, good: bool = True, n_in: int = 4) -> str:
    art = onnx_linear(
        tmp_path / f"lin_v{version}.onnx", n_in=n_in, n_out=n_in, seed=version, poison=None if good else "nan"
    )
    ref = None if good else onnx_linear(tmp_path / f"ref_v{version}.onnx", n_in=n_in, n_out=n_in, seed=version)
    return hub.publish(make_manifest(art, name="demo", version=version, golden_from=ref), art)


def serving(port: int) -> dict[str, int] | None:
    """What the daemon's local API says it serves (None while it does not answer)."""
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["serving"]
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("state", list(CRASH_TABLE))
def test_kill9_in_state_then_converge(
    state: str, tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:
    v2_good, expected_active = CRASH_TABLE[state]
    data = tmp_path / "device"
    config = write_config(tmp_path / "agent.toml", data, hub, unique_root)
    log = tmp_path / "agent.log"
    proc = start_agent(config, log, pause=f"{state}@2")
    try:
        observer.desire("dev-1", 1, [("demo", 1, publish(hub, tmp_path, 1), False)])
        wait_for(lambda: observer.events("committed"), timeout=60, what=f"v1 committed ({log.read_text()[-500:]})")
        observer.desire("dev-1", 2, [("demo", 2, publish(hub, tmp_path, 2, good=v2_good), False)])
        wait_for(lambda: (data / "lifecycle" / f"paused-in-{state}").exists(), timeout=60, what=f"paused in {state}")
        kill9(proc)
        (data / "lifecycle" / f"paused-in-{state}").unlink()
        assert assert_one_complete_active(data / "models", "demo") in (1, 2)
        proc = start_agent(config, log)
        final = "committed" if v2_good else "rolled_back"
        wait_for(
            lambda: (
                any(e.get("version") == expected_active for e in observer.events(final) if e["kind"] == final)
                and (data / "lifecycle" / "demo.json").read_text().count(f'"state": "{final}"')
            ),
            timeout=60,
            what=f"converged to {final}",
        )
        assert assert_one_complete_active(data / "models", "demo") == expected_active
        stop(proc)
    finally:
        stop(proc)


def test_kill9_mid_download_at_seeded_offsets_resumes(
    tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:
    data = tmp_path / "device"
    config = write_config(tmp_path / "agent.toml", data, hub, unique_root, bandwidth_bps=800_000)
    log = tmp_path / "agent.log"
    target = publish(hub, tmp_path, 1, n_in=512)  # ~1 MB: 16 server chunks of 64 KiB
    length = (tmp_path / "lin_v1.onnx").stat().st_size
    offsets = sorted(random.Random(20261125).sample(range(length // 10, length - length // 10), 5))
    part = data / "downloads" / "demo" / "1" / "lin_v1.onnx.part"
    observer.desire("dev-1", 1, [("demo", 1, target, False)])
    for offset in offsets:
        goal = max(offset, (part.stat().st_size if part.exists() else 0) + 1)
        if goal >= length - 65536:  # the last chunk would finish the download before the kill
            break
        proc = start_agent(config, log)
        try:
            wait_for(lambda g=goal: part.exists() and part.stat().st_size >= g, timeout=60, what=f"{goal} bytes")
            kill9(proc)
        finally:
            stop(proc)
        assert assert_one_complete_active(data / "models", "demo") is None
    proc = start_agent(config, log)
    try:
        wait_for(lambda: observer.events("committed"), timeout=60, what="committed after resumes")
    finally:
        stop(proc)
    assert assert_one_complete_active(data / "models", "demo") == 1
    resumed = [e["details"]["offset"] for e in observer.events("download_resumed")]
    assert len(resumed) >= 3 and resumed == sorted(resumed)
    for offset in resumed:  # every restart asked the server only for the bytes it did not have
        assert any(f"bytes={offset}-" in r for r in hub.requests), (offset, hub.requests)


def test_restart_mid_self_test_serves_the_tested_version(
    tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:

    port = listen_port()
    data = tmp_path / "device"
    config = write_config(tmp_path / "agent.toml", data, hub, unique_root, api_enabled=True, api_port=port)
    log = tmp_path / "agent.log"
    paused = data / "lifecycle" / "paused-in-self_test"
    proc = start_agent(config, log, pause="self_test@2")
    try:
        observer.desire("dev-1", 1, [("demo", 1, publish(hub, tmp_path, 1), False)])
        wait_for(lambda: observer.events("committed"), timeout=60, what="v1 committed")
        observer.desire("dev-1", 2, [("demo", 2, publish(hub, tmp_path, 2), False)])
        wait_for(paused.exists, timeout=60, what="paused in self_test")
        kill9(proc)
        paused.unlink()
        proc = start_agent(config, log, pause="self_test@2")  # pauses again inside the re-run self-test
        wait_for(paused.exists, timeout=60, what="re-entered self_test")

        assert wait_for(lambda: serving(port), timeout=30, what="local API") == {"demo": 1}  # active is v2, untested
        assert assert_one_complete_active(data / "models", "demo") == 2
        kill9(proc)
        paused.unlink()
        proc = start_agent(config, log)
        wait_for(lambda: any(e["version"] == 2 for e in observer.events("committed")), timeout=60, what="v2")
        wait_for(lambda: serving(port) == {"demo": 2}, timeout=30, what="v2 serving after its self-test")
    finally:
        stop(proc)


@pytest.mark.parametrize("state", ["activating", "self_test"])
def test_restart_mid_first_install_serves_nothing_untested(
    state: str, tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:

    port = listen_port()
    data = tmp_path / "device"
    config = write_config(tmp_path / "agent.toml", data, hub, unique_root, api_enabled=True, api_port=port)
    log = tmp_path / "agent.log"
    paused = data / "lifecycle" / f"paused-in-{state}"

    proc = start_agent(config, log, pause=f"{state}@1")
    try:
        observer.desire("dev-1", 1, [("demo", 1, publish(hub, tmp_path, 1), False)])
        wait_for(paused.exists, timeout=60, what=f"paused in {state}")
        kill9(proc)
        paused.unlink()
        proc = start_agent(config, log, pause="self_test@1")  # pauses inside the resumed self-test
        wait_for(lambda: (data / "lifecycle" / "paused-in-self_test").exists(), timeout=60, what="self_test again")
        wait_for(lambda: serving(port) is not None, timeout=30, what="local API")
        assert serving(port) == {}  # v1 is untested: nothing serves
        kill9(proc)
        (data / "lifecycle" / "paused-in-self_test").unlink()
        proc = start_agent(config, log)
        wait_for(lambda: observer.events("committed"), timeout=60, what="v1 committed")
        wait_for(lambda: serving(port) == {"demo": 1}, timeout=30, what="v1 serving after its self-test")
    finally:
        stop(proc)


def persisted(data: Path) -> tuple[str, int | None] | None:
    """The (state, target version) in the device's lifecycle record of demo (None before there is one)."""
    try:
        record = json.loads((data / "lifecycle" / "demo.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record["state"], record["target_version"]


def entered(data: Path, state: str, version: int, rest: str, timeout: float = 30) -> bool:
    """Poll (finely: a slowed step lasts 2 * SLOW_S) until the record says `state` for `version`; False if the
    update reached `rest` first (it went through `state` between two looks)."""
    deadline = time.monotonic() + timeout
    while (seen := persisted(data)) != (state, version):
        if seen == (rest, version):
            return False
        assert time.monotonic() < deadline, f"v{version} never entered {state} (last seen: {seen})"
        time.sleep(0.005)
    return True


def test_kill9_at_seeded_random_instants_in_every_state(
    tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:
    """Not only at step starts (the table above): one update per state in CRASH_TABLE, each SIGKILLed at a seeded
    random instant once its state is persisted — before, during or after the step's action. Every step of the
    slowed agent lasts at least 2 * SLOW_S (tests/agent/slowed_agent.py), so even activating, a symlink swap,
    is hit; rolling_back is reached by an update whose self-test fails. After every kill the store holds exactly
    one complete, verified active model, and the restarted agent converges with the rollback target kept; the
    kills landed in every state of the table."""
    from tests.agent.slowed_agent import start_slowed_agent

    data = tmp_path / "device"
    config = write_config(tmp_path / "agent.toml", data, hub, unique_root, bandwidth_bps=400_000)
    log = tmp_path / "agent.log"
    rng = random.Random(20261125)
    kills: list[tuple[int, str, str, int | None]] = []  # (version, aimed at, landed in, active after the kill)
    unhit = list(CRASH_TABLE)  # aimed at in this order; a kill that lands elsewhere is aimed again
    proc = start_slowed_agent(config, log, SLOW_S)
    try:
        observer.desire("dev-1", 1, [("demo", 1, publish(hub, tmp_path, 1, n_in=128), False)])
        wait_for(lambda: observer.events("committed"), timeout=60, what="v1")
        active, version, committed_versions = 1, 1, {1}
        while unhit:
            version += 1
            assert version <= 1 + 2 * len(CRASH_TABLE), f"never landed in {unhit}: {kills}"
            aim = unhit[0]
            good, _ = CRASH_TABLE[aim]
            final, expected = ("committed", version) if good else ("rolled_back", active)
            target = publish(hub, tmp_path, version, good=good, n_in=128)
            observer.desire("dev-1", version, [("demo", version, target, False)])
            if entered(data, aim, version, rest=final):
                time.sleep(rng.uniform(0.0, 1.6 * SLOW_S))
                kill9(proc)
                now = assert_one_complete_active(data / "models", "demo")
                assert now in (active, version)
                landed = persisted(data)
                assert landed is not None and landed[1] == version
                kills.append((version, aim, landed[0], now))
                if landed[0] == aim:
                    unhit.pop(0)
                proc = start_slowed_agent(config, log, SLOW_S)
            wait_for(
                lambda v=version, f=final, e=expected: (
                    persisted(data) == (f, v) and assert_one_complete_active(data / "models", "demo") == e
                ),
                timeout=60,
                what=f"v{version} {final} after kills {kills} ({log.read_text()[-400:]})",
            )
            if good:  # what a later rollback returns to survived the kill (e.g. after activating's swap, replayed)
                previous = (data / "models" / "demo" / "previous").resolve().name
                assert previous == str(active), (previous, kills)
                committed_versions.add(version)
            active = expected
    finally:
        stop(proc)
    assert set(CRASH_TABLE) <= {landed for _, _, landed, _ in kills}, kills
    assert {e["version"] for e in observer.events("committed")} == committed_versions


def test_a_step_that_kills_the_agent_every_time_is_abandoned(
    tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:
    """The loop guard through the real process: v2's self-test ends the process every time (a runtime that
    segfaults on it); restarted like systemd's Restart=always, the agent gives v2 up after 3 entries, rolls
    back to v1 and says why — instead of a crash loop."""
    from agent.lifecycle import MAX_STATE_ENTRIES

    data = tmp_path / "device"
    config = write_config(tmp_path / "agent.toml", data, hub, unique_root)
    log = tmp_path / "agent.log"
    proc = start_agent(config, log)
    try:
        observer.desire("dev-1", 1, [("demo", 1, publish(hub, tmp_path, 1), False)])
        wait_for(lambda: observer.events("committed"), timeout=60, what="v1")
        stop(proc)
        proc = start_agent(config, log, pause="crash:self_test@2")
        observer.desire("dev-1", 2, [("demo", 2, publish(hub, tmp_path, 2), False)])
        deaths, deadline = 0, time.monotonic() + 120
        while not observer.events("rolled_back"):
            assert time.monotonic() < deadline, f"no rollback after {deaths} deaths: {log.read_text()[-500:]}"
            if proc.poll() is not None:  # died in the self-test: start it again, as systemd would
                assert proc.returncode == 137
                deaths += 1
                assert deaths <= MAX_STATE_ENTRIES, "the loop guard did not stop the crash loop"
                proc = start_agent(config, log, pause="crash:self_test@2")
            time.sleep(0.1)
        assert deaths == MAX_STATE_ENTRIES
        rolled = observer.events("rolled_back")[-1]
        assert rolled["version"] == 1
        assert f"self_test started {MAX_STATE_ENTRIES} times without finishing" in rolled["reason"]
        assert assert_one_complete_active(data / "models", "demo") == 1
        assert proc.poll() is None  # and the agent now stays up
    finally:
        stop(proc)
