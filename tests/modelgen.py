"""Small models built inside the tests: ONNX with the `onnx` helper API, TFLite written as a flatbuffer.

No downloads and no TensorFlow. Each builder returns the model's bytes; :func:`write_model`
puts a model directory (artifacts + manifest.json with real sha256) under a models root, so
tests exercise the same catalogue path a user's model takes.

ONNX models (weights from a seeded RNG):
- :func:`onnx_stateful`: 3 inputs ``x`` [N,16] f32, ``h`` [N,8] f32 (recurrent state), ``sr`` [1] int64
  (no batch axis) -> ``y`` [N,1] (speech probability) and ``h_out`` [N,8] (next state), a VAD's shape.
- :func:`onnx_two_outputs`: ``x`` [N,6] -> ``probs`` [N,3] (softmax) and ``emb`` [N,2,2] (a tensor).
- :func:`onnx_dynamic_hw`: ``x`` [N,1,H,W] (H, W dynamic) -> ``mask`` [N,1,H,W] (3x3 conv, 8 channels).

TFLite models (the minimal subset of the TFLite schema, enough for the interpreter):
- :func:`tflite_stateful`: ``x``, ``h`` [-1,4] f32 -> ``h_out`` = tanh(x + h), ``y`` = h_out * h_out.
- :func:`tflite_dynamic_hw`: ``x`` [1,-1,-1,1] f32 -> ``y`` = x * x.
- :func:`tflite_quantized`: ``q`` int8/uint8 [-1,4] -> dequantize -> add to itself -> ``y`` int8/uint8
  (own scale/zero point) and ``yf`` float32.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

OPSET = 13
SEED = 1234


# --------------------------------------------------------------------------- ONNX


def _onnx_model(nodes: List[Any], inputs: List[Any], outputs: List[Any], inits: Sequence[Tuple[str, np.ndarray]],
                name: str) -> bytes:
    from onnx import checker, helper, numpy_helper

    graph = helper.make_graph(nodes, name, inputs, outputs,
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edged-tests")
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    checker.check_model(model)
    return bytes(model.SerializeToString())


def stateful_weights() -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return {
        "Wx": (rng.standard_normal((16, 8)) * 0.3).astype(np.float32),
        "Wh": (rng.standard_normal((8, 8)) * 0.3).astype(np.float32),
        "V": (rng.standard_normal((8, 1)) * 0.5).astype(np.float32),
        "k": np.array([1e-4], np.float32),
    }


def onnx_stateful() -> bytes:
    """h_out = tanh(x Wx + h Wh); y = sigmoid(h_out V + sr * 1e-4)."""
    from onnx import TensorProto, helper

    w = stateful_weights()
    nodes = [
        helper.make_node("MatMul", ["x", "Wx"], ["xw"]),
        helper.make_node("MatMul", ["h", "Wh"], ["hw"]),
        helper.make_node("Add", ["xw", "hw"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_out"]),
        helper.make_node("MatMul", ["h_out", "V"], ["hv"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["srf", "k"], ["srk"]),
        helper.make_node("Add", ["hv", "srk"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
        helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 8]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, [1]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1]),
        helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", 8]),
    ]
    return _onnx_model(nodes, inputs, outputs, list(w.items()), "stateful")


def stateful_reference(x: np.ndarray, h: np.ndarray, sr: int) -> Tuple[np.ndarray, np.ndarray]:
    """The stateful model in numpy: (y, h_out)."""
    w = stateful_weights()
    h_out = np.tanh(x @ w["Wx"] + h @ w["Wh"])
    y = 1.0 / (1.0 + np.exp(-(h_out @ w["V"] + np.float32(sr) * w["k"])))
    return y.astype(np.float32), h_out.astype(np.float32)


def onnx_two_outputs() -> bytes:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(SEED + 1)
    inits = [
        ("W", (rng.standard_normal((6, 3)) * 2).astype(np.float32)),
        ("E", rng.standard_normal((6, 4)).astype(np.float32)),
        ("shape", np.array([-1, 2, 2], np.int64)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["x", "E"], ["e"]),
        helper.make_node("Reshape", ["e", "shape"], ["emb"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])]
    outputs = [
        helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3]),
        helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 2, 2]),
    ]
    return _onnx_model(nodes, inputs, outputs, inits, "two_outputs")


def onnx_dynamic_hw(channels: int = 8) -> bytes:
    """x [N,1,H,W] -> mask [N,1,H,W] = mean over channels of relu(conv3x3(x)); cost grows with H*W."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(SEED + 2)
    inits = [("K", rng.standard_normal((channels, 1, 3, 3)).astype(np.float32))]
    nodes = [
        helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["mask"], axes=[1], keepdims=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])]
    outputs = [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, "H", "W"])]
    return _onnx_model(nodes, inputs, outputs, inits, "dynamic_hw")


