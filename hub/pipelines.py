"""Pipeline push: check a pipeline version against the registry, run it on each profile's own artifacts to record
its end-to-end golden cases, sign one `PipelineManifest` per profile as a TUF target, record it.

The checks, in order, each a 422 with one line naming what failed (except the 409): the spec; immutability (a
version pushed before with another spec is a 409); every stage's model version in the registry; the profiles
(given, or every profile where each stage has an artifact); per profile the wiring from the stage manifests;
then the run. The hub runs the pipeline because a device's end-to-end self-test needs what *these* artifacts
produce on *this* profile's runtime, and only the hub holds every stage of a version before any device does.
The stage runtimes (LiteRT, onnxruntime) and the runner are the agent's own (agent/pipeline/), so the hub
computes exactly what the device will check; a profile whose runtime the hub lacks is refused, never skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from agent.errors import AgentError
from agent.model import LoadedModel
from agent.pipeline.golden import make_golden
from agent.pipeline.runner import PipelineRunner, stage_io
from agent.runtimes import INSTALL_HINT, runtime_for_format, runtime_installed
from hub.cluster import locks
from hub.errors import Conflict, InvalidInput, StorageError
from hub.store import models as model_store
from hub.store import pipelines as pipeline_store
from hub.tuf_repo import TufRepository
from protocol.manifest import Manifest, Task, TensorSpec
from protocol.pipeline import (
    PipelineGolden,
    PipelineInput,
    PipelineManifest,
    PipelineSpec,
    PipelineSpecError,
    PipelineStage,
    StageIO,
    check_wiring,
    pipeline_target,
    spec_from_data,
    split_ref,
)
from protocol.pipeline_steps import TensorType

DEFAULT_SAMPLES = 4  # seeded pseudo-random samples when the push gives none
SAMPLE_SEED = 0
MAX_SAMPLES = 64  # PipelineGolden holds at most 64 cases
MIN_ATOL = 1e-5
RTOL = 1e-3

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class PipelinePushOutcome:
    """Which (name, version, profile) rows were stored now, and which were already there with the same spec."""

    stored: list[dict[str, Any]]
    unchanged: list[dict[str, Any]]


@dataclass(frozen=True)
class StageVersion:
    """One stage's model version on one profile: its registry row and manifest."""

    row: dict[str, Any]
    manifest: Manifest


def push_pipeline(
    *,
    spec_data: Any,
    profiles: Sequence[str] | None,
    samples: Mapping[str, Any] | None,
    engine: Engine,
    repo: TufRepository,
    work_dir: Path,
    now: datetime,
) -> PipelinePushOutcome:
    """Check, run and publish a pipeline version for its profiles; `work_dir` holds the stage artifacts meanwhile."""
    try:
        spec = spec_from_data(spec_data)
    except PipelineSpecError as e:
        raise InvalidInput(f"invalid pipeline spec: {e}") from e
    spec_text = spec.to_json()
    with engine.connect() as conn:
        existing = {r["profile"]: r for r in pipeline_store.of_version(conn=conn, name=spec.name, version=spec.version)}
        for row in existing.values():
            _same_spec(spec, row, spec_text)
        available = {s.name: model_store.profiles_of(conn=conn, name=s.model, version=s.version) for s in spec.stages}
        for s in spec.stages:
            if not available[s.name]:
                raise InvalidInput(f"stage {s.name!r}: model {s.model} version {s.version} is not in the registry")
        chosen = choose_profiles(spec, available, profiles)
        stages: dict[str, dict[str, StageVersion]] = {}
        for profile in chosen:
            if profile in existing:
                continue
            stages[profile] = {}
            for s in spec.stages:
                found = model_store.get(conn=conn, name=s.model, version=s.version, profile=profile)
                assert found is not None  # choose_profiles checked every stage has this profile
                stages[profile][s.name] = StageVersion(found, Manifest.from_json(found["manifest"]))
    feeds = parse_samples(spec, samples) if samples is not None else default_samples(spec)
    built = {
        profile: profile_manifest(spec, profile, versions, feeds, repo=repo, work_dir=work_dir / profile)
        for profile, versions in stages.items()
    }
    unchanged = [existing[p] for p in chosen if p in existing]
    return _publish(spec, spec_text, built, unchanged, engine=engine, repo=repo, now=now)


def _same_spec(spec: PipelineSpec, row: Mapping[str, Any], spec_text: str) -> None:
    if row["spec"] != spec_text:
        raise Conflict(f"pipeline {spec.name} version {spec.version} exists with a different spec; push a new version")


