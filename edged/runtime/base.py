"""The backend interface every runtime implements.

A backend owns one loaded model file and runs it on one input or a batch.
It works in the artifact's own layout; layout conversion, validation and
integrity checks live one level up in :mod:`edged.models` so that callers
never see them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

Dim = Optional[int]  # None (or a symbolic name in the file) = dynamic dimension


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a model input or output.

    ``shape`` includes the batch dimension; a dynamic dimension is ``None``.
    ``dtype`` is a numpy dtype name such as ``"float32"``. ``layout`` is a
    string like ``"NHWC"``, ``"NCHW"`` or ``"NC"`` (one letter per dimension).
    """

    name: str
    shape: Tuple[Dim, ...]
    dtype: str
    layout: str = ""

    @property
    def sample_shape(self) -> Tuple[Dim, ...]:
        """Shape of one input without the batch dimension."""
        return tuple(self.shape[1:])

    @property
    def sample_size(self) -> int:
        """Number of elements in one input (dynamic non-batch dims count as 1)."""
        n = 1
        for d in self.sample_shape:
            n *= d if d else 1
        return n

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}


# Historical name used across the package: the spec of a model's input.
InputSpec = TensorSpec


@dataclass(frozen=True)
class Quantization:
    """Affine quantisation of an integer tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray, dtype: str) -> np.ndarray:
        """Float array -> integer array of ``dtype``: round to nearest, clip to the dtype's range."""
        info = np.iinfo(dtype)
        q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Integer array -> float32."""
        return ((q.astype(np.int32) - self.zero_point) * np.float32(self.scale)).astype(np.float32)


class Backend(abc.ABC):
    """One model file loaded into one runtime.

    Lifecycle: ``load(path, threads)`` → ``infer(batch)`` / ``infer_named(feeds)``
    any number of times → ``close()``. ``infer`` takes the first input's array in
    the artifact's own layout with a leading batch dimension and returns the first
    output; ``infer_named`` takes every input by name and returns every output by
    name (batch dimension included). Implementations must be safe to call from
    one thread at a time.
    """

    #: Registry key, e.g. ``"onnx"`` or ``"litert"``.
    name: ClassVar[str]
    #: File suffixes this backend can load.
    suffixes: ClassVar[Sequence[str]]

    @abc.abstractmethod
    def load(self, path: str, threads: int = 1, **options: Any) -> None:
        """Load the model at ``path`` with ``threads`` intra-op threads."""

    @property
    @abc.abstractmethod
    def input_spec(self) -> TensorSpec:
        """Spec of the first model input, as the file declares it."""

    @property
    def input_specs(self) -> List[TensorSpec]:
        """Specs of every input in the file's order (names as :meth:`infer_named` takes them)."""
        return [self.input_spec]

    @property
    def output_specs(self) -> List[TensorSpec]:
        """Specs of every output in the file's order (names as :meth:`infer_named` returns them)."""
        return [self.output_spec]

    def quantization(self, name: str) -> Optional[Quantization]:
        """Quantisation of the named input or output if the file stores it as a quantised integer."""
        return None

    def infer_named(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run every input by name (artifact layout, batch dim included); return every output by name.

        The default serves single-input, single-output backends through :meth:`infer`.
        """
        (arr,) = feeds.values()
        return {self.output_spec.name: self.infer(arr)}

    @property
    @abc.abstractmethod
    def output_spec(self) -> TensorSpec:
        """Spec of the first model output, as the file declares it."""

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch (leading batch dim, artifact layout) and return the first output."""

    def infer_one(self, sample: np.ndarray) -> np.ndarray:
        """Run one input without a batch dimension; returns one output row."""
        return self.infer(sample[np.newaxis, ...])[0]

    @abc.abstractmethod
    def close(self) -> None:
        """Release the runtime session. Safe to call twice."""

    def version(self) -> str:
        """Version string of the underlying runtime library."""
        return "unknown"

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
