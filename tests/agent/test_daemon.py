"""The daemon end to end: real broker, real TUF repository over HTTP, real runtimes, real files."""

from __future__ import annotations

import itertools
import stat
from pathlib import Path

import numpy as np
import pytest

from protocol.messages import CommandKind
from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer, desired_state, wait_for
from tests.agent.hubstub import HubStub

pytestmark = pytest.mark.integration


def publish_version(hub: HubStub, tmp_path: Path, version: int, **kw: object) -> str:
    art = onnx_linear(tmp_path / f"lin_v{version}.onnx", seed=version, poison=kw.pop("poison", None))  # type: ignore[arg-type]
    manifest = make_manifest(art, name="demo", version=version, **kw)  # type: ignore[arg-type]
    return hub.publish(manifest, art)


def committed(observer: Observer, version: int) -> bool:
    return any(e["version"] == version for e in observer.events("committed"))


def test_enroll_install_update_and_report(tmp_path: Path, hub: HubStub, observer: Observer, make_agent) -> None:
    agent = make_agent()
    identity = tmp_path / "device" / "identity.json"
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    wait_for(lambda: agent.mqtt.connected.is_set(), what="mqtt connect")
    t1 = publish_version(hub, tmp_path, 1)
    observer.desire("dev-1", 1, [("demo", 1, t1, False)])
    wait_for(lambda: committed(observer, 1), what="v1 committed")
    served = agent.serving.get("demo")
    assert served is not None and served.version == 1
    assert served.model.predict({"x": np.ones((2, 4), np.float32)})["y"].shape == (2, 3)
    # the runtime runs with the profile's thread count (x86_gateway: 2)
    options = served.model.runtime._session.get_session_options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == agent.profile.threads == 2
    t2 = publish_version(hub, tmp_path, 2)
    observer.desire("dev-1", 2, [("demo", 2, t2, False)])
    wait_for(lambda: committed(observer, 2), what="v2 committed")
    assert (agent.store.slot_version("demo", "active"), agent.store.slot_version("demo", "previous")) == (2, 1)
    kinds = [e["kind"] for e in observer.events() if e.get("version") == 2]
    assert kinds == [
        "download_started",
        "downloaded",
        "verified",
        "staged",
        "activated",
        "self_test_passed",
        "committed",
    ]
    seqs = [e["seq"] for e in observer.events()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    reported = wait_for(lambda: (r := observer.last_reported()) and r["applied_generation"] == 2 and r, what="report")
    model = reported["models"][0]
    assert (model["active_version"], model["previous_version"], model["state"]) == (2, 1, "committed")
    assert any(p["status"] == "online" for p in observer.payloads_status())
    assert any("bytes=" not in r and "/tuf/targets/" in r for r in hub.requests)


def test_manual_rollback_command(tmp_path: Path, hub: HubStub, observer: Observer, make_agent) -> None:
    agent = make_agent(retry_failed_after_s=0.2)  # the idle retry pass runs every 0.2 s
    t1, t2 = publish_version(hub, tmp_path, 1), publish_version(hub, tmp_path, 2)
    observer.desire("dev-1", 1, [("demo", 1, t1, False)])
    wait_for(lambda: committed(observer, 1), what="v1")
    observer.desire("dev-1", 2, [("demo", 2, t2, False)])
    wait_for(lambda: committed(observer, 2), what="v2")
    observer.command("dev-1", CommandKind.ROLLBACK, "demo")
    wait_for(lambda: observer.events("rolled_back"), what="rolled back")
    assert agent.store.slot_version("demo", "active") == 1
    assert agent.serving.get("demo").version == 1  # type: ignore[union-attr]
    rolled = observer.events("rolled_back")[-1]
    assert rolled["version"] == 1 and "manual rollback" in rolled["reason"]
    wait_for(lambda: agent.lifecycle.load("demo").state == "rolled_back", what="state persisted")
    # It stays rolled back: through idle retry passes and the same desired state sent again ...
    observer.desire("dev-1", 2, [("demo", 2, t2, False)])
    reconciled = agent.reconciles
    wait_for(lambda: agent.reconciles >= reconciled + 5, what="more reconcile passes")
    assert agent.store.slot_version("demo", "active") == 1
    assert [e["version"] for e in observer.events("committed")] == [1, 2]
    # ... until the hub publishes a new generation that wants v2 again.
    observer.desire("dev-1", 3, [("demo", 2, t2, False)])
    wait_for(lambda: [e["version"] for e in observer.events("committed")] == [1, 2, 2], what="v2 again")
    assert agent.store.slot_version("demo", "active") == 2


def test_update_through_a_network_that_keeps_dropping(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    from tests.agent.proxy import CuttingProxy

    proxy = CuttingProxy(hub.port, cut_after=60_000)
    hub.public_url = f"http://127.0.0.1:{proxy.port}"
    try:
        agent = make_agent()
        art = onnx_linear(tmp_path / "wide.onnx", n_in=256, n_out=256, seed=1)
        observer.desire("dev-1", 1, [("demo", 1, hub.publish(make_manifest(art, name="demo", version=1), art), False)])
        wait_for(lambda: committed(observer, 1), timeout=60, what="committed through a flaky network")
    finally:
        proxy.close()
    assert proxy.cuts >= 3
    ranges = [r for r in hub.requests if "/tuf/targets/" in r and "bytes=" in r]
    assert len(ranges) >= 3
    assert agent.store.slot_version("demo", "active") == 1


def test_bad_enrollment_token_is_one_readable_line(tmp_path: Path, hub: HubStub, unique_root: str) -> None:
    from click.testing import CliRunner

    from edgefleet.cli import cli
    from tests.agent.procs import write_config

    config = write_config(
        tmp_path / "agent.toml", tmp_path / "device", hub, unique_root, enrollment_token="wrong-token"
    )
    res = CliRunner().invoke(cli, ["agent", "run", "--config", str(config)])
    assert res.exit_code == 1
    assert res.output.strip().startswith("Error: enrollment refused: HTTP 401")
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "device" / "identity.json").exists()
    res = CliRunner().invoke(cli, ["agent", "run", "--config", str(tmp_path / "nope.toml")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_hub_unreachable_then_back_is_retried_with_backoff(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    """While the hub answers 503, the update's metadata request is tried exactly `retry_attempts` times, the
    pauses between tries growing as full-jitter exponential backoff does (each drawn from [0, min(max, base *
    2^(k-1))]); then the update fails, and the idle retry pass commits it once the hub is back.

    Measured on the wire (arrival times at a real HTTP server), not from the agent's internals. With full jitter
    a single pause may be near zero, so growth is asserted on averages: the mean pause once the backoff is
    capped (8 draws from [0, 0.32 s]) is 1.5 times the mean of the first three (draws from [0, 0.01..0.04 s]) or
    more. A correct agent misses that with odds below 1e-5; a constant pause, or none, fails it.
    """
    from tests.agent.gatedhub import GatedHub

    attempts, base, cap, idle_retry = 14, 0.01, 0.32, 1.0
    capped_from = 6  # the first pause whose bound base * 2^(k-1) reaches the cap
    gate = GatedHub(hub, down=True).start()
    hub.public_url = gate.url  # enrollment tells the device to fetch updates from the gate
    try:
        target = publish_version(hub, tmp_path, 1)
        agent = make_agent(retry_failed_after_s=idle_retry, retry_attempts=attempts, retry_base_s=base,
                           retry_max_s=cap, retry_window_s=0.0)  # fmt: skip
        wait_for(lambda: agent.mqtt.connected.is_set(), what="connected")
        observer.desire("dev-1", 1, [("demo", 1, target, False)])
        failed = wait_for(lambda: observer.events("failed"), what="download failure reported")[-1]
        assert failed["reason"].startswith("DownloadError") and agent.store.slot_version("demo", "active") is None
        assert f"after {attempts} attempts" in failed["reason"], failed["reason"]
        tries = gate.refused()
        gate.down = False
        wait_for(lambda: committed(observer, 1), what="retried and committed once the hub is back")
    finally:
        gate.stop()

    assert len(tries) == attempts, [(round(t.at, 3), t.path) for t in tries]
    assert all(t.path.startswith("/tuf/metadata/") for t in tries)  # each try: the metadata refresh's first request
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    bounds = [min(cap, base * 2 ** (k - 1)) for k in range(1, attempts)]
    shown = [f"{g:.3f}<={b:.2f}" for g, b in zip(gaps, bounds, strict=True)]
    # Never longer than the backoff's bound (plus the time a refused request takes): the cap holds.
    assert all(g <= b + 0.2 for g, b in zip(gaps, bounds, strict=True)), shown
    early, late = gaps[:3], gaps[capped_from - 1 :]
    assert len(late) == 8
    assert sum(late) / len(late) > 1.5 * sum(early) / len(early), shown
    # The failed update is not retried at once: the next request is the idle retry pass, once the hub is back.
    after = next(a for a in gate.arrivals if not a.refused)
    assert after.at - tries[-1].at >= idle_retry - 0.05, (after, tries[-1])


def test_an_update_waiting_for_the_hub_says_so_and_commits_once_it_is_back(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    # Within `retry_window_s` an unreachable hub is not a failure: the model reports why it waits (reported
    # state and a counter), and the update commits when the hub returns, with that reason gone.
    from tests.support.broker import wait_port

    target = publish_version(hub, tmp_path, 1)
    agent = make_agent(retry_window_s=600.0, retry_attempts=50, retry_max_s=0.5)
    wait_for(lambda: agent.mqtt.connected.is_set(), what="connected")
    hub.stop()
    wait_for(lambda: _port_closed(hub.port), what="hub down")
    observer.desire("dev-1", 1, [("demo", 1, target, False)])

    def waiting() -> dict[str, object] | None:
        models = (observer.last_reported() or {}).get("models", [])
        return next((m for m in models if (m.get("reason") or "").startswith("waiting for the hub: ")), None)

    model = wait_for(waiting, what="the reported reason")
    assert model["state"] == "downloading" and "cannot reach the update metadata" in model["reason"], model
    retries = agent.metrics.registry.get_sample_value("edgefleet_agent_hub_retries_total", {"model": "demo"})
    assert retries is not None and retries >= 1
    hub.start()
    wait_port("127.0.0.1", hub.port)
    wait_for(lambda: committed(observer, 1), what="committed once the hub is back")
    assert observer.events("failed") == [] and observer.events("committed")[-1]["reason"] is None
    wait_for(lambda: [m["reason"] for m in observer.last_reported()["models"]] == [None], what="the reason cleared")


def test_a_hub_that_rejects_the_device_token_refuses_the_update_at_once(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    # Unlike an unreachable hub (retried for `retry_window_s`), a 401 will not heal by waiting: refused at once.
    target = publish_version(hub, tmp_path, 1)
    agent = make_agent(retry_window_s=600.0, retry_attempts=50)
    wait_for(lambda: agent.mqtt.connected.is_set(), what="connected")
    hub.revoked = True
    observer.desire("dev-1", 1, [("demo", 1, target, False)])
    refused = wait_for(lambda: observer.events("refused"), timeout=20, what="the refusal")[-1]
    assert "refused this device's token" in refused["reason"] and "401" in refused["reason"]
    assert observer.events("failed") == [] and agent.store.slot_version("demo", "active") is None


def test_an_update_retrying_an_unreachable_hub_is_superseded_by_a_newer_desired_state(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    # v2 is wanted while the hub cannot be reached (retried for `retry_window_s`); the hub then goes back to v1
    # (say the rollout was aborted). The retry ends at once, and v2 is never installed when the hub returns.
    from protocol.topics import Channel
    from tests.support.broker import wait_port

    t1, t2, t3 = (publish_version(hub, tmp_path, v) for v in (1, 2, 3))
    agent = make_agent(retry_window_s=600.0, retry_attempts=50, retry_max_s=0.5)
    observer.desire("dev-1", 1, [("demo", 1, t1, False)])
    wait_for(lambda: committed(observer, 1), what="v1")
    hub.stop()
    wait_for(lambda: _port_closed(hub.port), what="hub down")
    observer.desire("dev-1", 2, [("demo", 2, t2, False)])
    wait_for(lambda: agent.lifecycle.load("demo").target_version == 2, what="the update to v2 under way")
    # Two desired states in a row (as the broker hands them to the MQTT thread): v3 is already out of date
    # when the worker gets to it, so it is never started; the last one (back to v1) is applied.
    for generation, version, target in ((3, 3, t3), (4, 1, t1)):
        desired = desired_state("dev-1", generation, [("demo", version, target, False)])
        agent._on_message(Channel.DESIRED, desired.to_bytes())
    failed = wait_for(lambda: observer.events("failed"), timeout=15, what="v2 given up")[-1]
    assert failed["version"] == 2
    assert failed["reason"] == "Superseded: desired generation 4 wants demo v1, not v2", failed
    wait_for(lambda: agent.applied_generation == 4, what="generation 4 applied")
    assert [e["version"] for e in observer.events() if e["version"] == 3] == []  # v3 never started
    hub.requests.clear()
    hub.start()
    wait_port("127.0.0.1", hub.port)
    agent.reconcile(retry_failed=True)  # what the idle retry pass does: nothing is left to retry
    record = agent.lifecycle.load("demo")
    assert agent.store.slot_version("demo", "active") == 1 and record.state.value == "failed", record
    assert hub.requests == [] and not committed(observer, 2)


def test_a_download_in_progress_is_superseded_by_a_newer_desired_state(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    # A capped download (a 12 KB artifact at 1 KB/s: ~12 s of throttling) stops once the hub no longer wants it.
    t1 = publish_version(hub, tmp_path, 1)
    t2 = publish_version(hub, tmp_path, 2, poison="slow")
    agent = make_agent(bandwidth_bps=1024)
    observer.desire("dev-1", 1, [("demo", 1, t1, False)])
    wait_for(lambda: committed(observer, 1), what="v1")
    observer.desire("dev-1", 2, [("demo", 2, t2, False)])
    wait_for(lambda: [e for e in observer.events("download_started") if e["version"] == 2], what="v2 downloading")
    observer.desire("dev-1", 3, [("demo", 1, t1, False)])
    failed = wait_for(lambda: observer.events("failed"), timeout=15, what="v2 given up")[-1]
    assert failed["reason"] == "Superseded: desired generation 3 wants demo v1, not v2", failed
    # The download step never finished: what arrived stays as .part (a later want of v2 resumes from it).
    work = tmp_path / "device" / "downloads" / "demo" / "2"
    assert sorted(p.name for p in work.iterdir()) == ["lin_v2.onnx.part", "manifest.json"]
    assert [e["version"] for e in observer.events("downloaded")] == [1]
    assert agent.store.slot_version("demo", "active") == 1


def test_only_a_desired_state_that_changes_the_update_supersedes_it(tmp_path: Path, make_agent) -> None:
    from agent.lifecycle import UpdateRecord
    from protocol.messages import DesiredState

    def desired(generation: int, *models: tuple[str, int, bool]) -> DesiredState:
        return desired_state("dev-1", generation, [(n, v, f"{n}/{v}", r) for n, v, r in models])

    agent = make_agent()
    record = UpdateRecord(name="demo", target_version=2, generation=4)
    assert agent._superseded(record) is None  # nothing received yet
    agent.latest_desired = desired(4, ("demo", 1, False))
    assert agent._superseded(record) is None  # the generation that asked for this update (or an older one)
    agent.latest_desired = desired(5, ("demo", 2, False), ("other", 1, False))
    assert agent._superseded(record) is None  # newer, but still wants demo v2: another model was added
    agent.latest_desired = desired(6, ("demo", 2, True))
    assert agent._superseded(record) == "desired generation 6 wants demo v2 (rollback), not v2"
    agent.latest_desired = desired(7, ("other", 1, False))
    assert agent._superseded(record) == "desired generation 7 no longer has demo"


def _port_closed(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_a_model_dropped_from_the_desired_state_is_uninstalled(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    agent = make_agent()
    t1 = publish_version(hub, tmp_path, 1)
    observer.desire("dev-1", 1, [("demo", 1, t1, False)])
    wait_for(lambda: committed(observer, 1), what="v1 committed")
    models = tmp_path / "device" / "models"
    assert (models / "demo" / "versions" / "1").is_dir()
    observer.desire("dev-1", 2, [])  # e.g. the hub rolled back the model's first rollout
    gone = wait_for(lambda: observer.events("uninstalled"), what="uninstalled")
    assert gone[0]["model"] == "demo" and gone[0]["version"] == 1 and "generation 2" in gone[0]["reason"]
    assert agent.serving.get("demo") is None and agent.store.names() == [] and agent.lifecycle.names() == []
    assert list(models.iterdir()) == []  # the files are gone, no leftovers
    reported = wait_for(lambda: (r := observer.last_reported()) and r["applied_generation"] == 2 and r, what="report")
    assert reported["models"] == []
    from agent.inference import NotServing

    with pytest.raises(NotServing, match="demo"):
        agent.predict("demo", {"x": np.ones((1, 4), np.float32)})
    observer.desire("dev-1", 3, [("demo", 1, t1, False)])  # wanted again later: installed again from scratch
    wait_for(lambda: agent.serving.get("demo") is not None, what="v1 again")
    assert agent.store.slot_version("demo", "active") == 1


def test_an_interrupted_removal_is_finished_at_start(tmp_path: Path) -> None:
    from agent.store import ModelStore

    store = ModelStore(tmp_path / "models")
    (tmp_path / "models" / "demo" / "versions" / "1").mkdir(parents=True)
    (tmp_path / "models" / ".old.removed" / "versions" / "3").mkdir(parents=True)  # a crash mid-removal
    assert store.names() == ["demo"]
    store.clean_leftovers()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["demo"]
    store.remove("demo")
    assert store.names() == [] and list((tmp_path / "models").iterdir()) == []


def test_metadata_and_manifest_requests_survive_a_flapping_link_without_a_failed_update(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    # Every connection may be refused (link down) or cut mid-body, TUF metadata and the manifest included:
    # each failed request is retried with backoff inside the step, so the update commits with no `failed` event.
    from tests.agent.proxy import FlappingProxy

    proxy = FlappingProxy(hub.port, up_s=(0.3, 0.8), down_s=(0.2, 0.6), cut_share=0.5, cut_bytes=(64, 4096), seed=7)
    hub.public_url = proxy.url
    try:
        agent = make_agent(retry_attempts=4, retry_base_s=0.05, retry_max_s=0.5, retry_window_s=600.0)
        wait_for(lambda: agent.mqtt.connected.is_set(), what="connected")
        proxy.start_flapping()
        for version in (1, 2):
            observer.desire("dev-1", version, [("demo", version, publish_version(hub, tmp_path, version), False)])
            wait_for(lambda v=version: committed(observer, v), timeout=90, what=f"v{version} through the flapping link")
    finally:
        proxy.close()
    assert proxy.downs >= 1 and proxy.cuts >= 1, (proxy.downs, proxy.cuts)
    assert observer.events("failed") == [] and agent.store.slot_version("demo", "active") == 2


def test_manual_rollback_mid_update_says_why(tmp_path: Path, hub: HubStub, observer: Observer, make_agent) -> None:
    from agent.lifecycle import State

    agent = make_agent()
    observer.desire("dev-1", 1, [("demo", 1, publish_version(hub, tmp_path, 1), False)])
    wait_for(lambda: committed(observer, 1), what="v1")
    record = agent.lifecycle.load("demo")
    record.state, record.target_version = State.DOWNLOADING, 2  # as if an update to v2 were under way
    agent.lifecycle.save(record)
    agent.manual_rollback("demo", "manual rollback (test)")
    wait_for(lambda: observer.events("failed"), what="the refusal")
    reasons = [e["reason"] for e in observer.events("failed")]
    assert reasons == ["cannot roll back demo: an update to v2 is in downloading; roll back once it is at rest"]