def choose_profiles(
    spec: PipelineSpec, available: Mapping[str, Collection[str]], wanted: Sequence[str] | None
) -> list[str]:
    """The profiles to publish for: `wanted` (each must have every stage), else every profile that has them all."""
    if wanted:
        chosen = list(dict.fromkeys(wanted))
        for profile in chosen:
            for s in spec.stages:
                if profile not in available[s.name]:
                    has = ", ".join(sorted(available[s.name]))
                    raise InvalidInput(
                        f"stage {s.name!r} ({s.model} v{s.version}) has no artifact for profile {profile!r}; "
                        f"it has {has}"
                    )
        return chosen
    every = [set(available[s.name]) for s in spec.stages]
    common = set.intersection(*every)
    if not common:
        union = set.union(*every)
        lacks = "; ".join(
            f"stage {s.name!r} ({s.model} v{s.version}) lacks {', '.join(sorted(union - set(available[s.name])))}"
            for s in spec.stages
            if union - set(available[s.name])
        )
        raise InvalidInput(f"no profile has an artifact of every stage: {lacks}")
    return sorted(common)


def manifest_io(manifest: Manifest) -> StageIO:
    """A stage's IO from its manifest, as `agent.pipeline.runner.stage_io` sees the loaded model: quantised inputs
    take floats, quantised outputs come out dequantised as float32."""

    def typed(t: TensorSpec, *, dequantised: bool) -> TensorType:
        quantised = dequantised and t.quantization is not None
        return TensorType(shape=list(t.shape), dtype="float32" if quantised else t.dtype)

    return StageIO(
        inputs={t.name: typed(t, dequantised=False) for t in manifest.inputs},
        outputs={t.name: typed(t, dequantised=True) for t in manifest.outputs},
        quantized_inputs=frozenset(t.name for t in manifest.inputs if t.quantization is not None),
    )


def profile_manifest(
    spec: PipelineSpec,
    profile: str,
    stages: Mapping[str, StageVersion],
    samples: Sequence[Sample],
    *,
    repo: TufRepository,
    work_dir: Path,
) -> PipelineManifest:
    """The pipeline version for one profile: wiring checked, golden cases computed on this profile's artifacts."""
    where = f"profile {profile!r}"
    try:
        check_wiring(spec, {name: manifest_io(s.manifest) for name, s in stages.items()})
    except PipelineSpecError as e:
        raise InvalidInput(f"{where}: {e}") from e
    models = {name: _load_stage(name, s, repo=repo, folder=work_dir / name, where=where) for name, s in stages.items()}
    try:  # what the device's self-test checks too: the models as loaded, not only as described
        check_wiring(spec, {name: stage_io(m) for name, m in models.items()})
    except PipelineSpecError as e:
        raise InvalidInput(f"{where}: {e}") from e
    manifests = {name: s.manifest for name, s in stages.items()}
    golden = _golden(PipelineRunner(spec, models), spec, manifests, samples, where=where)
    refs = {
        name: PipelineStage(model=s.manifest.name, version=s.manifest.version, manifest_target=s.row["manifest_target"])
        for name, s in stages.items()
    }
    return PipelineManifest(spec=spec, profile=profile, stages=refs, golden=golden)


def _load_stage(name: str, stage: StageVersion, *, repo: TufRepository, folder: Path, where: str) -> LoadedModel:
    m = stage.manifest
    what = f"{where}: stage {name!r} ({m.name} v{m.version})"
    runtime = runtime_for_format(m.format.value)
    if not runtime_installed(runtime):
        raise InvalidInput(
            f"{what} is a {m.format.value} artifact and {runtime} is not installed on the hub, so the pipeline's "
            f"golden cases cannot be computed for this profile (install it beside the hub: {INSTALL_HINT[runtime]})"
        )
    path = _artifact_copy(repo, stage, folder)
    try:
        return LoadedModel.from_file(path, manifest=m)
    except AgentError as e:
        raise InvalidInput(f"{what}: the hub cannot load its artifact: {e}") from e


def _artifact_copy(repo: TufRepository, stage: StageVersion, folder: Path) -> Path:
    """The stage's artifact as published, copied out of the hub's storage into `folder` and checked."""
    ref = stage.manifest.artifact
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ref.file
    digest = hashlib.sha256()
    with repo.storage.open(repo.target_key(stage.row["artifact_target"])) as blob, path.open("wb") as out:
        for chunk in blob.chunks():
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != ref.sha256:
        raise StorageError(f"{stage.row['artifact_target']}: the stored bytes do not match the manifest's sha256")
    return path


def _golden(
    runner: PipelineRunner,
    spec: PipelineSpec,
    manifests: Mapping[str, Manifest],
    samples: Sequence[Sample],
    *,
    where: str,
) -> PipelineGolden:
    atol = max(MIN_ATOL, *(m.golden.atol for m in manifests.values()))
    try:
        return make_golden(
            runner, samples, atol=atol, rtol=RTOL, classifier_outputs=classifier_outputs(spec, manifests)
        )
    except AgentError as e:
        raise InvalidInput(f"{where}: the pipeline does not run on the samples: {e}") from e
    except ValidationError as e:  # the samples are finite (parse_samples), so an output is not
        raise InvalidInput(f"{where}: the pipeline's outputs on the samples hold NaN or inf") from e


