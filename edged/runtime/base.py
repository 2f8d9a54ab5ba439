"""The backend interface every runtime implements.

A backend owns one loaded model file and runs it on one input or a batch.
It works in the artifact's own layout; layout conversion, validation and
integrity checks live one level up in :mod:`edged.models` so that callers
never see them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

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


class Backend(abc.ABC):
    """One model file loaded into one runtime.

    Lifecycle: ``load(path, threads)`` → ``infer(batch)`` any number of times →
    ``close()``. ``infer`` takes an array in the artifact's own layout with a
    leading batch dimension and returns the first output as an ndarray.
    Implementations must be safe to call from one thread at a time.
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
        """Spec of the (single) model input, as the file declares it."""

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
