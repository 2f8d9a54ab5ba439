"""ONNX Runtime backend.

Sessions run with a configurable number of intra-op threads and a list of
execution providers. ONNX Runtime silently falls back to the CPU when a
requested provider cannot be created (a CUDA provider without its libraries,
say); after creating the session we compare ``get_providers()`` with what was
asked for and log a warning naming the provider that is not active.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edged.errors import BackendError, MissingDependencyError
from edged.runtime.base import Backend, Dim, TensorSpec

log = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool",
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # core dependency, but a broken wheel on an SBC happens
        raise MissingDependencyError(
            f"backend 'onnx' needs onnxruntime ({exc}): pip install onnxruntime"
        ) from exc
    return onnxruntime


def _dims(shape: Sequence[Any]) -> Tuple[Dim, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def inactive_providers(requested: Sequence[str], active: Sequence[str]) -> List[str]:
    """Providers that were asked for but are not active in the session."""
    return [p for p in requested if p not in active]


class OnnxBackend(Backend):
    """One ``onnxruntime.InferenceSession``; ``infer`` returns the first output, ``infer_named`` all of them."""

    name = "onnx"
    suffixes = (".onnx", ".ort")

    def __init__(self) -> None:
        self._sess: Any = None
        self._in: Optional[TensorSpec] = None
        self._out: Optional[TensorSpec] = None
        self._out_names: List[str] = []
        self._all_out_names: List[str] = []
        self._ins: List[TensorSpec] = []
        self._outs: List[TensorSpec] = []
        self.providers: List[str] = []

    def load(self, path: str, threads: int = 1, providers: Optional[Sequence[str]] = None, **options: Any) -> None:
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        requested = list(providers or ["CPUExecutionProvider"])
        available = ort.get_available_providers()
        usable = [p for p in requested if p in available] or ["CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(path, sess_options=so, providers=usable)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime could not load {path}: {exc}") from exc
        self.providers = list(sess.get_providers())
        missing = inactive_providers(requested, self.providers)
        if missing:
            log.warning(
                "onnx: requested execution provider(s) %s not active for %s; running on %s (available here: %s)",
                ", ".join(missing), path, ", ".join(self.providers), ", ".join(available),
            )
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        self._ins = [TensorSpec(i.name, _dims(i.shape), _ORT_DTYPES.get(i.type, i.type)) for i in inputs]
        self._outs = [TensorSpec(o.name, _dims(o.shape), _ORT_DTYPES.get(o.type, o.type)) for o in outputs]
        if not self._ins or not self._outs:
            raise BackendError(f"{path}: the model has {len(self._ins)} input(s) and {len(self._outs)} output(s)")
        self._in, self._out = self._ins[0], self._outs[0]
        self._out_names = [self._out.name]  # first output only: what infer() returns (bench/ uses it too)
        self._all_out_names = [o.name for o in self._outs]
        self._sess = sess

    @property
    def input_spec(self) -> TensorSpec:
        if self._in is None:
            raise BackendError("onnx backend used before load()")
        return self._in

    @property
    def output_spec(self) -> TensorSpec:
        if self._out is None:
            raise BackendError("onnx backend used before load()")
        return self._out

    @property
    def input_specs(self) -> List[TensorSpec]:
        if self._in is None:
            raise BackendError("onnx backend used before load()")
        return list(self._ins)

    @property
    def output_specs(self) -> List[TensorSpec]:
        if self._out is None:
            raise BackendError("onnx backend used before load()")
        return list(self._outs)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """First input -> first output (other inputs, if any, must be fed with :meth:`infer_named`)."""
        return self._sess.run(self._out_names, {self._in.name: batch})[0]  # type: ignore[union-attr]

    def infer_named(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        try:
            outs = self._sess.run(self._all_out_names, dict(feeds))
        except Exception as exc:  # onnxruntime's own exception types (InvalidArgument, Fail, ...)
            raise BackendError(f"onnxruntime failed: {exc}") from exc
        return dict(zip(self._all_out_names, outs))

    def close(self) -> None:
        self._sess = None

    def version(self) -> str:
        return str(_ort().__version__)
