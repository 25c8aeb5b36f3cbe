"""What every runtime plugin offers: tensor descriptions and one `run` call on native arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.generic]


@dataclass(frozen=True)
class TensorInfo:
    """One model tensor as the runtime sees it (None = dynamic dimension)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[np.generic]
    scale: float | None = None
    zero_point: int | None = None
    aliases: tuple[str, ...] = ()  # other names the tensor answers to (a TFLite tensor's own name)
    dim_names: tuple[str | None, ...] = ()  # symbolic names of dynamic dims (ONNX `batch`), where the model has them


class ModelRuntime(Protocol):
    """A loaded artifact: native tensors in, native tensors out, names as the runtime names them."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Run one (possibly batched) inference on arrays already in the runtime's dtypes."""
        ...
