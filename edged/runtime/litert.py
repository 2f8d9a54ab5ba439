"""LiteRT (TensorFlow Lite) backend.

Interpreter implementations, in order of preference:

1. ``ai_edge_litert.interpreter`` (``pip install 'edged[tflite]'``), current and numpy-2 ready;
2. ``tflite_runtime.interpreter`` (``pip install 'edged[tflite-legacy]'``), the
   last release of which (2.14) is built against numpy 1: importing it works
   under numpy 2 but creating an interpreter fails, so we catch that at
   instantiation and say "tflite-runtime needs numpy<2".

Batches are run by resizing the input tensors when the model's batch dimension
is dynamic (``shape_signature[0] == -1``), else one sample at a time; any other
dynamic dimension (an image's H x W) is resized to the fed shape the same way.
Inputs and outputs are found by name (see :class:`LiteRTBackend`), and int8/uint8
tensors are quantised/dequantised with their own scale and zero point.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from edged.errors import BackendError, MissingDependencyError
from edged.runtime.base import Backend, Dim, Quantization, TensorSpec

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


def plain_name(name: str) -> str:
    """A TFLite tensor name without the converter's decorations: ``serving_default_x:0`` -> ``x``."""
    if name.startswith("serving_default_"):
        name = name[len("serving_default_"):]
    head, sep, tail = name.rpartition(":")
    return head if sep and tail.isdigit() else name


class _Tensor:
    """One input or output tensor of the interpreter, with its name, index and quantisation."""

    __slots__ = ("spec", "index", "quant", "static_dims", "np_dtype")

    def __init__(self, d: Dict[str, Any], name: str) -> None:
        sig = d.get("shape_signature", d["shape"])
        if len(sig) == 0 and len(d["shape"]) > 0:  # some converters leave the signature empty
            sig = d["shape"]
        self.index = int(d["index"])
        self.np_dtype = np.dtype(d["dtype"])
        self.spec = TensorSpec(name, _dims(sig), self.np_dtype.name)
        scale, zp = d.get("quantization", (0.0, 0))
        self.quant = (
            Quantization(float(scale), int(zp))
            if float(scale) > 0 and self.spec.dtype in ("int8", "uint8", "int16") else None
        )
        self.static_dims = [int(x) for x in sig]