# --------------------------------------------------------------------------- TFLite (flatbuffer by hand)

# TensorType and BuiltinOperator values from the TFLite schema (tensorflow/lite/schema/schema.fbs).
TFL_TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int64": 4, "int8": 9}
OP_ADD, OP_DEQUANTIZE, OP_LOGISTIC, OP_MUL, OP_TANH, OP_QUANTIZE = 0, 6, 14, 18, 28, 114


def _tflite(tensors: List[Dict[str, Any]], inputs: List[int], outputs: List[int],
            ops: List[Tuple[int, List[int], List[int]]], signature: bool = True) -> bytes:
    """Serialise one subgraph. tensors: {name, shape (-1 = dynamic), dtype, quant=(scale, zp)|None}.

    ops: (builtin code, input tensor indices, output tensor indices). With ``signature`` the model carries a
    ``serving_default`` signature naming inputs and outputs by their tensor names.
    """
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def ivec(vals: Sequence[int]) -> int:
        b.StartVector(4, len(vals), 4)
        for v in reversed(vals):
            b.PrependInt32(int(v))
        return b.EndVector()

    def offvec(offs: Sequence[int]) -> int:
        b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    # buffers: 0 is the conventional empty buffer; every tensor uses it (no constants needed)
    b.StartObject(3)
    empty_buf = b.EndObject()
    buffers = offvec([empty_buf])

    t_offs = []
    for t in tensors:
        name = b.CreateString(t["name"])
        shape_sig = [int(d) for d in t["shape"]]
        shape = ivec([d if d > 0 else 1 for d in shape_sig])
        sig = ivec(shape_sig)
        q = None
        if t.get("quant"):
            scale, zp = t["quant"]
            b.StartVector(4, 1, 4)
            b.PrependFloat32(float(scale))
            scale_v = b.EndVector()
            b.StartVector(8, 1, 8)
            b.PrependInt64(int(zp))
            zp_v = b.EndVector()
            b.StartObject(7)
            b.PrependUOffsetTRelativeSlot(2, scale_v, 0)
            b.PrependUOffsetTRelativeSlot(3, zp_v, 0)
            q = b.EndObject()
        b.StartObject(10)
        b.PrependUOffsetTRelativeSlot(0, shape, 0)
        b.PrependInt8Slot(1, TFL_TYPES[t["dtype"]], 0)
        b.PrependUint32Slot(2, 0, 0)
        b.PrependUOffsetTRelativeSlot(3, name, 0)
        if q is not None:
            b.PrependUOffsetTRelativeSlot(4, q, 0)
        b.PrependUOffsetTRelativeSlot(7, sig, 0)
        t_offs.append(b.EndObject())

    codes = sorted({op for op, _, _ in ops})
    o_offs = []
    for op, ins, outs in ops:
        iv, ov = ivec(ins), ivec(outs)
        b.StartObject(6)
        b.PrependUint32Slot(0, codes.index(op), 0)
        b.PrependUOffsetTRelativeSlot(1, iv, 0)
        b.PrependUOffsetTRelativeSlot(2, ov, 0)
        o_offs.append(b.EndObject())
    c_offs = []
    for op in codes:
        b.StartObject(4)
        b.PrependInt8Slot(0, min(op, 127), 0)
        b.PrependInt32Slot(2, 1, 1)
        b.PrependInt32Slot(3, op, 0)
        c_offs.append(b.EndObject())

    tensors_v, ops_v = offvec(t_offs), offvec(o_offs)
    in_v, out_v = ivec(inputs), ivec(outputs)
    sg_name = b.CreateString("main")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tensors_v, 0)
    b.PrependUOffsetTRelativeSlot(1, in_v, 0)
    b.PrependUOffsetTRelativeSlot(2, out_v, 0)
    b.PrependUOffsetTRelativeSlot(3, ops_v, 0)
    b.PrependUOffsetTRelativeSlot(4, sg_name, 0)
    subgraph = b.EndObject()

    sigs_v = None
    if signature:
        def tmaps(idx: Sequence[int]) -> int:
            offs = []
            for i in idx:
                n = b.CreateString(tensors[i]["name"])
                b.StartObject(2)
                b.PrependUOffsetTRelativeSlot(0, n, 0)
                b.PrependUint32Slot(1, i, 0)
                offs.append(b.EndObject())
            return offvec(offs)

        sin, sout = tmaps(inputs), tmaps(outputs)
        key = b.CreateString("serving_default")
        b.StartObject(5)
        b.PrependUOffsetTRelativeSlot(0, sin, 0)
        b.PrependUOffsetTRelativeSlot(1, sout, 0)
        b.PrependUOffsetTRelativeSlot(2, key, 0)
        b.PrependUint32Slot(4, 0, 0)
        sigs_v = offvec([b.EndObject()])

    codes_v, subgraphs_v = offvec(c_offs), offvec([subgraph])
    desc = b.CreateString("edged tests")
    b.StartObject(8)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, codes_v, 0)
    b.PrependUOffsetTRelativeSlot(2, subgraphs_v, 0)
    b.PrependUOffsetTRelativeSlot(3, desc, 0)
    b.PrependUOffsetTRelativeSlot(4, buffers, 0)
    if sigs_v is not None:
        b.PrependUOffsetTRelativeSlot(7, sigs_v, 0)
    model = b.EndObject()
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())


