"""The model manifest: what one artifact is, how to feed it, how to test it, how to watch it drift.

One manifest per (model version, profile) artifact. The converter writes it, the hub signs it as a
TUF target, the agent verifies and obeys it. Canonical JSON round-trips byte for byte.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from protocol.base import Contract, Identifier, ModelName, Sha256Hex, Version

MANIFEST_SCHEMA_VERSION: Literal[1] = 1

DType = Literal["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ModelFormat(StrEnum):
    """Serialised model format; decides which runtime loads it."""

    TFLITE = "tflite"
    ONNX = "onnx"


class Quantization(StrEnum):
    """Numeric scheme of an artifact. For ONNX, `int8` is static QDQ; for TFLite, full-integer."""

    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC_INT8 = "dynamic_int8"
    INT8 = "int8"


def batch_first(shape: list[int | None] | tuple[int | None, ...]) -> bool:
    """Whether samples stack along the first dimension (dynamic or 1); 0-d and fixed-first-dim tensors are whole."""
    return len(shape) > 0 and shape[0] in (None, 1)


def artifact_kind(fmt: ModelFormat, quant: Quantization) -> str:
    """`tflite_int8`, `onnx_fp32`, ... — the name used in reports and profiles."""
    return f"{fmt.value}_{quant.value}"


class Task(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class QuantParams(Contract):
    """Affine quantisation of a tensor: real = scale * (q - zero_point)."""

    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    zero_point: int


class TensorSpec(Contract):
    """One input or output tensor. A `None` dimension is dynamic (usually the batch).

    `name` is the source model's name, the one applications use on every profile; `runtime_name` is the
    artifact's own name for the tensor (a TFLite signature key such as `output_0`, an onnx2tf tensor
    name) when it differs. `shape` is the artifact's. A tensor is *batch-first* when its first dimension
    is dynamic or 1 (`batch_first`): samples stack along it. Others (0-d scalars, recurrent state such as
    `[2, None, 128]`) are given whole, one value per call.
    """

    name: Annotated[str, Field(min_length=1, max_length=256)]
    shape: list[Annotated[int, Field(ge=1)] | None]
    dtype: DType
    quantization: QuantParams | None = None
    runtime_name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    # Where a converter was told an input's axis order and kept it (onnx2tf keeps rank 3-5 inputs channels first,
    # as the ONNX source has them, instead of turning them NHWC); None where no layout was assumed.
    layout: Literal["NCW", "NCHW", "NCDHW", "NWC", "NHWC", "NDHWC"] | None = None

    @property
    def batch_first(self) -> bool:
        return batch_first(self.shape)

    @model_validator(mode="after")
    def _quantized_dtype(self) -> Self:
        if self.quantization is not None and self.dtype not in ("int8", "uint8", "int16"):
            raise ValueError(f"tensor {self.name!r}: quantization given for non-integer dtype {self.dtype}")
        return self


class ArtifactRef(Contract):
    """The artifact file, content-addressed. `url` is filled in by the hub when it serves it."""

    file: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
    sha256: Sha256Hex
    size: Annotated[int, Field(ge=1)]
    url: str | None = None


class HistogramBaseline(Contract):
    """Distribution of one feature (or one output dimension) over the validation set.

    `edges` are bin edges from the validation quantiles (len = bins + 1, non-decreasing);
    `counts` are how many validation values fell in each bin (values below the first edge count
    in the first bin, above the last in the last). Devices fill the same bins, so summaries merge
    by adding counts.
    """

    name: Annotated[str, Field(min_length=1)]
    edges: list[FiniteFloat] = Field(min_length=2)
    counts: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    mean: FiniteFloat
    std: NonNegFloat
    min: FiniteFloat
    max: FiniteFloat

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if len(self.counts) != len(self.edges) - 1:
            raise ValueError(f"{self.name}: {len(self.counts)} counts for {len(self.edges)} edges")
        if any(b < a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"{self.name}: edges must be non-decreasing")
        if self.min > self.max:
            raise ValueError(f"{self.name}: min > max")
        return self


class BaselineStats(Contract):
    """What the validation data looked like, for on-device drift detection."""

    n_samples: Annotated[int, Field(ge=1)]
    inputs: list[HistogramBaseline]
    # Classifiers: predicted-class counts over the validation set. Regressors: one histogram per output.
    class_counts: list[Annotated[int, Field(ge=0)]] | None = None
    outputs: list[HistogramBaseline] = Field(default_factory=list)
    # How input features were grouped: "feature" (one per flattened element) or "channel".
    grouping: Literal["feature", "channel"] = "feature"


class GoldenCase(Contract):
    """One self-test case: inputs and the outputs the artifact must reproduce within tolerance."""

    inputs: dict[str, list[FiniteFloat]]  # tensor name -> flattened values (shape from TensorSpec or `shapes`)
    expected: dict[str, list[FiniteFloat]]  # output name -> flattened values from this artifact
    expected_top1: int | None = None
    # The inputs' shapes as fed, where the TensorSpec cannot tell (a dynamic dim past the first, a 0-d input).
    shapes: dict[str, list[Annotated[int, Field(ge=0)]]] | None = None


class GoldenSet(Contract):
    """Golden self-test cases with the tolerance that fits this artifact's quantisation."""

    cases: list[GoldenCase] = Field(min_length=1)
    atol: NonNegFloat
    rtol: NonNegFloat = 0.0
    # Minimum share of cases whose top-1 must match `expected_top1` (classifiers).
    min_top1_agreement: Annotated[float, Field(ge=0, le=1)] = 1.0


