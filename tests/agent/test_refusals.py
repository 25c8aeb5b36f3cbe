"""Verification refusals and self-test failures: reported with a reason, the running model keeps serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.daemon import Agent
from hub.tuf_repo import TufRepository
from protocol.http import artifact_target
from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer, agent_settings, wait_for
from tests.agent.hubstub import HubStub

pytestmark = pytest.mark.integration


def publish(hub: HubStub, tmp_path: Path, version: int, poison: str | None = None) -> str:
    art = onnx_linear(tmp_path / f"lin_v{version}.onnx", seed=version, poison=poison)
    golden_from = onnx_linear(tmp_path / f"ref_v{version}.onnx", seed=version) if poison else None
    return hub.publish(make_manifest(art, name="demo", version=version, golden_from=golden_from), art)


@pytest.fixture
def running_v1(tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str) -> Iterator[Agent]:
    agent = Agent(agent_settings(tmp_path / "device", hub, unique_root))
    agent.start()
    observer.desire("dev-1", 1, [("demo", 1, publish(hub, tmp_path, 1), False)])
    wait_for(lambda: observer.events("committed"), what="v1 committed")
    yield agent
    agent.stop()


def _artifact_file(hub: HubStub, version: int) -> Path:
    return hub.repo.target_file(artifact_target("demo", version, "x86_gateway", f"lin_v{version}.onnx"))


def flip_byte(hub: HubStub, tmp_path: Path) -> tuple[str, int, bool]:
    target = publish(hub, tmp_path, 2)
    path = _artifact_file(hub, 2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return target, 2, False


def longer(hub: HubStub, tmp_path: Path) -> tuple[str, int, bool]:
    target = publish(hub, tmp_path, 2)
    path = _artifact_file(hub, 2)
    path.write_bytes(path.read_bytes() + b"extra bytes")
    return target, 2, False


def shorter(hub: HubStub, tmp_path: Path) -> tuple[str, int, bool]:
    target = publish(hub, tmp_path, 2)
    path = _artifact_file(hub, 2)
    path.write_bytes(path.read_bytes()[:-10])
    return target, 2, False


def expired(hub: HubStub, tmp_path: Path) -> tuple[str, int, bool]:
    target = publish(hub, tmp_path, 2)
    hub.repo.refresh_timestamp(expires=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1))
    return target, 2, False


def wrong_key(hub: HubStub, tmp_path: Path) -> tuple[str, int, bool]:
    impostor = TufRepository.create(tmp_path / "impostor")
    art = onnx_linear(tmp_path / "lin_v2.onnx", seed=2)
    stub = HubStub(impostor, mqtt_port=hub.mqtt_port)
    target = stub.publish(make_manifest(art, name="demo", version=2), art)
    hub.repo.restore_metadata(impostor.metadata_dir)
    import shutil

    shutil.copytree(impostor.targets_dir, hub.repo.targets_dir, dirs_exist_ok=True)
    return target, 2, False


def other_profile(hub: HubStub, tmp_path: Path) -> tuple[str, int, bool]:
    art = onnx_linear(tmp_path / "lin_v2.onnx", seed=2)
    manifest = make_manifest(art, name="demo", version=2, profile="jetson_orin_nano")
    return hub.publish(manifest, art, target_profile="x86_gateway"), 2, False


CASES: dict[str, tuple[Callable[[HubStub, Path], tuple[str, int, bool]], str]] = {
    "tampered": (flip_byte, "DigestMismatch"),
    "longer": (longer, "more than the signed length"),
    "shorter": (shorter, "the signed length is"),
    "expired": (expired, "ExpiredMetadataError"),
    "wrong_key": (wrong_key, "MetadataRefused"),
    "other_profile": (other_profile, "ProfileMismatch"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_and_v1_keeps_serving(
    case: str, tmp_path: Path, hub: HubStub, observer: Observer, running_v1: Agent
) -> None:
    prepare, reason = CASES[case]
    target, version, rollback = prepare(hub, tmp_path)
    observer.desire("dev-1", 2, [("demo", version, target, rollback)])
    refused = wait_for(lambda: observer.events("refused"), what="refusal event")[-1]
    assert reason in refused["reason"] and refused["version"] == version
    assert running_v1.store.slot_version("demo", "active") == 1
    served = running_v1.serving.get("demo")
    assert served is not None and served.version == 1
    assert served.model.predict({"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 3)
    assert not (tmp_path / "device" / "models" / "demo" / "versions" / "2").exists()
    report = wait_for(lambda: (r := observer.last_reported()) and r["models"][0]["state"] == "failed" and r)
    assert reason in report["models"][0]["reason"]


def test_older_version_refused_unless_explicit_rollback(
    tmp_path: Path, hub: HubStub, observer: Observer, running_v1: Agent
) -> None:
    t0 = publish(hub, tmp_path, 2)
    observer.desire("dev-1", 2, [("demo", 2, t0, False)])
    wait_for(lambda: any(e["version"] == 2 for e in observer.events("committed")), what="v2")
    t1 = "models/demo/1/x86_gateway/manifest.json"
    observer.desire("dev-1", 3, [("demo", 1, t1, False)])
    refused = wait_for(lambda: observer.events("refused"), what="older refused")[-1]
    assert "OlderVersion" in refused["reason"]
    assert running_v1.store.slot_version("demo", "active") == 2
    observer.desire("dev-1", 4, [("demo", 1, t1, True)])
    wait_for(lambda: running_v1.store.slot_version("demo", "active") == 1, what="explicit rollback installs v1")
    wait_for(lambda: running_v1.serving.get("demo").version == 1)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("poison", "reason"),
    [("nan", "NaN or inf"), ("slow", "too slow"), ("corrupt", "will not load"), ("wrong", "differs by")],
)
def test_self_test_failure_rolls_back(
    poison: str, reason: str, tmp_path: Path, hub: HubStub, observer: Observer, running_v1: Agent
) -> None:
    if poison == "corrupt":
        bad = tmp_path / "lin_v2.onnx"
        good = onnx_linear(tmp_path / "good.onnx", seed=2)
        manifest = make_manifest(good, name="demo", version=2).model_copy()
        bad.write_bytes(b"\x08\x09garbage that onnxruntime cannot parse" * 10)
        from protocol.manifest import ArtifactRef
        from tests.agent.builders import sha256_file

        manifest = manifest.model_copy(
            update={"artifact": ArtifactRef(file=bad.name, sha256=sha256_file(bad), size=bad.stat().st_size)}
        )
        target = hub.publish(manifest, bad)
    elif poison == "wrong":
        art = onnx_linear(tmp_path / "lin_v2.onnx", seed=2)
        target = hub.publish(
            make_manifest(art, name="demo", version=2, golden_from=onnx_linear(tmp_path / "o.onnx", seed=9)), art
        )
    elif poison == "slow":
        running_v1.profile = running_v1.profile.model_copy(
            update={"budgets": running_v1.profile.budgets.model_copy(update={"latency_ms": 1e-6})}
        )
        running_v1.steps.profile = running_v1.profile
        target = publish(hub, tmp_path, 2)
    else:
        target = publish(hub, tmp_path, 2, poison=poison)
    observer.desire("dev-1", 2, [("demo", 2, target, False)])
    rolled = wait_for(lambda: observer.events("rolled_back"), what="rollback")[-1]
    failed = observer.events("self_test_failed")[-1]
    assert reason in failed["reason"] and reason in rolled["reason"]
    assert rolled["version"] == 1
    assert running_v1.store.slot_version("demo", "active") == 1
    assert running_v1.serving.get("demo").version == 1  # type: ignore[union-attr]
    assert not (tmp_path / "device" / "models" / "demo" / "versions" / "2").exists()
    # The same desired generation is not retried in a loop.
    assert len(observer.events("rolled_back")) == 1


def test_an_onnx_update_on_a_device_without_onnxruntime_is_refused_before_download(
    tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `pip install edgefleet[agent]` has LiteRT only; here onnxruntime is made unimportable in this process
    # (sys.modules[name] = None is what Python does for a module that cannot be imported).
    import sys

    target = publish(hub, tmp_path, 1)  # (building the manifest runs the model: before onnxruntime goes away)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    agent = Agent(agent_settings(tmp_path / "device", hub, unique_root))
    agent.start()
    try:
        assert agent.health_view()["runtimes"] == {"litert": True, "onnxruntime": False}
        observer.desire("dev-1", 1, [("demo", 1, target, False)])
        refused = wait_for(lambda: observer.events("refused"), what="refusal event")[-1]
        assert refused["reason"].startswith("RuntimeMissing: onnx artifacts need onnxruntime")
        assert "edgefleet[agent-onnx]" in refused["reason"]
        assert not any("lin_v1.onnx" in r for r in hub.requests)  # the artifact was never downloaded
        assert agent.store.names() == []
    finally:
        agent.stop()