def tflite_stateful(width: int = 4) -> bytes:
    """x, h [-1, width] -> h_out = tanh(x + h) (state), y = h_out * h_out."""
    t = [
        {"name": "x", "shape": [-1, width], "dtype": "float32"},
        {"name": "h", "shape": [-1, width], "dtype": "float32"},
        {"name": "pre", "shape": [-1, width], "dtype": "float32"},
        {"name": "h_out", "shape": [-1, width], "dtype": "float32"},
        {"name": "y", "shape": [-1, width], "dtype": "float32"},
    ]
    ops = [(OP_ADD, [0, 1], [2]), (OP_TANH, [2], [3]), (OP_MUL, [3, 3], [4])]
    return _tflite(t, [0, 1], [4, 3], ops)


def tflite_dynamic_hw() -> bytes:
    """x [1, -1, -1, 1] -> y = x * x (same shape)."""
    t = [
        {"name": "x", "shape": [1, -1, -1, 1], "dtype": "float32"},
        {"name": "y", "shape": [1, -1, -1, 1], "dtype": "float32"},
    ]
    return _tflite(t, [0], [1], [(OP_MUL, [0, 0], [1])])


QUANT_IN = {"int8": (0.02, 3), "uint8": (0.02, 128)}
QUANT_OUT = {"int8": (0.05, -2), "uint8": (0.05, 126)}


