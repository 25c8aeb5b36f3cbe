"""Pipeline push against a real hub (uvicorn, SQLite, real TUF repository) holding real stage models pushed through
the model registry: a LiteRT int8 stage and onnxruntime stages. The hub checks the spec against the registry,
runs it per profile for the golden cases and signs it; the test runs the pipeline itself to check those cases."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from click.testing import CliRunner

import hub.pipelines
from agent.pipeline.golden import case_feeds, check_golden
from agent.pipeline.local import local_runner
from edgefleet.cli import cli
from hub.api.main import create_app
from hub.services import Hub
from hub.settings import HubSettings
from protocol.http import manifest_target
from protocol.layout import MANIFEST_FILE
from protocol.manifest import Manifest, Task
from protocol.pipeline import PipelineManifest, StageIO, check_wiring, pipeline_target, spec_from_toml
from protocol.pipeline_steps import TensorType
from tests.agent.builders import make_manifest, onnx_linear, tflite_models
from tests.hub.conftest import pg_schema_url
from tests.hub.support import tar_gz
from tests.support.broker import free_port

pytestmark = pytest.mark.integration

TOKEN = "pipelines-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

# A LiteRT int8 stage (quantised in and out) feeding an onnxruntime classifier, then an argmax step.
MIXED = """
name = "mixed"
version = {version}

[[inputs]]
name = "features"
shape = [1, 6]
dtype = "float32"

[[stages]]
name = "embed"
model = "dense"
version = 1
inputs = { features = "inputs.features" }

[[stages]]
name = "head"
model = "linear"
version = {head_version}
inputs = { x = "embed.output_0" }

[[steps]]
name = "label"
op = "argmax"
inputs = { x = "head.y" }

[outputs]
label = "label.out"
scores = "head.y"
"""

# Two onnxruntime stages, on two profiles.
CHAIN = """
name = "chain"
version = VERSION
description = "DESCRIPTION"

[[inputs]]
name = "x"
shape = [1, 4]
dtype = "float32"

[[stages]]
name = "a"
model = "scaler"
version = 1
inputs = { x = "inputs.x" }

[[stages]]
name = "b"
model = "B_MODEL"
version = 1
inputs = { x = "a.y" }

