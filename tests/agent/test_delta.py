"""Delta updates on a real device: a signed patch instead of the full artifact, verified as the full artifact.

Real components: the stub hub's TUF repository over HTTP with patches made by the hub's own code (hub/deltas.py),
the agent daemon in process (or as a subprocess to kill -9), real ONNX models and files.

`python -m tests.agent.test_delta VERSION ARGS...` runs the real `edgefleet ARGS...` except that applying a patch
to VERSION leaves half the rebuilt artifact written and waits there to be killed (the hook is here, in the tests;
the agent has no test switch).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from agent import delta
from agent.errors import RefusedUpdate
from hub import deltas
from hub.deltas import zstd  # compression.zstd from Python 3.14, backports.zstd before
from protocol.http import artifact_target
from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer, wait_for
from tests.agent.hubstub import HubStub
from tests.agent.procs import assert_one_complete_active, kill9, stop, write_config

pytestmark = pytest.mark.integration

WIDTH = 256  # a 256 x 256 linear model: ~260 KB of ONNX


def finetuned(src: Path, dest: Path, seed: int, rows: float = 0.0) -> Path:
    """`src` with a retrained bias and, with `rows`, that share of its weight rows retrained too; every other
    tensor keeps its bytes (what a head fine-tune looks like to a patch)."""
    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init).copy()
        if init.name == "B":
            values = rng.normal(size=values.shape).astype(np.float32)
        elif init.name == "W" and rows:
            k = int(len(values) * rows)
            values[-k:] = rng.normal(size=(k, values.shape[1])).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(dest))
    return dest


def publish(hub: HubStub, version: int, artifact: Path, patch_from: dict[int, Path] | None = None) -> str:
    """Sign a version (manifest + artifact) and, as the hub's push does, a patch from each earlier artifact."""
    target = hub.publish(make_manifest(artifact, name="demo", version=version), artifact)
    full = artifact_target("demo", version, "x86_gateway", artifact.name)
    patches: dict[str, bytes | Path] = {}
    for old_version, old in (patch_from or {}).items():
        patch = deltas.patch_for(artifact=full, new=artifact.read_bytes(), from_version=old_version,
                                 old=old.read_bytes())  # fmt: skip
        assert patch is not None, "the test's versions must differ little enough for a patch"
        patches[patch.target] = patch.data
    if patches:
        hub.repo.add_targets(patches)
    return target


def signed(hub: HubStub, target: str) -> Any:
    return hub.repo.targets()[target]


def fetched(hub: HubStub, target: str) -> list[str]:
    """The stub hub's log lines of GETs for `target`'s hash-named file (with their Range header, if any)."""
    info = signed(hub, target)
    directory, _, name = target.rpartition("/")
    return [r for r in hub.requests if r.startswith(f"GET /tuf/targets/{directory}/{info.hashes['sha256']}.{name} ")]


def downloaded_delta(observer: Observer, version: int) -> dict[str, Any]:
    event = next(e for e in observer.events("downloaded") if e["version"] == version)
    details: dict[str, Any] = event["details"]["delta"]
    return details


