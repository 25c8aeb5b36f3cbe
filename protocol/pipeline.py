"""The pipeline spec: several models and built-in glue steps run on a device as one versioned unit.

Authored as TOML, carried as canonical JSON like the manifest. A pipeline names its inputs (with shape and
dtype), its nodes and its outputs. A node is a **stage** (a model pinned to one version) or a **step** (a
built-in operation from protocol/pipeline_steps.py: data, never code). Every node input is wired to a
*reference* `"<node>.<tensor>"`, where the node `inputs` stands for the pipeline's own inputs:

    name = "digits"
    version = 1

    [[inputs]]
    name = "image"
    shape = [1, 64, 64, 1]
    dtype = "float32"

    [[stages]]
    name = "locate"
    model = "digit-locator"
    version = 3
    inputs = { image = "inputs.image" }

    [[steps]]
    name = "crop"
    op = "crop_resize"
    params = { size = [28, 28], max_crops = 1 }
    inputs = { image = "inputs.image", boxes = "locate.boxes" }

    [[stages]]
    name = "classify"
    model = "digits"
    version = 2
    inputs = { image = "crop.crops" }

    [outputs]
    digit = "classify.probs"

`PipelineSpec` checks what the spec alone decides (names, references to known nodes and step outputs, no
cycle, no unused node). `check_wiring` checks the rest once the stages' manifests are known: every stage input
wired exactly once, and every tensor's shape and dtype fit where it goes. Both raise one readable line naming
the node and tensor.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import Field, StringConstraints, ValidationError, model_validator

from protocol.base import Contract, Identifier, ModelName, Version
from protocol.manifest import DType, FiniteFloat, NonNegFloat
from protocol.pipeline_steps import (
    STEP_OPS,
    StepParams,
    StepTypeError,
    TensorType,
    infer_types,
    step_inputs,
    step_outputs,
)

PIPELINE_SCHEMA_VERSION: Literal[1] = 1
INPUTS = "inputs"  # the node name that stands for the pipeline's own inputs
MAX_NODES = 64

NodeName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
TensorName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# "<node>.<tensor>": node names hold no dot, so the first dot splits; tensor names are the models' own.
Ref = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}\.\S.{0,255}$")]


class PipelineSpecError(ValueError):
    """A spec that breaks the schema or whose wiring cannot run; the message names the node and tensor."""


def split_ref(ref: str) -> tuple[str, str]:
    """`"locate.boxes"` -> `("locate", "boxes")`."""
    node, _, tensor = ref.partition(".")
    return node, tensor


class PipelineInput(Contract):
    """One input the caller gives, as a tensor type."""

    name: TensorName
    shape: list[Annotated[int, Field(ge=1)] | None]
    dtype: DType

    @property
    def type(self) -> TensorType:
        return TensorType(shape=self.shape, dtype=self.dtype)


class StageSpec(Contract):
    """A model pinned to one version; `inputs` maps each of the model's input names to a reference."""

    name: NodeName
    model: ModelName
    version: Version
    inputs: dict[TensorName, Ref] = Field(min_length=1)


class StepSpec(Contract):
    """A built-in step; TOML writes `op` beside `params`, the contract keeps it inside `params`."""

    name: NodeName
    params: StepParams
    inputs: dict[TensorName, Ref] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _lift_op(cls, data: Any) -> Any:
        if isinstance(data, dict) and "op" in data:
            data = dict(data)
            params = data.get("params", {})
            if not isinstance(params, dict):
                raise ValueError("params: must be a table")
            data["params"] = {"op": data.pop("op"), **params}
        return data


Node = StageSpec | StepSpec