[outputs]
y = "b.y"
"""


def mixed(head_version: int = 1, version: int = 1) -> str:
    return MIXED.replace("{head_version}", str(head_version)).replace("{version}", str(version))


def chain(version: int = 1, description: str = "", b_model: str = "linear") -> str:
    return CHAIN.replace("VERSION", str(version)).replace("DESCRIPTION", description).replace("B_MODEL", b_model)


def spec_json(toml: str) -> dict[str, Any]:
    return spec_from_toml(toml).model_dump(mode="json")


@dataclass
class Fleet:
    """The hub under test and the converter-style folders its registry was given (model -> profile -> folder)."""

    url: str
    hub: Hub
    folders: dict[str, dict[str, Path]]

    def post(self, body: dict[str, Any], headers: dict[str, str] = ADMIN) -> httpx.Response:
        return httpx.post(f"{self.url}/api/v1/pipelines", json=body, headers=headers, timeout=60)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=ADMIN, timeout=30)


def write_model(
    out: Path, artifact: Path, name: str, profiles: list[str], task: Task = Task.REGRESSION
) -> dict[str, Path]:
    """A converter output folder: <profile>/manifest.json + the artifact, per profile."""
    folders = {}
    for profile in profiles:
        folder = out / name / profile
        folder.mkdir(parents=True)
        (folder / artifact.name).write_bytes(artifact.read_bytes())
        manifest: Manifest = make_manifest(folder / artifact.name, name=name, version=1, profile=profile)
        (folder / MANIFEST_FILE).write_bytes(manifest.model_copy(update={"task": task}).to_bytes())
        folders[profile] = folder
    return folders


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tflite: dict[str, Path]
) -> Iterator[Fleet]:
    """SQLite with the directory storage; PostgreSQL with its large-object storage (artifacts read as blobs)."""
    root = tmp_path_factory.mktemp("pipelines")
    if request.param == "sqlite":
        yield from _serve(root, tflite, {})
        return
    with contextmanager(pg_schema_url)() as url:  # a throwaway schema, dropped afterwards
        yield from _serve(root, tflite, {"database_url": url, "storage_backend": "postgresql"})


@pytest.fixture(scope="module")
def tflite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tflite_models(tmp_path_factory.mktemp("tflite"))


def _serve(root: Path, tflite: dict[str, Path], backend: dict[str, Any]) -> Iterator[Fleet]:
    models = root / "models"
    models.mkdir()
    folders = {
        "dense": write_model(models, tflite["int8"], "dense", ["raspberry_pi_5"]),
        "linear": write_model(models, onnx_linear(root / "linear.onnx", n_in=3, n_out=4, seed=1), "linear",
                              ["raspberry_pi_5", "x86_gateway", "jetson_orin_nano"], task=Task.CLASSIFICATION),
        "scaler": write_model(models, onnx_linear(root / "scaler.onnx", n_in=4, n_out=3, seed=2), "scaler",
                              ["x86_gateway", "jetson_orin_nano"]),
        "wide": write_model(models, onnx_linear(root / "wide.onnx", n_in=5, n_out=2, seed=3), "wide", ["x86_gateway"]),
        "lonely": write_model(models, onnx_linear(root / "lonely.onnx", n_in=3, n_out=2, seed=4), "lonely",
                              ["esp32_s3"]),
    }  # fmt: skip
    settings = HubSettings(data_dir=root / "data", admin_token=TOKEN, mqtt_enabled=False, **backend)
    app = create_app(settings, background=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.config.port}"
    for name in folders:
        r = httpx.post(f"{url}/api/v1/models", files={"archive": ("m.tar.gz", tar_gz(models / name))}, headers=ADMIN)
        assert r.status_code == 201, r.text
    yield Fleet(url, app.state.hub, folders)
    server.should_exit = True
    thread.join(20)


def test_a_two_stage_pipeline_is_checked_run_and_signed_per_profile(fleet: Fleet) -> None:
    r = fleet.post({"spec": spec_json(mixed())})
    assert r.status_code == 201, r.text
    (row,) = r.json()["stored"]  # dense exists only for raspberry_pi_5: the one profile where every stage is
    target = pipeline_target("mixed", 1, "raspberry_pi_5")
    assert (row["name"], row["version"], row["profile"]) == ("mixed", 1, "raspberry_pi_5")
    assert row["pipeline_target"] == target
    assert row["golden_cases"] == 4 and r.json()["unchanged"] == []
    assert row["stages"] == {
        "embed": {"model": "dense", "version": 1, "manifest_target": manifest_target("dense", 1, "raspberry_pi_5")},
        "head": {"model": "linear", "version": 1, "manifest_target": manifest_target("linear", 1, "raspberry_pi_5")},
    }

    # The signed TUF target is what the registry row and the manifest route hold, byte for byte.
    repo = fleet.hub.repo
    signed = repo.targets()
    data = repo.storage.read_bytes(repo.target_key(target))
    assert signed[target].hashes["sha256"] == hashlib.sha256(data).hexdigest() == row["manifest_sha256"]
    assert fleet.get("/api/v1/pipelines/mixed/versions/1/raspberry_pi_5/manifest").content == data
    manifest = PipelineManifest.from_json(data)
    assert all(stage.manifest_target in signed for stage in manifest.stages.values())
    assert manifest.spec == spec_from_toml(mixed()) and manifest.profile == "raspberry_pi_5"

    # The golden cases: the largest stage atol, rtol 1e-3, top-1 for the output straight from the classifier.
    golden = manifest.golden
    assert golden is not None and len(golden.cases) == 4
    assert (golden.atol, golden.rtol) == (1e-4, 1e-3)
    assert all(set(case.expected_top1) == {"scores"} for case in golden.cases)
    assert all(case.shapes["features"] == [1, 6] for case in golden.cases)
    inputs = [case.inputs["features"] for case in golden.cases]
    assert all(0 <= v < 1 for values in inputs for v in values) and len({tuple(v) for v in inputs}) == 4

    # They reproduce when the pipeline runs here on the same artifacts, as the device's self-test runs it.
    runner = local_runner(manifest.spec, {"embed": fleet.folders["dense"]["raspberry_pi_5"],
                                          "head": fleet.folders["linear"]["raspberry_pi_5"]})  # fmt: skip
    assert check_golden(runner, golden) <= 1e-6
    got = runner.run(case_feeds(golden.cases[0])).outputs
    np.testing.assert_allclose(got["scores"].ravel(), golden.cases[0].expected["scores"], rtol=1e-6)
    assert [int(got["label"].ravel()[0])] == golden.cases[0].expected_top1["scores"]

    listed = fleet.get("/api/v1/pipelines?name=mixed").json()
    assert [(p["name"], p["version"], p["profiles"]) for p in listed] == [("mixed", 1, ["raspberry_pi_5"])]
    assert listed[0]["stages"] == {"embed": {"model": "dense", "version": 1}, "head": {"model": "linear", "version": 1}}


def test_profiles_samples_and_immutability(fleet: Fleet) -> None:
    samples = {"x": np.random.default_rng(7).random((3, 1, 4)).tolist()}
    first = fleet.post({"spec": spec_json(chain()), "profiles": ["x86_gateway"], "samples": samples})
    assert first.status_code == 201, first.text
    assert [(r["profile"], r["golden_cases"]) for r in first.json()["stored"]] == [("x86_gateway", 3)]
    stored = PipelineManifest.from_json(fleet.get("/api/v1/pipelines/chain/versions/1/x86_gateway/manifest").content)
    assert stored.golden is not None and stored.golden.cases[2].inputs["x"] == samples["x"][2][0]
    assert stored.golden.cases[0].expected_top1 == {"y": [int(np.argmax(stored.golden.cases[0].expected["y"]))]}

    # Without --profile: every profile where each stage has an artifact; the one already stored is unchanged.
    second = fleet.post({"spec": spec_json(chain())})
    assert second.status_code == 201, second.text
    assert [r["profile"] for r in second.json()["stored"]] == ["jetson_orin_nano"]
    assert [r["profile"] for r in second.json()["unchanged"]] == ["x86_gateway"]
    again = fleet.post({"spec": spec_json(chain())})
    assert again.status_code == 200 and again.json()["stored"] == []
    assert sorted(r["profile"] for r in again.json()["unchanged"]) == ["jetson_orin_nano", "x86_gateway"]

    changed = fleet.post({"spec": spec_json(chain(description="other"))})
    assert changed.status_code == 409
    assert changed.json()["detail"] == "pipeline chain version 1 exists with a different spec; push a new version"
    listed = fleet.get("/api/v1/pipelines?name=chain").json()
    assert [(p["version"], p["profiles"]) for p in listed] == [(1, ["jetson_orin_nano", "x86_gateway"])]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"spec": spec_json(mixed(head_version=9, version=2))},
         "stage 'head': model linear version 9 is not in the registry"),
        ({"spec": spec_json(mixed(version=2)), "profiles": ["x86_gateway"]},
         "stage 'embed' (dense v1) has no artifact for profile 'x86_gateway'; it has raspberry_pi_5"),
        ({"spec": spec_json(chain(version=2, b_model="lonely"))},
         "no profile has an artifact of every stage: stage 'a' (scaler v1) lacks esp32_s3; "
         "stage 'b' (lonely v1) lacks jetson_orin_nano, x86_gateway"),
        ({"spec": spec_json(chain(version=3, b_model="wide"))},
         "profile 'x86_gateway': stage 'b' input 'x' from 'a.y': shape [?, 3] does not fit [?, 5] (dim 1)"),
        ({"spec": {**spec_json(chain(version=4)), "steps": [{"name": "s", "params": {"op": "softmax"},
                                                            "inputs": {"x": "b.y"}}]}},
         "invalid pipeline spec: steps.0.params: unknown op; built-in steps are argmax, topk, threshold, nms, "
         "crop_resize, window, concat, slice, cast"),
        ({"spec": {**spec_json(chain(version=4)), "stages": [{"name": "a", "model": "scaler", "version": 1,
                                                             "inputs": {"x": "inputs.x"}, "inptus": {}}]}},
         "invalid pipeline spec: stages.0.inptus: unknown key"),
        ({"spec": spec_json(chain(version=4)), "samples": {"features": [[0.0] * 4]}},
         "samples: 'features' is no input of pipeline 'chain'; it takes x"),
        ({"spec": spec_json(chain(version=4)), "samples": {"x": [[0.0] * 5]}},
         "profile 'jetson_orin_nano': the pipeline does not run on the samples: input 'x': dim 1 is 5, expected 4 "
         "(shape [1, 4])"),
    ],
    ids=["missing-version", "profile-lacks-stage", "no-common-profile", "wiring", "unknown-op", "unknown-key",
         "sample-name", "sample-shape"],
)  # fmt: skip
def test_refusals_are_422_with_one_line_and_store_nothing(fleet: Fleet, body: dict[str, Any], detail: str) -> None:
    r = fleet.post(body)
    assert (r.status_code, r.json()["detail"]) == (422, detail)
    names = {(p["name"], p["version"]) for p in fleet.get("/api/v1/pipelines").json()}
    assert not names & {("chain", 2), ("chain", 3), ("chain", 4), ("mixed", 2)}


def test_a_profile_whose_runtime_the_hub_lacks_is_refused_not_skipped(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub.pipelines, "runtime_installed", lambda runtime: runtime != "onnxruntime")
    r = fleet.post({"spec": spec_json(chain(version=5)), "profiles": ["x86_gateway"]})
    assert r.status_code == 422
    assert r.json()["detail"].startswith(
        "profile 'x86_gateway': stage 'a' (scaler v1) is a onnx artifact and onnxruntime is not installed on the hub"
    )
    assert fleet.post({"spec": spec_json(chain(version=5))}, headers={}).status_code == 401


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_cli_push_and_list(fleet: Fleet, tmp_path: Path) -> None:
    auth = ["--hub", fleet.url, "--token", TOKEN]
    spec = tmp_path / "chain.toml"
    spec.write_text(chain(version=6))
    samples = tmp_path / "samples.npz"
    np.savez(samples, x=np.random.default_rng(1).random((2, 1, 4)).astype(np.float32))
    code, out = run("pipelines", "push", str(spec), "--profile", "x86_gateway", "--samples", str(samples), *auth)
    assert code == 0, out
    assert "stored" in out and "x86_gateway" in out and "chain" in out
    golden = PipelineManifest.from_json(fleet.get("/api/v1/pipelines/chain/versions/6/x86_gateway/manifest").content)
    assert golden.golden is not None and len(golden.golden.cases) == 2
    code, out = run("pipelines", "push", str(spec), "--profile", "x86_gateway", *auth)
    assert code == 0 and "unchanged" in out
    as_json = tmp_path / "chain.json"  # the JSON form (as the hub serves it) is read too
    as_json.write_text(spec_from_toml(chain(version=6)).to_json())
    code, out = run("pipelines", "push", str(as_json), "--profile", "x86_gateway", *auth)
    assert code == 0 and "unchanged" in out
    code, out = run("pipelines", "list", *auth)
    assert code == 0 and "chain" in out and "x86_gateway" in out


def test_cli_errors_are_one_line_and_exit_1(fleet: Fleet, tmp_path: Path) -> None:
    unreachable = ["--hub", "http://127.0.0.1:9", "--token", TOKEN]  # a broken file fails before any request
    bad = tmp_path / "bad.toml"
    bad.write_text(chain(version=7).replace("version = 7", "version = 0"))
    assert run("pipelines", "push", str(bad), *unreachable) == (
        1, f"Error: {bad}: version: Input should be greater than or equal to 1\n"
    )  # fmt: skip
    bad.write_text("name = \n")
    code, out = run("pipelines", "push", str(bad), *unreachable)
    assert code == 1 and out.startswith(f"Error: {bad}: not valid TOML:") and out.count("\n") == 1

    spec = tmp_path / "chain.toml"
    spec.write_text(chain(version=7))
    samples = tmp_path / "samples.npz"
    np.savez(samples, features=np.zeros((1, 4)))
    assert run("pipelines", "push", str(spec), "--samples", str(samples), *unreachable) == (
        1, f"Error: {samples}: array 'features' is no input of pipeline 'chain'; it takes x\n"
    )  # fmt: skip

    missing = tmp_path / "missing.toml"
    missing.write_text(mixed(head_version=9, version=2))
    assert run("pipelines", "push", str(missing), "--hub", fleet.url, "--token", TOKEN) == (
        1, "Error: hub said 422: stage 'head': model linear version 9 is not in the registry\n"
    )  # fmt: skip
    code, out = run("pipelines", "list", "--hub", fleet.url, "--token", "wrong")
    assert code == 1 and out.startswith("Error: hub said 401")


def test_the_worked_example_in_the_docs_is_a_valid_spec_with_the_documented_types() -> None:
    text = (Path(__file__).parents[2] / "docs" / "pipelines.md").read_text()
    example = text.split("## A worked example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    spec = spec_from_toml(example)
    f32 = "float32"
    stages = {
        "locate": StageIO(inputs={"image": TensorType(shape=[None, 64, 64, 1], dtype=f32)},
                          outputs={"boxes": TensorType(shape=[1, 10, 4], dtype=f32),
                                   "scores": TensorType(shape=[1, 10], dtype=f32)}),
        "classify": StageIO(inputs={"image": TensorType(shape=[None, 28, 28, 1], dtype="int8")},
                            outputs={"probs": TensorType(shape=[None, 10], dtype=f32)},
                            quantized_inputs=frozenset({"image"})),
    }  # fmt: skip
    types = check_wiring(spec, stages)
    assert {k: (t.shape, t.dtype) for k, t in types.items()} == {
        "boxes": ([4, 4], "float32"),
        "count": ([], "int32"),
        "digits": ([None], "int64"),
        "probs": ([None, 10], "float32"),
    }