class LiteRTBackend(Backend):
    """One LiteRT interpreter; ``infer`` returns a copy of the first output, ``infer_named`` all of them.

    Tensors are named by the model's signature (``input``, ``output_0``) when it has
    exactly one, else by their tensor names; :meth:`tensor_aliases` lists the other
    spellings (the tensor name, the name without ``serving_default_``/``:0``).
    Quantised (int8/uint8) tensors: float feeds are quantised with the tensor's own
    scale and zero point, integer feeds of the tensor's dtype pass unchanged, and
    outputs come back dequantised to float32.
    """

    name = "litert"
    suffixes = (".tflite",)

    def __init__(self, interpreter_factory: Optional[Callable[..., Any]] = None, implementation: str = "") -> None:
        self._factory = interpreter_factory
        self.implementation = implementation
        self._impl_version = ""
        self._it: Any = None
        self._ins: List[_Tensor] = []
        self._outs: List[_Tensor] = []
        self._by_name: Dict[str, _Tensor] = {}
        self._aliases: Dict[str, str] = {}
        self._shapes: Dict[int, Tuple[int, ...]] = {}  # input index -> currently allocated shape
        self._dynamic_batch = False
        self._in_index = 0
        self._out_index = 0

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
        if not i or not o:
            raise BackendError(f"{path}: the model has {len(i)} input(s) and {len(o)} output(s)")
        in_names = {int(d["index"]): str(d["name"]) for d in i}
        out_names = {int(d["index"]): str(d["name"]) for d in o}
        sig_in, sig_out = self._signature_names(it, set(in_names), set(out_names))
        self._ins = [_Tensor(d, sig_in.get(int(d["index"]), str(d["name"]))) for d in i]
        self._outs = [_Tensor(d, sig_out.get(int(d["index"]), str(d["name"]))) for d in o]
        self._by_name, self._aliases = {}, {}
        for t, raw in [(t, in_names[t.index]) for t in self._ins] + [(t, out_names[t.index]) for t in self._outs]:
            self._by_name[t.spec.name] = t
            for alias in (raw, plain_name(raw)):
                if alias != t.spec.name:
                    self._aliases.setdefault(alias, t.spec.name)
        self._shapes = {int(d["index"]): tuple(int(x) for x in d["shape"]) for d in i}
        self._in_index, self._out_index = self._ins[0].index, self._outs[0].index  # bench/ drives these directly
        self._dynamic_batch = all(t.static_dims and t.static_dims[0] == -1 for t in self._ins)
        self._it = it

    @staticmethod
    def _signature_names(it: Any, in_idx: Set[int], out_idx: Set[int]) -> Tuple[Dict[int, str], Dict[int, str]]:
        """index -> signature name for the inputs and outputs, if the model has exactly one signature."""
        try:
            sigs = it.get_signature_list()
            if len(sigs) != 1:
                return {}, {}
            runner = it.get_signature_runner(next(iter(sigs)))
            ins = {int(d["index"]): str(n) for n, d in runner.get_input_details().items()}
            outs = {int(d["index"]): str(n) for n, d in runner.get_output_details().items()}
        except Exception:  # older interpreters, models without signatures
            return {}, {}
        if set(ins) != in_idx or set(outs) != out_idx:
            return {}, {}
        return ins, outs

    def _explain(self, exc: BaseException) -> BackendError:
        if self.implementation == "tflite-runtime" and numpy_major() >= 2:
            return BackendError(
                f"tflite-runtime needs numpy<2 (numpy {np.__version__} is installed): "
                "pip install 'numpy<2', or use ai-edge-litert: pip install 'edged[tflite]' "
                f"(interpreter failed with {type(exc).__name__}: {exc})"
            )
        return BackendError(f"{self.implementation or 'LiteRT'} interpreter failed: {type(exc).__name__}: {exc}")

    def _loaded(self) -> None:
        if self._it is None:
            raise BackendError("litert backend used before load()")

    @property
    def input_spec(self) -> TensorSpec:
        self._loaded()
        return self._ins[0].spec

    @property
    def output_spec(self) -> TensorSpec:
        self._loaded()
        return self._outs[0].spec

    @property
    def input_specs(self) -> List[TensorSpec]:
        self._loaded()
        return [t.spec for t in self._ins]

    @property
    def output_specs(self) -> List[TensorSpec]:
        self._loaded()
        return [t.spec for t in self._outs]

    def tensor_aliases(self) -> Dict[str, str]:
        """Other spellings of input/output names (tensor name, undecorated name) -> the spec name."""
        return dict(self._aliases)

    def _lookup(self, name: str) -> Optional[_Tensor]:
        t = self._by_name.get(name)
        return t if t is not None else self._by_name.get(self._aliases.get(name, ""))

    def quantization(self, name: str) -> Optional[Quantization]:
        t = self._lookup(name)
        return t.quant if t is not None else None

    def _prepare(self, t: _Tensor, x: np.ndarray) -> np.ndarray:
        want = t.spec.dtype
        if x.dtype.name == want:
            return x
        if t.quant is not None and x.dtype.kind == "f":
            return t.quant.quantize(x, want)
        raise BackendError(
            f"litert: input {t.spec.name!r} is {x.dtype.name}, the model takes {want}"
            + (" (or float, quantised with the tensor's scale)" if t.quant else "")
        )

    def _run(self, feeds: Sequence[Tuple[_Tensor, np.ndarray]], outs: Sequence[_Tensor]) -> List[np.ndarray]:
        """Set (resizing where the shape changed), invoke, read (dequantising) the given outputs."""
        it = self._it
        resized = False
        for t, x in feeds:
            if self._shapes.get(t.index) != x.shape:
                it.resize_tensor_input(t.index, list(x.shape), strict=False)
                self._shapes[t.index] = x.shape
                resized = True
        if resized:
            it.allocate_tensors()
        for t, x in feeds:
            it.set_tensor(t.index, x)
        it.invoke()
        res = []
        for t in outs:
            y = it.get_tensor(t.index)  # get_tensor returns a copy
            res.append(t.quant.dequantize(y) if t.quant is not None else y)
        return res

    def _static_batch_of_one(self, n: int) -> bool:
        return n != 1 and not self._dynamic_batch and all(
            t.static_dims and t.static_dims[0] == 1 for t in self._ins
        )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        t, o = self._ins[0], self._outs[0]
        if batch.dtype != t.np_dtype:
            batch = self._prepare(t, batch)
        if batch.shape != self._shapes.get(t.index):
            if self._static_batch_of_one(batch.shape[0]):
                return np.concatenate([self.infer(batch[k : k + 1]) for k in range(batch.shape[0])])
            return self._run([(t, batch)], self._outs[:1])[0]
        it = self._it
        it.set_tensor(t.index, batch)
        it.invoke()
        y = it.get_tensor(o.index)  # get_tensor returns a copy
        return o.quant.dequantize(y) if o.quant is not None else y

    def infer_named(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self._loaded()
        pairs: List[Tuple[_Tensor, np.ndarray]] = []
        for name, x in feeds.items():
            t = self._lookup(name)
            if t is None or t not in self._ins:
                raise BackendError(
                    f"litert: no input named {name!r}: the model takes {', '.join(s.spec.name for s in self._ins)}"
                )
            pairs.append((t, self._prepare(t, np.asarray(x))))
        missing = [t.spec.name for t in self._ins if all(t is not p[0] for p in pairs)]
        if missing:
            raise BackendError(f"litert: input(s) {', '.join(missing)} not fed")
        n = pairs[0][1].shape[0] if pairs[0][1].ndim else 1
        if self._static_batch_of_one(n):
            parts = [self._run([(t, x[k : k + 1] if x.ndim and x.shape[0] == n else x) for t, x in pairs], self._outs)
                     for k in range(n)]
            return {t.spec.name: np.concatenate([p[j] for p in parts]) for j, t in enumerate(self._outs)}
        return {t.spec.name: y for t, y in zip(self._outs, self._run(pairs, self._outs))}

    def close(self) -> None:
        self._it = None

    def version(self) -> str:
        if not self._impl_version:
            _, self.implementation, self._impl_version = find_interpreter()
        return f"{self.implementation} {self._impl_version}"