def classifier_outputs(spec: PipelineSpec, manifests: Mapping[str, Manifest]) -> list[str]:
    """Pipeline outputs taken straight from a classification stage: golden cases compare their top-1."""
    out = []
    for name, ref in spec.outputs.items():
        node, _ = split_ref(ref)
        manifest = manifests.get(node)
        if manifest is not None and manifest.task is Task.CLASSIFICATION:
            out.append(name)
    return out


def parse_samples(spec: PipelineSpec, samples: Mapping[str, Any]) -> list[Sample]:
    """`{input: nested list with a leading sample axis}` -> one feed per sample; InvalidInput naming the input."""
    names = [i.name for i in spec.inputs]
    unknown = [k for k in samples if k not in names]
    if unknown:
        takes = ", ".join(names)
        raise InvalidInput(f"samples: {unknown[0]!r} is no input of pipeline {spec.name!r}; it takes {takes}")
    missing = [k for k in names if k not in samples]
    if missing:
        raise InvalidInput(f"samples: input {missing[0]!r} is missing")
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        try:
            value = np.asarray(samples[name])
        except (ValueError, TypeError) as e:
            raise InvalidInput(f"samples.{name}: not a numeric array: {str(e).splitlines()[0]}") from e
        if value.dtype.kind not in "biuf":
            raise InvalidInput(f"samples.{name}: not a numeric array (nested lists of numbers, one per sample)")
        if value.ndim < 1 or value.shape[0] == 0:
            raise InvalidInput(f"samples.{name}: needs a leading sample axis holding at least one sample")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise InvalidInput(f"samples.{name}: holds NaN or inf")
        arrays[name] = value
    counts = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        given = ", ".join(f"{k} {n}" for k, n in counts.items())
        raise InvalidInput(f"samples: the inputs hold different numbers of samples ({given})")
    n = next(iter(counts.values()))
    if n > MAX_SAMPLES:
        raise InvalidInput(f"samples: at most {MAX_SAMPLES} samples, got {n}")
    return [{name: a[i] for name, a in arrays.items()} for i in range(n)]


def default_samples(spec: PipelineSpec, count: int = DEFAULT_SAMPLES, seed: int = SAMPLE_SEED) -> list[Sample]:
    """Seeded pseudo-random samples of each input's declared shape (dynamic dims 1) and dtype: floats uniform in
    [0, 1), 8-bit integers over their whole range, wider integers in 0..9, booleans at random."""
    rng = np.random.default_rng(seed)
    return [{i.name: _random(rng, i) for i in spec.inputs} for _ in range(count)]


def _random(rng: np.random.Generator, spec: PipelineInput) -> np.ndarray:
    shape = tuple(1 if d is None else d for d in spec.shape)
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    info = np.iinfo(dtype)
    low, high = (int(info.min), int(info.max)) if dtype.itemsize == 1 else (0, 9)
    return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)


def _publish(
    spec: PipelineSpec,
    spec_text: str,
    built: Mapping[str, PipelineManifest],
    unchanged: list[dict[str, Any]],
    *,
    engine: Engine,
    repo: TufRepository,
    now: datetime,
) -> PipelinePushOutcome:
    """Sign and record the new profiles in one transaction (a failed publish stores nothing)."""
    stored: list[dict[str, Any]] = []
    unchanged = list(unchanged)
    targets: dict[str, bytes | Path] = {}
    try:
        with engine.begin() as conn:
            locks.xact_lock(conn, locks.TUF_PUBLISH)  # replicas share tuf/: one publish at a time
            for profile, manifest in built.items():
                current = pipeline_store.get(conn=conn, name=spec.name, version=spec.version, profile=profile)
                if current is not None:  # pushed meanwhile by another request
                    _same_spec(spec, current, spec_text)
                    unchanged.append(current)
                    continue
                data = manifest.to_bytes()
                row: dict[str, Any] = {
                    "name": spec.name,
                    "version": spec.version,
                    "profile": profile,
                    "spec": spec_text,
                    "manifest": data.decode("utf-8"),
                    "manifest_sha256": hashlib.sha256(data).hexdigest(),
                    "pipeline_target": pipeline_target(spec.name, spec.version, profile),
                }
                pipeline_store.add(conn=conn, now=now, **row)
                stored.append(row | {"created_at": now})
                targets[row["pipeline_target"]] = data
            if targets:
                repo.add_targets(targets)  # inside the transaction: a failed publish stores nothing
    except IntegrityError as e:  # another replica stored the same profile between our read and our insert
        raise Conflict(
            f"pipeline {spec.name} version {spec.version} was pushed by another request at the same time; push again"
        ) from e
    return PipelinePushOutcome(stored=stored, unchanged=unchanged)