class ArtifactMetrics(Contract):
    """Measured quality of one candidate artifact against the float reference."""

    kind: str
    size_bytes: Annotated[int, Field(ge=0)]
    top1_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    accuracy_loss_pt: FiniteFloat | None = None
    max_abs_error: NonNegFloat | None = None
    # max_abs_error over the float model's output range on the validation data (the worst output).
    relative_error: NonNegFloat | None = None
    latency_ms_p50: NonNegFloat
    latency_ms_p95: NonNegFloat
    # host = measured here; device = host x the profile's speed factor.
    latency_basis: Literal["host", "device"] = "host"
    device_latency_ms_p50: NonNegFloat | None = None
    device_latency_ms_p95: NonNegFloat | None = None
    # Set when the shipped artifact was compiled for an accelerator after measuring (edgetpu_compiler); the
    # figures above are the int8 model's on the host CPU.
    compiled_for: Literal["edgetpu"] | None = None


class ConversionReport(Contract):
    """Why this artifact was chosen for this profile."""

    reference_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    chosen: ArtifactMetrics
    candidates: list[ArtifactMetrics] = Field(default_factory=list)
    refused: dict[str, str] = Field(default_factory=dict)  # kind -> reason
    validation_samples: Annotated[int, Field(ge=1)]
    converter_version: str


class CloudServing(Contract):
    """Names under which the float model of this version is served in the cloud."""

    model_name: ModelName
    version: Version
    tfserving: bool = False
    torchserve: bool = False
    kserve: bool = False


class SourceRef(Contract):
    """The source model's own identity: its kind and, for a DVC-tracked file, the repo, git rev, path and md5."""

    kind: Annotated[str, Field(min_length=1, max_length=32)]
    sha256: Sha256Hex
    dvc_repo: str | None = None
    dvc_rev: str | None = None
    dvc_commit: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")] | None = None
    dvc_path: str | None = None
    dvc_md5: Annotated[str, Field(pattern=r"^[0-9a-f]{32}(\.dir)?$")] | None = None


class Manifest(Contract):
    """Everything a device needs to install, run, self-test and monitor one artifact."""

    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    name: ModelName
    version: Version
    profile: Identifier
    format: ModelFormat
    quantization: Quantization
    task: Task
    labels: list[str] | None = None
    artifact: ArtifactRef
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    baseline: BaselineStats
    golden: GoldenSet
    report: ConversionReport
    cloud: CloudServing | None = None
    # The TFLite signature the artifact runs (ready-made models with several); None: the only or default one.
    signature: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    # Where the source came from when it is versioned outside the converter (a DVC-tracked file).
    source: SourceRef | None = None

    @property
    def kind(self) -> str:
        return artifact_kind(self.format, self.quantization)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("input tensor names must be unique")
        out_names = [t.name for t in self.outputs]
        if len(set(out_names)) != len(out_names):
            raise ValueError("output tensor names must be unique")
        for i, case in enumerate(self.golden.cases):
            if set(case.inputs) != set(names):
                raise ValueError(f"golden case {i}: inputs {sorted(case.inputs)} != tensors {sorted(names)}")
            for spec in self.inputs:
                got = len(case.inputs[spec.name])
                if case.shapes is not None:
                    shape = case.shapes.get(spec.name)
                    if shape is None or math.prod(shape) != got:
                        raise ValueError(f"golden case {i}: {spec.name} has {got} values for shape {shape}")
                    continue
                want = _static_size(spec)
                if want is not None and got % want:
                    raise ValueError(f"golden case {i}: {spec.name} has {got} values, not a multiple of {want}")
        counts = self.baseline.class_counts
        if self.labels is not None and counts is not None and len(self.labels) != len(counts):
            raise ValueError("labels and baseline.class_counts differ in length")
        if self.cloud is not None and (self.cloud.version != self.version):
            raise ValueError("cloud.version must equal version")
        return self


def _static_size(spec: TensorSpec) -> int | None:
    """Elements per sample (all dims but a leading dynamic batch); None if another dim is dynamic."""
    dims = spec.shape[1:] if spec.batch_first else spec.shape
    if any(d is None for d in dims):
        return None
    return math.prod(d for d in dims if d is not None)
