"""Runtime backends behind one interface, in a registry keyed by name.

A backend module is imported only when that backend is asked for, so a device
without LiteRT still runs ONNX models (and vice versa).
"""

from __future__ import annotations

import importlib
from typing import Dict, List, Tuple, Type

from edged.errors import BackendError, MissingDependencyError
from edged.runtime.base import Backend, InputSpec, Quantization, TensorSpec

#: backend name -> (module, class)
BACKENDS: Dict[str, Tuple[str, str]] = {
    "onnx": ("edged.runtime.onnx", "OnnxBackend"),
    "litert": ("edged.runtime.litert", "LiteRTBackend"),
}

#: Accepted spellings in manifests and configs.
ALIASES = {"onnxruntime": "onnx", "ort": "onnx", "tflite": "litert", "tensorflow-lite": "litert"}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
    return key


def backend_class(name: str) -> Type[Backend]:
    mod_name, cls_name = BACKENDS[canonical_name(name)]
    mod = importlib.import_module(mod_name)
    cls: Type[Backend] = getattr(mod, cls_name)
    return cls


def available_backends() -> List[str]:
    """Backends whose runtime library imports on this machine."""
    out = []
    for name in BACKENDS:
        try:
            if name == "litert":
                from edged.runtime.litert import find_interpreter

                find_interpreter()
            else:
                import onnxruntime  # noqa: F401
            out.append(name)
        except (ImportError, MissingDependencyError):
            continue
    return out


__all__ = [
    "Backend", "BACKENDS", "InputSpec", "Quantization", "TensorSpec", "available_backends", "backend_class",
    "canonical_name",
]
