"""Firmware profile schema: what a device class can run and the budgets an artifact must meet."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from protocol.base import Contract, Identifier
from protocol.manifest import ModelFormat, Quantization, artifact_kind

Arch = Literal["arm64", "armv7", "x86_64", "xtensa", "riscv32"]
Accelerator = Literal["none", "gpu", "edgetpu", "npu"]
Runtime = Literal["litert", "onnxruntime", "tflite_micro"]
Delegate = Literal["xnnpack", "edgetpu", "vx_delegate", "cuda", "tensorrt", "none"]
IODType = Literal["float32", "int8", "uint8"]


class Budgets(Contract):
    """Hard limits an artifact must meet on this device class."""

    max_artifact_bytes: Annotated[int, Field(ge=1)]
    max_ram_bytes: Annotated[int, Field(ge=1)]
    latency_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    max_accuracy_loss_pt: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    # Regressors (no labels): largest allowed |artifact - float| over the validation set, and the same as a share
    # of the float model's output range there (so a quantised artifact cannot drift far from the model).
    max_abs_error: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    max_relative_error: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = 0.05
    # MCUs: the tensor arena must fit beside the model.
    arena_bytes: Annotated[int, Field(ge=1)] | None = None


class Speed(Contract):
    """How the device's speed relates to the host that measures latency.

    `host_factor` = device latency / reference-host latency for the same artifact (e.g. 4.0 means
    the device is four times slower than the reference host). Without it budgets are checked
    against host latency and the report says so.
    """

    reference_host: str = "x86_64 2-core CI host"
    host_factor: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class FirmwareProfile(Contract):
    """One device class. Loaded from a TOML file in this package (or a user directory)."""

    schema_version: Literal[1] = 1
    name: Identifier
    description: str
    arch: Arch
    accelerator: Accelerator = "none"
    # Runtimes on the device: onnx needs onnxruntime; tflite needs litert or tflite_micro.
    runtimes: list[Runtime] = Field(min_length=1)
    delegate: Delegate = "none"
    # Accepted formats, most preferred first, and the quantisations allowed (any order).
    formats: list[ModelFormat] = Field(min_length=1)
    quantizations: list[Quantization] = Field(min_length=1)
    # Required dtype of model inputs/outputs (Edge TPU needs int8/uint8 I/O).
    io_dtype: IODType = "float32"
    threads: Annotated[int, Field(ge=1, le=64)]
    budgets: Budgets
    speed: Speed | None = None

    @property
    def kinds(self) -> list[str]:
        """Artifact kinds this profile accepts, format preference first."""
        return [artifact_kind(f, q) for f in self.formats for q in self.quantizations]

    @model_validator(mode="after")
    def _possible(self) -> Self:
        if len(set(self.formats)) != len(self.formats):
            raise ValueError("formats: listed twice")
        if len(set(self.quantizations)) != len(self.quantizations):
            raise ValueError("quantizations: listed twice")
        if ModelFormat.ONNX in self.formats and "onnxruntime" not in self.runtimes:
            raise ValueError("formats: onnx needs runtime onnxruntime in runtimes")
        if ModelFormat.TFLITE in self.formats and not {"litert", "tflite_micro"} & set(self.runtimes):
            raise ValueError("formats: tflite needs runtime litert or tflite_micro in runtimes")
        if "onnxruntime" in self.runtimes and ModelFormat.ONNX not in self.formats:
            raise ValueError("runtimes: onnxruntime listed but formats has no onnx")
        if "tflite_micro" in self.runtimes:
            if self.quantizations != [Quantization.INT8]:
                raise ValueError("quantizations: tflite_micro profiles need exactly [int8]")
            if self.budgets.arena_bytes is None:
                raise ValueError("budgets.arena_bytes: required for tflite_micro")
        if self.accelerator == "edgetpu":
            if self.quantizations != [Quantization.INT8]:
                raise ValueError("quantizations: the Edge TPU runs only full-integer int8")
            if self.io_dtype == "float32":
                raise ValueError("io_dtype: the Edge TPU needs int8 or uint8 inputs and outputs")
        if self.io_dtype != "float32" and self.quantizations != [Quantization.INT8]:
            raise ValueError(f"io_dtype: {self.io_dtype} I/O needs quantizations = [int8]")
        if self.io_dtype != "float32" and ModelFormat.ONNX in self.formats:
            raise ValueError("io_dtype: integer I/O is produced for tflite only")
        if self.delegate == "edgetpu" and self.accelerator != "edgetpu":
            raise ValueError("delegate: edgetpu delegate needs accelerator = edgetpu")
        if self.delegate in ("cuda", "tensorrt") and "onnxruntime" not in self.runtimes:
            raise ValueError(f"delegate: {self.delegate} needs runtime onnxruntime")
        if self.budgets.max_artifact_bytes > self.budgets.max_ram_bytes:
            raise ValueError("budgets.max_artifact_bytes: larger than max_ram_bytes, the model cannot load")
        if self.budgets.arena_bytes is not None and (
            self.budgets.arena_bytes + self.budgets.max_artifact_bytes > self.budgets.max_ram_bytes
        ):
            raise ValueError("budgets.arena_bytes: arena plus model exceed max_ram_bytes")
        return self
