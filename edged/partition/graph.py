"""Single-tensor cuts of an ONNX graph, head and tail graphs, intermediate sizes, the cut hash.

A *cut* after node ``k`` (``0 < k < N``, nodes in the file's topological order) is usable
when exactly one tensor computed by the head (``nodes[:k]``, or the graph input) is still
needed by the tail (``nodes[k:]``) or is a graph output: the tail then depends on that one
tensor plus initializers (and ``Constant`` nodes, which the tail copies). That tensor is
what crosses the link; its size per sample comes from ONNX shape inference.

``k = 0`` (:data:`~edged.partition.ALL_FOG`) sends the raw input and ``k = N``
(:data:`~edged.partition.ALL_LOCAL`) sends nothing; both are always cut points.

The cut hash is the sha256 of the tail model as this module builds it (deterministic
serialisation): an edge and a fog holding the same ``model.onnx`` compute the same hash,
and a fog refuses an intermediate tensor whose hash differs from its own tail's.

Needs the ``onnx`` package (``pip install 'edged[partition]'``); imported lazily.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

from edged.errors import EdgedError, MissingDependencyError
from edged.partition import ALL_FOG, ALL_LOCAL

#: op type -> layer kind (the Neurosurgeon regression is per kind)
LAYER_KINDS: Dict[str, str] = {
    **{op: "conv" for op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv")},
    **{op: "fc" for op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")},
    **{op: "pool" for op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool")},
    **{op: "activation" for op in ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "HardSigmoid",
                                   "HardSwish", "PRelu", "Softplus", "Gelu", "Softmax", "LogSoftmax")},
    **{op: "norm" for op in ("BatchNormalization", "LRN", "LayerNormalization", "InstanceNormalization")},
    **{op: "reshape" for op in ("Transpose", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Concat",
                                "Pad", "Slice", "Cast", "Expand")},
    **{op: "elementwise" for op in ("Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Abs", "Neg")},
}


class PartitionError(EdgedError):
    """A model cannot be partitioned as asked (no such cut, a cut that fails verification, not ONNX)."""


def require_onnx() -> Any:
    """The ``onnx`` module, or a clear :class:`MissingDependencyError`."""
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            f"model partitioning needs the onnx package to build head and tail graphs ({exc}): "
            "pip install 'edged[partition]'"
        ) from exc
    return onnx


@dataclass(frozen=True)
class Layer:
    """One graph node with what the Neurosurgeon regression needs. Shapes are per sample (batch 1)."""

    index: int
    name: str
    op: str
    kind: str
    in_shape: Optional[Tuple[int, ...]]  #: first input, batch axis included (1)
    out_shape: Optional[Tuple[int, ...]]  #: first output, batch axis included (1)
    flops: int  #: per sample: 2 x MACs for conv/fc, ~ one op per element otherwise
    params: int  #: elements of the initializers the node reads

    @property
    def out_elements(self) -> int:
        return _prod(self.out_shape) if self.out_shape else 0

    @property
    def in_elements(self) -> int:
        return _prod(self.in_shape) if self.in_shape else 0


@dataclass(frozen=True)
class Cut:
    """A partition point. ``k`` graph nodes run on the device; ``tensor`` crosses the link.

    ``bytes`` is the size of that tensor per sample (None when the graph leaves a dimension
    unknown); for :data:`ALL_LOCAL` it is the size of the outputs (what a result carries).
    ``tail_hash`` identifies the tail graph (``""`` for :data:`ALL_LOCAL`: no tail).
    """

    k: int
    name: str
    tensor: str
    shape: Tuple[Optional[int], ...]  #: batch axis first (None: dynamic)
    dtype: str
    bytes: Optional[int]
    tail_hash: str

    @property
    def interior(self) -> bool:
        return self.name not in (ALL_FOG, ALL_LOCAL)

    def to_dict(self) -> Dict[str, Any]:
        return {"k": self.k, "name": self.name, "tensor": self.tensor, "shape": list(self.shape),
                "dtype": self.dtype, "bytes": self.bytes, "tail_hash": self.tail_hash}


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _dims(tt: Any) -> Tuple[Optional[int], ...]:
    return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)


class GraphPlan:
    """The cuts and layers of one ONNX model. Build with :func:`analyse`."""

    def __init__(self, model: Any) -> None:
        onnx = require_onnx()
        from onnx import helper, shape_inference

        self._onnx = onnx
        self.model = model
        g = model.graph
        self.nodes = list(g.node)
        self.initializers: Dict[str, Any] = {t.name: t for t in g.initializer}
        self.inputs = [i for i in g.input if i.name not in self.initializers]
        self.outputs = [o.name for o in g.output]
        try:
            inferred = shape_inference.infer_shapes(model)
        except Exception as exc:  # onnx raises its own InferenceError types
            raise PartitionError(f"ONNX shape inference failed on {g.name!r}: {exc}") from exc
        self._vi: Dict[str, Any] = {}
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if vi.type.HasField("tensor_type"):
                self._vi[vi.name] = vi
        self._to_np = helper.tensor_dtype_to_np_dtype
        self.constants: Set[str] = {o for n in self.nodes if n.op_type == "Constant" for o in n.output}
        self.layers = [self._layer(i, n) for i, n in enumerate(self.nodes)]
        self._cuts = self._enumerate()

    # ---- tensors -------------------------------------------------------------------------------------
    def tensor_shape(self, name: str) -> Tuple[Optional[int], ...]:
        vi = self._vi.get(name)
        return _dims(vi.type.tensor_type) if vi is not None else ()

    def tensor_dtype(self, name: str) -> str:
        vi = self._vi.get(name)
        if vi is None:
            return "float32"
        return str(self._to_np(vi.type.tensor_type.elem_type))

    def tensor_bytes(self, name: str) -> Optional[int]:
        """Bytes of one sample of ``name`` (its batch axis dropped), from the graph; None if a dim is unknown."""
        import numpy as np

        shape = self.tensor_shape(name)
        if not shape or any(d is None for d in shape[1:]):
            return None
        return _prod([int(d) for d in shape[1:] if d is not None]) * np.dtype(self.tensor_dtype(name)).itemsize

    def _sample_shape(self, name: str) -> Optional[Tuple[int, ...]]:
        shape = self.tensor_shape(name)
        if not shape or any(d is None for d in shape[1:]):
            return None
        return (1, *[int(d) for d in shape[1:] if d is not None])

    # ---- layers --------------------------------------------------------------------------------------
    def _layer(self, i: int, node: Any) -> Layer:
        data_in = [t for t in node.input if t and t not in self.initializers and t not in self.constants]
        in_shape = self._sample_shape(data_in[0]) if data_in else None
        out_shape = self._sample_shape(node.output[0]) if node.output else None
        params = sum(_prod(self.initializers[t].dims) for t in node.input if t in self.initializers)
        kind = LAYER_KINDS.get(node.op_type, "other")
        out_el = _prod(out_shape) if out_shape else 0
        flops = out_el
        if kind == "conv" and len(node.input) > 1 and node.input[1] in self.initializers:
            w = list(self.initializers[node.input[1]].dims)  # O, I/group, kH, kW
            flops = 2 * out_el * _prod(w[1:])
        elif kind == "fc" and len(node.input) > 1 and node.input[1] in self.initializers:
            w = list(self.initializers[node.input[1]].dims)
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            k_dim = w[1] if trans_b else w[0]
            flops = 2 * out_el * int(k_dim)
        elif kind == "pool":
            ks = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
            flops = out_el * (_prod(ks) if ks else 1) if ks else (in_shape and _prod(in_shape)) or out_el
        return Layer(i, node.name or f"{node.op_type}_{i}", node.op_type, kind, in_shape, out_shape, int(flops),
                     int(params))

    # ---- cuts ----------------------------------------------------------------------------------------
    def _enumerate(self) -> List[Cut]:
        n = len(self.nodes)
        free = set(self.initializers) | self.constants | {""}
        produced: Dict[str, int] = {i.name: -1 for i in self.inputs}
        last_use: Dict[str, int] = {}
        for j, node in enumerate(self.nodes):
            for t in node.input:
                if t not in free:
                    last_use[t] = j
            for t in node.output:
                produced.setdefault(t, j)
        for t in self.outputs:
            last_use[t] = n  # needed "after" the last node: a result
        cuts: List[Cut] = []
        if len(self.inputs) == 1:
            inp = self.inputs[0].name
            cuts.append(Cut(0, ALL_FOG, inp, self.tensor_shape(inp), self.tensor_dtype(inp),
                            self.tensor_bytes(inp), self._hash_tail(0, inp)))
        seen: Set[str] = set()
        for k in range(1, n):
            live = [t for t, p in produced.items() if p < k <= last_use.get(t, -2)]
            if len(live) != 1:
                continue
            t = live[0]
            if t in seen or produced[t] < 0 or t in self.outputs:
                continue  # the raw input (that is all-fog) or a result (that is all-local)
            seen.add(t)
            cuts.append(Cut(k, t, t, self.tensor_shape(t), self.tensor_dtype(t), self.tensor_bytes(t),
                            self._hash_tail(k, t)))
        out_bytes: Optional[int] = 0
        for t in self.outputs:
            b = self.tensor_bytes(t)
            out_bytes = None if b is None or out_bytes is None else out_bytes + b
        first = self.outputs[0] if self.outputs else ""
        cuts.append(Cut(n, ALL_LOCAL, first, self.tensor_shape(first), self.tensor_dtype(first), out_bytes, ""))
        return cuts

    @property
    def cuts(self) -> List[Cut]:
        """Every cut point, by ``k``: all-fog (if the graph has one data input), interior cuts, all-local."""
        return list(self._cuts)

    @property
    def interior_cuts(self) -> List[Cut]:
        return [c for c in self._cuts if c.interior]

    def get(self, name: str) -> Cut:
        for c in self._cuts:
            if c.name == name:
                return c
        raise PartitionError(f"graph {self.model.graph.name!r} has no single-tensor cut {name!r}; its cuts are "
                             f"{', '.join(c.name for c in self._cuts)}")

    # ---- head and tail graphs ------------------------------------------------------------------------
    def _value_info(self, name: str) -> Any:
        from onnx import helper

        vi = self._vi.get(name)
        elem = vi.type.tensor_type.elem_type if vi is not None else 1
        dims: List[Any] = []
        for i, d in enumerate(self.tensor_shape(name)):
            dims.append(d if d is not None else ("N" if i == 0 else f"d{i}"))
        return helper.make_tensor_value_info(name, elem, dims)

    def _submodel(self, nodes: Sequence[Any], inputs: Sequence[str], outputs: Sequence[str], suffix: str) -> Any:
        from onnx import helper

        used = {t for nd in nodes for t in nd.input}
        inits = [self.initializers[t] for t in self.initializers if t in used]
        graph = helper.make_graph(list(nodes), f"{self.model.graph.name}_{suffix}",
                                  [self._value_info(t) for t in inputs], [self._value_info(t) for t in outputs],
                                  inits)
        m = helper.make_model(graph, opset_imports=list(self.model.opset_import), producer_name="edged-partition")
        m.ir_version = self.model.ir_version
        return m

    def tail_nodes(self, k: int) -> List[Any]:
        """``nodes[k:]``, preceded by copies of the head's Constant nodes the tail reads."""
        tail = self.nodes[k:]
        need = {t for nd in tail for t in nd.input}
        consts = [nd for nd in self.nodes[:k] if nd.op_type == "Constant" and any(o in need for o in nd.output)]
        return [*consts, *tail]

    def head_model(self, cut: Union[Cut, str]) -> Any:
        """The ONNX model of ``nodes[:k]``: graph input(s) -> the cut tensor (k >= 1)."""
        c = self.get(cut) if isinstance(cut, str) else cut
        if c.k == 0:
            raise PartitionError(f"cut {ALL_FOG!r} has no head: the raw input is sent")
        if c.name == ALL_LOCAL:
            return self.model
        return self._submodel(self.nodes[:c.k], [i.name for i in self.inputs], [c.tensor], f"head_{c.name}")

    def tail_model(self, cut: Union[Cut, str]) -> Any:
        """The ONNX model of ``nodes[k:]``: the cut tensor -> the graph outputs."""
        c = self.get(cut) if isinstance(cut, str) else cut
        if c.name == ALL_LOCAL:
            raise PartitionError(f"cut {ALL_LOCAL!r} has no tail: nothing runs on the fog")
        return self._build_tail(c.k, c.tensor)

    def _build_tail(self, k: int, tensor: str) -> Any:
        if k == 0:
            return self._submodel(self.nodes, [i.name for i in self.inputs], self.outputs, "tail_all")
        return self._submodel(self.tail_nodes(k), [tensor], self.outputs, f"tail_{tensor}")

    def _hash_tail(self, k: int, tensor: str) -> str:
        return hashlib.sha256(self._build_tail(k, tensor).SerializeToString(deterministic=True)).hexdigest()


def analyse(model: Union[str, Path, bytes, Any]) -> GraphPlan:
    """Cuts and layers of an ONNX model given as a path, bytes or a ``ModelProto``."""
    onnx = require_onnx()
    if isinstance(model, (str, Path)):
        try:
            proto = onnx.load(str(model))
        except Exception as exc:
            raise PartitionError(f"cannot read ONNX model {model}: {exc}") from exc
    elif isinstance(model, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(model))
    else:
        proto = model
    return GraphPlan(proto)