class PipelineSpec(Contract):
    """A pipeline version: immutable once pushed (a change is a new version)."""

    schema_version: Literal[1] = PIPELINE_SCHEMA_VERSION
    name: ModelName
    version: Version
    description: Annotated[str, Field(max_length=2000)] = ""
    inputs: list[PipelineInput] = Field(min_length=1, max_length=32)
    stages: list[StageSpec] = Field(min_length=1, max_length=MAX_NODES)
    steps: list[StepSpec] = Field(default_factory=list, max_length=MAX_NODES)
    outputs: dict[TensorName, Ref] = Field(min_length=1, max_length=32)

    @model_validator(mode="after")
    def _graph(self) -> Self:
        names = [n.name for n in self.nodes()]
        if INPUTS in names:
            raise ValueError(f"node name {INPUTS!r} is reserved for the pipeline's inputs")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node name {dupes[0]!r} used twice (stage and step names share one namespace)")
        input_names = [i.name for i in self.inputs]
        if len(set(input_names)) != len(input_names):
            raise ValueError("inputs: a name is given twice")
        stage_models = [s.model for s in self.stages]
        twice = sorted({m for m in stage_models if stage_models.count(m) > 1})
        if twice:
            raise ValueError(f"model {twice[0]!r} is used by two stages; a pipeline runs each model once")
        for step in self.steps:
            _check_step_inputs(step)
        for node in self.nodes():
            for tensor, ref in node.inputs.items():
                self._check_ref(ref, f"{_kind(node)} {node.name!r} input {tensor!r}")
        for out, ref in self.outputs.items():
            self._check_ref(ref, f"output {out!r}")
        self.order()  # refuses a cycle
        used = {split_ref(r)[0] for n in self.nodes() for r in n.inputs.values()} | {
            split_ref(r)[0] for r in self.outputs.values()
        }
        for node in self.nodes():
            if node.name not in used:
                raise ValueError(
                    f"{_kind(node)} {node.name!r}: no output of it is used by a later node or the pipeline"
                )
        unused = [i.name for i in self.inputs if f"{INPUTS}.{i.name}" not in _refs(self)]
        if unused:
            raise ValueError(f"input {unused[0]!r} is not wired to any node")
        return self

    def _check_ref(self, ref: str, where: str) -> None:
        node, tensor = split_ref(ref)
        if node == INPUTS:
            if tensor not in {i.name for i in self.inputs}:
                raise ValueError(f"{where}: {ref!r} names no pipeline input")
            return
        target = self.node(node)
        if target is None:
            raise ValueError(f"{where}: {ref!r} names no stage or step {node!r}")
        if isinstance(target, StepSpec) and tensor not in step_outputs(target.params):
            outs = ", ".join(step_outputs(target.params))
            raise ValueError(f"{where}: step {node!r} ({target.params.op}) has no output {tensor!r}; it has {outs}")

    def nodes(self) -> list[Node]:
        return [*self.stages, *self.steps]

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes() if n.name == name), None)

    def order(self) -> list[Node]:
        """Nodes in an order where each runs after what it reads (stages before steps where both could go)."""
        pending = {n.name: n for n in self.nodes()}
        done: set[str] = {INPUTS}
        ordered: list[Node] = []
        while pending:
            ready = [n for n in pending.values() if {split_ref(r)[0] for r in n.inputs.values()} <= done]
            if not ready:
                raise ValueError(f"the wiring has a cycle through {', '.join(_on_cycles(pending))}")
            for n in ready:
                ordered.append(n)
                done.add(n.name)
                del pending[n.name]
        return ordered

    def stage_models(self) -> dict[str, tuple[str, int]]:
        """Stage name -> (model, version)."""
        return {s.name: (s.model, s.version) for s in self.stages}


def _on_cycles(pending: dict[str, Node]) -> list[str]:
    """The pending nodes that depend on themselves (not those merely downstream of a cycle)."""
    deps = {n: {split_ref(r)[0] for r in node.inputs.values()} & pending.keys() for n, node in pending.items()}

    def reaches(start: str) -> bool:
        seen, todo = set(), list(deps[start])
        while todo:
            n = todo.pop()
            if n == start:
                return True
            if n not in seen:
                seen.add(n)
                todo.extend(deps[n])
        return False

    return sorted(n for n in pending if reaches(n))


def _kind(node: Node) -> str:
    return "stage" if isinstance(node, StageSpec) else "step"


def _refs(spec: PipelineSpec) -> set[str]:
    return {r for n in spec.nodes() for r in n.inputs.values()} | set(spec.outputs.values())


def _check_step_inputs(step: StepSpec) -> None:
    required, optional = step_inputs(step.params, tuple(step.inputs))
    missing = [r for r in required if r not in step.inputs]
    if missing:
        raise ValueError(f"step {step.name!r} ({step.params.op}): input {missing[0]!r} is not wired")
    unknown = [t for t in step.inputs if t not in required and t not in optional]
    if unknown:
        takes = ", ".join((*required, *optional))
        raise ValueError(f"step {step.name!r} ({step.params.op}) has no input {unknown[0]!r}; it takes {takes}")


@dataclass(frozen=True)
class StageIO:
    """A stage model's public inputs and outputs, from its manifest (quantised inputs take floats)."""

    inputs: Mapping[str, TensorType]
    outputs: Mapping[str, TensorType]
    quantized_inputs: frozenset[str] = frozenset()


def check_wiring(spec: PipelineSpec, stages: Mapping[str, StageIO]) -> dict[str, TensorType]:
    """Every stage input wired once and every tensor fitting where it goes; returns the pipeline's output types.

    `stages` holds each stage's IO (from the manifest of its model version on one profile)."""
    types: dict[str, TensorType] = {f"{INPUTS}.{i.name}": i.type for i in spec.inputs}
    for node in spec.order():
        for ref in node.inputs.values():
            if ref not in types:  # a stage output the model does not have
                n, tensor = split_ref(ref)
                raise PipelineSpecError(f"{_kind(node)} {node.name!r}: {ref!r}: stage {n!r} has no output {tensor!r}")
        if isinstance(node, StageSpec):
            io = stages[node.name]
            missing = [t for t in io.inputs if t not in node.inputs]
            if missing:
                raise PipelineSpecError(
                    f"stage {node.name!r} ({node.model} v{node.version}): input {missing[0]!r} is not wired"
                )
            for tensor, ref in node.inputs.items():
                want = io.inputs.get(tensor)
                if want is None:
                    takes = ", ".join(io.inputs)
                    raise PipelineSpecError(
                        f"stage {node.name!r} ({node.model} v{node.version}) has no input {tensor!r}; it takes {takes}"
                    )
                problem = fits(types[ref], want, quantized=tensor in io.quantized_inputs)
                if problem:
                    raise PipelineSpecError(f"stage {node.name!r} input {tensor!r} from {ref!r}: {problem}")
            for tensor, t in io.outputs.items():
                types[f"{node.name}.{tensor}"] = t
        else:
            try:
                outs = infer_types(node.params, {t: types[r] for t, r in node.inputs.items()})
            except StepTypeError as e:
                raise PipelineSpecError(f"step {node.name!r}: {e}") from e
            for tensor, t in outs.items():
                types[f"{node.name}.{tensor}"] = t
    out: dict[str, TensorType] = {}
    for name, ref in spec.outputs.items():
        if ref not in types:
            n, tensor = split_ref(ref)
            raise PipelineSpecError(f"output {name!r}: {ref!r}: stage {n!r} has no output {tensor!r}")
        out[name] = types[ref]
    return out