def committed(observer: Observer, version: int) -> bool:
    return any(e["version"] == version for e in observer.events("committed"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_device_on_v1_updates_to_v2_through_the_patch(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    v1 = onnx_linear(tmp_path / "lin_v1.onnx", n_in=WIDTH, n_out=WIDTH, seed=1)
    v2 = finetuned(v1, tmp_path / "lin_v2.onnx", seed=2)
    agent = make_agent()
    observer.desire("dev-1", 1, [("demo", 1, publish(hub, 1, v1), False)])
    wait_for(lambda: committed(observer, 1), what="v1 committed")
    observer.desire("dev-1", 2, [("demo", 2, publish(hub, 2, v2, {1: v1}), False)])
    wait_for(lambda: committed(observer, 2), what="v2 committed")

    full = artifact_target("demo", 2, "x86_gateway", v2.name)
    patch = delta.patch_target(full, 1)
    assert fetched(hub, full) == []  # not one byte of the full artifact
    assert len(fetched(hub, patch)) == 1
    assert signed(hub, patch).length < 0.05 * signed(hub, full).length
    details = downloaded_delta(observer, 2)
    assert details["ok"] is True and details["from"] == 1 and details["algorithm"] == "zstd"
    assert (details["bytes"], details["full_bytes"]) == (signed(hub, patch).length, signed(hub, full).length)
    started = [e["details"] for e in observer.events("download_started") if e["version"] == 2]
    assert started == [{"offset": 0, "length": details["bytes"], "delta_from": 1}]
    assert sha256(agent.store.artifact("demo", 2)) == sha256(v2) == signed(hub, full).hashes["sha256"]
    assert agent.serving.get("demo").version == 2  # type: ignore[union-attr]
    assert not (tmp_path / "device" / "downloads" / "demo" / "2").exists()  # patch and download dir cleaned up


def test_a_patch_resumes_with_range_through_a_network_that_keeps_dropping(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    from tests.agent.proxy import CuttingProxy

    v1 = onnx_linear(tmp_path / "lin_v1.onnx", n_in=WIDTH, n_out=WIDTH, seed=1)
    v2 = finetuned(v1, tmp_path / "lin_v2.onnx", seed=2, rows=0.6)  # a patch of ~150 KB
    t1, t2 = publish(hub, 1, v1), publish(hub, 2, v2, {1: v1})
    patch = delta.patch_target(artifact_target("demo", 2, "x86_gateway", v2.name), 1)
    assert signed(hub, patch).length > 120_000
    proxy = CuttingProxy(hub.port, cut_after=40_000)  # above the manifest (~21 KB), which is fetched whole
    hub.public_url = f"http://127.0.0.1:{proxy.port}"
    try:
        agent = make_agent(retry_attempts=20)
        observer.desire("dev-1", 1, [("demo", 1, t1, False)])  # v1 in full, through the same cuts
        wait_for(lambda: committed(observer, 1), timeout=60, what="v1 committed")
        observer.desire("dev-1", 2, [("demo", 2, t2, False)])
        wait_for(lambda: committed(observer, 2), timeout=60, what="v2 committed through a flaky network")
    finally:
        proxy.close()
    ranges = [r for r in fetched(hub, patch) if "bytes=" in r]
    assert len(ranges) >= 2  # the patch came in pieces, each asked from where the last one stopped
    assert downloaded_delta(observer, 2)["ok"] is True
    assert sha256(agent.store.artifact("demo", 2)) == sha256(v2)


def test_a_flipped_byte_in_the_patch_is_refused_and_the_full_artifact_used_while_v1_serves(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    v1 = onnx_linear(tmp_path / "lin_v1.onnx", n_in=WIDTH, n_out=WIDTH, seed=1)
    v2 = finetuned(v1, tmp_path / "lin_v2.onnx", seed=2)
    t1, t2 = publish(hub, 1, v1), publish(hub, 2, v2, {1: v1})
    full = artifact_target("demo", 2, "x86_gateway", v2.name)
    patch = delta.patch_target(full, 1)
    stored = hub.repo.target_file(patch)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    agent = make_agent(bandwidth_bps=200_000)  # the full download takes ~1.3 s: time to watch v1 serve meanwhile
    observer.desire("dev-1", 1, [("demo", 1, t1, False)])
    wait_for(lambda: committed(observer, 1), what="v1 committed")

    samples: list[tuple[str, int | None]] = []  # (lifecycle state of the update, version serving)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            served = agent.serving.get("demo")
            version = served.version if served is not None else None
            samples.append((agent.lifecycle.load("demo").state.value, version))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        observer.desire("dev-1", 2, [("demo", 2, t2, False)])
        wait_for(lambda: committed(observer, 2), timeout=60, what="v2 committed from the full artifact")
    finally:
        done.set()
        watcher.join()
    details = downloaded_delta(observer, 2)
    assert details["ok"] is False and details["from"] == 1
    assert details["reason"].startswith("DigestMismatch: patch refused"), details
    assert len(fetched(hub, full)) >= 1 and sha256(agent.store.artifact("demo", 2)) == sha256(v2)
    before_self_test = {"downloading", "verifying", "staged", "activating"}
    assert sum(state == "downloading" for state, _ in samples) > 10
    assert {version for state, version in samples if state in before_self_test} == {1}  # v1 served throughout
    started = [e["details"] for e in observer.events("download_started") if e["version"] == 2]
    assert [s.get("delta_from") for s in started] == [1, None]  # the patch, then the full artifact


def test_a_signed_patch_that_rebuilds_other_bytes_is_refused(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    """Patches the hub signed but that do not rebuild v2: one made against another base (its frame checksum
    fails), one that decodes to bytes of the right length but another sha256 (the final check catches it)."""
    v1 = onnx_linear(tmp_path / "lin_v1.onnx", n_in=WIDTH, n_out=WIDTH, seed=1)
    v2 = finetuned(v1, tmp_path / "lin_v2.onnx", seed=2)
    v3 = finetuned(v1, tmp_path / "lin_v3.onnx", seed=3)
    other_base = onnx_linear(tmp_path / "other.onnx", n_in=WIDTH, n_out=WIDTH, seed=9)
    t1, t2, t3 = publish(hub, 1, v1), publish(hub, 2, v2), publish(hub, 3, v3)
    wrong = bytearray(v3.read_bytes())
    wrong[-1] ^= 0xFF
    prefix = zstd.ZstdDict(v1.read_bytes(), is_raw=True).as_prefix
    hub.repo.add_targets({
        delta.patch_target(artifact_target("demo", 2, "x86_gateway", v2.name), 1): deltas.make_patch(
            other_base.read_bytes(), v2.read_bytes()),
        delta.patch_target(artifact_target("demo", 3, "x86_gateway", v3.name), 1): zstd.compress(
            bytes(wrong), options={zstd.CompressionParameter.checksum_flag: 0}, zstd_dict=prefix),
    })  # fmt: skip
    agent = make_agent()
    observer.desire("dev-1", 1, [("demo", 1, t1, False)])
    wait_for(lambda: committed(observer, 1), what="v1 committed")
    observer.desire("dev-1", 2, [("demo", 2, t2, False)])
    wait_for(lambda: committed(observer, 2), what="v2 committed")
    reason = downloaded_delta(observer, 2)["reason"]
    assert reason.startswith("RefusedUpdate: the patch does not apply") and "checksum" in reason, reason
    # v2 is active, v1 previous: v3's patch is from v1 (the smallest offered from what the device holds)
    observer.desire("dev-1", 3, [("demo", 3, t3, False)])
    wait_for(lambda: committed(observer, 3), what="v3 committed")
    details = downloaded_delta(observer, 3)
    assert details["from"] == 1 and details["reason"].startswith("DigestMismatch: rebuilt artifact refused")
    assert sha256(agent.store.artifact("demo", 3)) == sha256(v3)


def test_a_device_two_versions_behind_updates_through_the_patch_from_its_version(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent
) -> None:
    v1 = onnx_linear(tmp_path / "lin_v1.onnx", n_in=WIDTH, n_out=WIDTH, seed=1)
    v2 = finetuned(v1, tmp_path / "lin_v2.onnx", seed=2)
    v3 = finetuned(v2, tmp_path / "lin_v3.onnx", seed=3, rows=0.1)
    agent = make_agent()
    observer.desire("dev-1", 1, [("demo", 1, publish(hub, 1, v1), False)])
    wait_for(lambda: committed(observer, 1), what="v1 committed")
    publish(hub, 2, v2, {1: v1})
    observer.desire("dev-1", 3, [("demo", 3, publish(hub, 3, v3, {2: v2, 1: v1}), False)])
    wait_for(lambda: committed(observer, 3), what="v3 committed")
    full = artifact_target("demo", 3, "x86_gateway", v3.name)
    assert downloaded_delta(observer, 3) | {"apply_ms": 0} == {
        "from": 1, "algorithm": "zstd", "bytes": signed(hub, delta.patch_target(full, 1)).length,
        "full_bytes": signed(hub, full).length, "ok": True, "apply_ms": 0,
    }  # fmt: skip
    assert fetched(hub, full) == [] and fetched(hub, delta.patch_target(full, 2)) == []
    assert sha256(agent.store.artifact("demo", 3)) == sha256(v3)


def test_delta_updates_can_be_turned_off(tmp_path: Path, hub: HubStub, observer: Observer, make_agent) -> None:
    v1 = onnx_linear(tmp_path / "lin_v1.onnx", n_in=WIDTH, n_out=WIDTH, seed=1)
    v2 = finetuned(v1, tmp_path / "lin_v2.onnx", seed=2)
    make_agent(delta_updates=False)
    observer.desire("dev-1", 1, [("demo", 1, publish(hub, 1, v1), False)])
    wait_for(lambda: committed(observer, 1), what="v1 committed")
    observer.desire("dev-1", 2, [("demo", 2, publish(hub, 2, v2, {1: v1}), False)])
    wait_for(lambda: committed(observer, 2), what="v2 committed")
    full = artifact_target("demo", 2, "x86_gateway", v2.name)
    assert fetched(hub, delta.patch_target(full, 1)) == [] and len(fetched(hub, full)) == 1
    event = next(e for e in observer.events("downloaded") if e["version"] == 2)
    assert "delta" not in event["details"]


@pytest.mark.slow
def test_kill9_while_applying_leaves_nothing_trusted_and_the_restart_converges(
    tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:
    v1 = onnx_linear(tmp_path / "lin_v1.onnx", n_in=WIDTH, n_out=WIDTH, seed=1)
    v2 = finetuned(v1, tmp_path / "lin_v2.onnx", seed=2)
    data = tmp_path / "device"
    config = write_config(tmp_path / "agent.toml", data, hub, unique_root)
    log = tmp_path / "agent.log"
    marker = data / "lifecycle" / "paused-applying"
    proc = start_pausing_agent(config, log, version=2)
    try:
        observer.desire("dev-1", 1, [("demo", 1, publish(hub, 1, v1), False)])
        wait_for(lambda: committed(observer, 1), timeout=60, what=f"v1 committed ({log.read_text()[-500:]})")
        observer.desire("dev-1", 2, [("demo", 2, publish(hub, 2, v2, {1: v1}), False)])
        wait_for(marker.exists, timeout=60, what=f"paused while applying ({log.read_text()[-500:]})")
        kill9(proc)
        work = data / "downloads" / "demo" / "2"
        half = work / f"{v2.name}.rebuilt.tmp"
        assert 0 < half.stat().st_size < v2.stat().st_size  # half an artifact on disk, under a name nothing reads
        assert not (work / f"{v2.name}.part").exists() and not (work / v2.name).exists()
        assert assert_one_complete_active(data / "models", "demo") == 1
        marker.unlink()
        proc = start_pausing_agent(config, log, version=None)
        wait_for(lambda: committed(observer, 2), timeout=60, what=f"v2 committed ({log.read_text()[-500:]})")
    finally:
        stop(proc)
    assert assert_one_complete_active(data / "models", "demo") == 2  # the artifact active is the verified one
    full = artifact_target("demo", 2, "x86_gateway", v2.name)
    patch = delta.patch_target(full, 1)
    assert fetched(hub, full) == [] and len(fetched(hub, patch)) == 1  # the restart reused the patch on disk
    assert downloaded_delta(observer, 2)["ok"] is True


def test_apply_patch_refuses_what_is_not_exactly_one_frame_of_the_signed_length(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(np.random.default_rng(1).bytes(100_000))
    new.write_bytes(old.read_bytes()[:50_000] + b"changed" + old.read_bytes()[50_000:])
    patch = tmp_path / "patch"
    patch.write_bytes(deltas.make_patch(old.read_bytes(), new.read_bytes()))
    delta.apply_patch(old, patch, tmp_path / "out", new.stat().st_size)
    assert (tmp_path / "out").read_bytes() == new.read_bytes()
    cases = {
        "more than the signed length": (patch.read_bytes(), new.stat().st_size - 1),
        "rebuilds 100007 bytes": (patch.read_bytes(), new.stat().st_size + 1),
        "ends in the middle": (patch.read_bytes()[:-5], new.stat().st_size),
        "data after its frame": (patch.read_bytes() + b"\0", new.stat().st_size),
        "does not apply": (b"not a zstd frame at all", new.stat().st_size),
    }
    for why, (content, length) in cases.items():
        patch.write_bytes(content)
        with pytest.raises(RefusedUpdate, match=why):
            delta.apply_patch(old, patch, tmp_path / "out", length)
    # a window larger than the two files need: refused, not allocated
    streamed = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 30})  # size unknown: 1 GB window
    patch.write_bytes(streamed.compress(new.read_bytes()) + streamed.flush())
    with pytest.raises(RefusedUpdate, match="too much memory"):
        delta.apply_patch(old, patch, tmp_path / "out", new.stat().st_size)


def start_pausing_agent(config: Path, log: Path, version: int | None) -> subprocess.Popen[bytes]:
    """`edgefleet agent run` as a subprocess; with `version`, one that pauses halfway through applying a patch."""
    from tests.agent.procs import _env

    entry = ["-m", "tests.agent.test_delta", str(version)] if version is not None else ["-m", "edgefleet"]
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, *entry, "agent", "run", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=_env())  # fmt: skip


def _pause_while_applying(version: int) -> None:
    """Make agent.delta.apply_patch, for `version`, leave half the rebuilt artifact and wait to be killed."""
    import json
    import os

    original = delta.apply_patch

    def half_then_wait(base: Path, patch: Path, out: Path, length: int) -> None:
        if out.parent.name != str(version):  # downloads/<model>/<version>/<file>.rebuilt.tmp
            original(base, patch, out, length)
            return
        original(base, patch, out, length)
        with out.open("r+b") as f:
            f.truncate(length // 2)
        data_dir = out.parents[3]
        (data_dir / "lifecycle" / "paused-applying").write_text(json.dumps({"pid": os.getpid()}))
        while True:
            time.sleep(1)

    delta.apply_patch = half_then_wait  # type: ignore[assignment]


if __name__ == "__main__":
    version_arg, *args = sys.argv[1:]
    _pause_while_applying(int(version_arg))
    from edgefleet.cli import main

    sys.argv = ["edgefleet", *args]
    main()