def tflite_quantized(dtype: str = "int8", width: int = 4) -> bytes:
    """q (dtype, scale/zp QUANT_IN) -> dequantize -> f + f -> yf (float32) and y = quantize(yf) (QUANT_OUT)."""
    t = [
        {"name": "q", "shape": [-1, width], "dtype": dtype, "quant": QUANT_IN[dtype]},
        {"name": "f", "shape": [-1, width], "dtype": "float32"},
        {"name": "yf", "shape": [-1, width], "dtype": "float32"},
        {"name": "y", "shape": [-1, width], "dtype": dtype, "quant": QUANT_OUT[dtype]},
    ]
    ops = [(OP_DEQUANTIZE, [0], [1]), (OP_ADD, [1, 1], [2]), (OP_QUANTIZE, [2], [3])]
    return _tflite(t, [0], [3, 2], ops)


def quantized_reference(x: np.ndarray, dtype: str = "int8") -> Tuple[np.ndarray, np.ndarray]:
    """What :func:`tflite_quantized` returns for float input x, dequantised: (y, yf)."""
    info = np.iinfo(dtype)
    s_in, z_in = QUANT_IN[dtype]
    s_out, z_out = QUANT_OUT[dtype]
    q = np.clip(np.rint(x / np.float32(s_in)) + z_in, info.min, info.max)
    yf = ((q - z_in) * np.float32(s_in) * 2).astype(np.float32)
    qy = np.clip(np.rint(yf / np.float32(s_out)) + z_out, info.min, info.max)
    return ((qy - z_out) * np.float32(s_out)).astype(np.float32), yf


# --------------------------------------------------------------------------- model directories


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_model(root: Path, name: str, manifest: Mapping[str, Any], artifacts: Mapping[str, Tuple[str, bytes]],
                validation: Optional[Mapping[str, np.ndarray]] = None) -> Path:
    """Write ``root/name/`` with the artifacts (backend -> (file name, bytes)) and manifest.json.

    ``manifest`` holds everything but ``artifacts``, whose ``file``/``sha256`` are filled in here
    (extra per-artifact keys such as ``layouts`` go in ``manifest["artifact_options"][backend]``).
    """
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    m = {k: v for k, v in manifest.items() if k != "artifact_options"}
    opts = manifest.get("artifact_options", {})
    m["artifacts"] = {}
    for backend, (fname, blob) in artifacts.items():
        (d / fname).write_bytes(blob)
        m["artifacts"][backend] = {"file": fname, "sha256": sha256(blob), **opts.get(backend, {})}
    if validation is not None:
        np.savez(d / "validation.npz", **validation)
    (d / "manifest.json").write_text(json.dumps(m, indent=2))
    return d


STATEFUL_MANIFEST: Dict[str, Any] = {
    "format": "edged-model/2",
    "inputs": [
        {"name": "x", "shape": [-1, 16], "dtype": "float32", "layout": "NC"},
        {"name": "h", "shape": [-1, 8], "dtype": "float32", "layout": "NC", "initial": 0.0},
        {"name": "sr", "shape": [1], "dtype": "int64", "batch": False},
    ],
    "outputs": [
        {"name": "y", "kind": "regression"},
        {"name": "h_out", "kind": "state", "state_input": "h"},
    ],
}

TWO_OUTPUT_MANIFEST: Dict[str, Any] = {
    "format": "edged-model/2",
    "inputs": [{"name": "x", "shape": [-1, 6], "dtype": "float32", "layout": "NC"}],
    "outputs": [
        {"name": "probs", "kind": "probabilities", "labels": ["cat", "dog", "owl"], "top_k": 2},
        {"name": "emb", "kind": "tensor"},
    ],
}

DYNAMIC_MANIFEST: Dict[str, Any] = {
    "format": "edged-model/2",
    "inputs": [{"name": "x", "shape": [-1, "H", "W", 1], "dtype": "float32", "layout": "NHWC"}],
    "outputs": [{"name": "mask", "kind": "tensor"}],
    "profile_shapes": [[1, 32, 32, 1], [1, 256, 256, 1]],
    "artifact_options": {"onnx": {"layout": "NCHW"}},
}