FLOATS = frozenset({"float16", "float32", "float64"})


def fits(got: TensorType, want: TensorType, *, quantized: bool = False) -> str | None:
    """Why a tensor of type `got` cannot feed an input of type `want` (None when it can).

    The first dimension of a batch-first input (dynamic or 1) takes any count: a model built for batch 1 runs
    row by row. A quantised input takes floats (the agent quantises them)."""
    dtype_ok = (
        got.dtype == want.dtype or (quantized and got.dtype in FLOATS) or (got.dtype in FLOATS and want.dtype in FLOATS)
    )
    if not dtype_ok:
        return f"dtype {got.dtype} does not fit {want.dtype}"
    if len(got.shape) != len(want.shape):
        return f"shape {_fmt(got.shape)} does not fit {_fmt(want.shape)} (rank {len(got.shape)} vs {len(want.shape)})"
    free_first = bool(want.shape) and want.shape[0] in (None, 1)
    for axis, (g, w) in enumerate(zip(got.shape, want.shape, strict=True)):
        if axis == 0 and free_first:
            continue
        if g is not None and w is not None and g != w:
            return f"shape {_fmt(got.shape)} does not fit {_fmt(want.shape)} (dim {axis})"
    return None


def _fmt(shape: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def describe(e: ValidationError) -> str:
    """The first error as one line naming the key: `stages.1.version: ...`."""
    first = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "union_tag_invalid":
        msg = f"unknown op; built-in steps are {', '.join(STEP_OPS)}"
    return f"{loc}: {msg}" if loc else msg


def spec_from_toml(text: str) -> PipelineSpec:
    """Parse a TOML spec; `PipelineSpecError` with one line naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PipelineSpecError(f"not valid TOML: {e}") from e
    return spec_from_data(data)


def spec_from_data(data: Any) -> PipelineSpec:
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as e:
        raise PipelineSpecError(describe(e)) from e


class PipelineStage(Contract):
    """Where a stage's model version lives for one profile: the TUF target of its manifest."""

    model: ModelName
    version: Version
    manifest_target: Annotated[str, Field(min_length=1, max_length=512)]


class PipelineCase(Contract):
    """One end-to-end golden case: pipeline inputs and the outputs this profile's artifacts produced at push."""

    inputs: dict[str, list[FiniteFloat]]
    expected: dict[str, list[FiniteFloat]]
    shapes: dict[str, list[Annotated[int, Field(ge=0)]]]  # inputs and outputs as fed / produced
    # Classifier outputs: the arg max over the last axis of each row (one per crop of a batched classifier).
    expected_top1: dict[str, list[Annotated[int, Field(ge=0)]]] = Field(default_factory=dict)


class PipelineGolden(Contract):
    """End-to-end self-test: every case within tolerance (or top-1 agreement for classifier outputs)."""

    cases: list[PipelineCase] = Field(min_length=1, max_length=64)
    atol: NonNegFloat
    rtol: NonNegFloat = 0.0
    min_top1_agreement: Annotated[float, Field(ge=0, le=1)] = 1.0


class PipelineManifest(Contract):
    """A pipeline version for one profile: the spec, each stage's manifest target, the golden cases.

    The hub writes and signs it (TUF target `pipeline_target(...)`); the agent verifies it, then every stage's
    manifest and artifact through TUF, before anything of it is staged."""

    schema_version: Literal[1] = PIPELINE_SCHEMA_VERSION
    spec: PipelineSpec
    profile: Identifier
    stages: dict[NodeName, PipelineStage] = Field(min_length=1)
    golden: PipelineGolden | None = None

    @model_validator(mode="after")
    def _stages_match(self) -> Self:
        want = self.spec.stage_models()
        got = {k: (v.model, v.version) for k, v in self.stages.items()}
        if got != want:
            raise ValueError(f"stages {sorted(got)} do not match the spec's {sorted(want)} (models and versions)")
        return self

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version


def pipeline_target(name: str, version: int, profile: str) -> str:
    """TUF target path of a pipeline manifest: `pipelines/{name}/{version}/{profile}/pipeline.json`."""
    return f"pipelines/{name}/{version}/{profile}/pipeline.json"
