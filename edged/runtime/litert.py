"""LiteRT (TensorFlow Lite) backend.

Interpreter implementations, in order of preference:

1. ``ai_edge_litert.interpreter`` (``pip install 'edged[tflite]'``), current and numpy-2 ready;
2. ``tflite_runtime.interpreter`` (``pip install 'edged[tflite-legacy]'``), the
   last release of which (2.14) is built against numpy 1: importing it works
   under numpy 2 but creating an interpreter fails, so we catch that at
   instantiation and say "tflite-runtime needs numpy<2".

Batches are run by resizing the input tensor when the model's batch dimension
is dynamic (``shape_signature[0] == -1``), else one sample at a time.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Tuple

import numpy as np

from edged.errors import BackendError, MissingDependencyError
from edged.runtime.base import Backend, Dim, TensorSpec

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "backend 'litert' needs ai-edge-litert or tflite-runtime: pip install 'edged[tflite]' "
    "(or 'edged[tflite-legacy]', which needs numpy<2)"
)


def find_interpreter() -> Tuple[Callable[..., Any], str, str]:
    """Return (Interpreter class, implementation name, version); raise MissingDependencyError if none."""
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter as mod

        return mod.Interpreter, "ai-edge-litert", str(getattr(ai_edge_litert, "__version__", "unknown"))
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter as mod2

        return mod2.Interpreter, "tflite-runtime", str(getattr(tflite_runtime, "__version__", "unknown"))
    except ImportError:
        pass
    raise MissingDependencyError(INSTALL_HINT)


def numpy_major() -> int:
    return int(np.__version__.split(".")[0])


def _dims(shape_signature: Any) -> Tuple[Dim, ...]:
    return tuple(int(d) if int(d) > 0 else None for d in shape_signature)


class LiteRTBackend(Backend):
    """One LiteRT interpreter; ``infer`` returns a copy of the first output."""

    name = "litert"
    suffixes = (".tflite",)

    def __init__(self, interpreter_factory: Optional[Callable[..., Any]] = None, implementation: str = "") -> None:
        self._factory = interpreter_factory
        self.implementation = implementation
        self._impl_version = ""
        self._it: Any = None
        self._in: Optional[TensorSpec] = None
        self._out: Optional[TensorSpec] = None
        self._in_index = 0
        self._out_index = 0
        self._batch = 0
        self._dynamic_batch = False

    def load(self, path: str, threads: int = 1, **options: Any) -> None:
        if self._factory is None:
            self._factory, self.implementation, self._impl_version = find_interpreter()
        try:
            it = self._factory(model_path=path, num_threads=max(1, int(threads)))
            it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            if "Could not open" in str(exc) or "Model provided" in str(exc):
                raise BackendError(f"LiteRT could not load {path}: {exc}") from exc
            raise self._explain(exc) from exc
        except Exception as exc:  # ImportError / AttributeError / SystemError under an ABI mismatch
            raise self._explain(exc) from exc
        i, o = it.get_input_details(), it.get_output_details()
        if len(i) != 1:
            raise BackendError(f"{path}: edged models take exactly one input, this one has {len(i)}")
        sig_in = i[0].get("shape_signature", i[0]["shape"])
        sig_out = o[0].get("shape_signature", o[0]["shape"])
        self._in = TensorSpec(str(i[0]["name"]), _dims(sig_in), np.dtype(i[0]["dtype"]).name)
        self._out = TensorSpec(str(o[0]["name"]), _dims(sig_out), np.dtype(o[0]["dtype"]).name)
        self._in_index, self._out_index = int(i[0]["index"]), int(o[0]["index"])
        self._batch = int(i[0]["shape"][0])
        self._dynamic_batch = int(sig_in[0]) == -1
        self._it = it

    def _explain(self, exc: BaseException) -> BackendError:
        if self.implementation == "tflite-runtime" and numpy_major() >= 2:
            return BackendError(
                f"tflite-runtime needs numpy<2 (numpy {np.__version__} is installed): "
                "pip install 'numpy<2', or use ai-edge-litert: pip install 'edged[tflite]' "
                f"(interpreter failed with {type(exc).__name__}: {exc})"
            )
        return BackendError(f"{self.implementation or 'LiteRT'} interpreter failed: {type(exc).__name__}: {exc}")

    @property
    def input_spec(self) -> TensorSpec:
        if self._in is None:
            raise BackendError("litert backend used before load()")
        return self._in

    @property
    def output_spec(self) -> TensorSpec:
        if self._out is None:
            raise BackendError("litert backend used before load()")
        return self._out

    def _resize(self, n: int) -> None:
        shape = [n, *self._it.get_input_details()[0]["shape"][1:]]
        self._it.resize_tensor_input(self._in_index, shape)
        self._it.allocate_tensors()
        self._batch = n

    def infer(self, batch: np.ndarray) -> np.ndarray:
        it = self._it
        n = batch.shape[0]
        if n != self._batch:
            if not self._dynamic_batch:
                return np.concatenate([self.infer(batch[k : k + 1]) for k in range(n)])
            self._resize(n)
        it.set_tensor(self._in_index, batch)
        it.invoke()
        return it.get_tensor(self._out_index)  # get_tensor returns a copy

    def close(self) -> None:
        self._it = None

    def version(self) -> str:
        if not self._impl_version:
            _, self.implementation, self._impl_version = find_interpreter()
        return f"{self.implementation} {self._impl_version}"
