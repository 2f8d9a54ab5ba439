#!/usr/bin/env python3
"""Rebuild every shipped model artifact from scratch, with fixed seeds.

    pip install -e '.[train]'      # tensorflow-cpu, scikit-learn, onnx
    python models/build.py          # writes models/{mlp,cnn}/*

For each model this writes ``model.tflite`` (LiteRT, float32), ``model.onnx``
(opset 13, written node by node from the trained Keras weights so no converter
version can change the graph), ``validation.npz`` (the held-out set WCET and
accuracy are measured on: ``x`` float32 in the canonical layout, ``y`` int64)
and ``manifest.json`` (input spec, labels, preprocessing, sha256 of every
artifact, parameter count, FLOPs, accuracy and macro-F1 of each artifact on
the held-out set).

Models (Saguil & Azim's pair, and a quantised variant):
- ``mlp``: 1-D signal classifier. Wisconsin breast-cancer features (30 floats),
  one hidden Dense(32, relu), softmax over 2 classes. Standardisation is folded
  into the first layer, so the model takes raw sensor values.
- ``cnn``: image classifier. scikit-learn digits (8x8 grey, scaled to [0, 1]):
  Conv2D(16) -> Conv2D(32) -> MaxPool(2) -> Flatten -> Dense(128, relu) -> Dense(10, softmax).
  Canonical layout NHWC (what a sensor sends); the ONNX artifact is NCHW and the
  catalogue transposes, which keeps layout handling exercised on a real model.
- ``rgbcnn``: the model where partitioning pays (issue 12). 64x64 RGB images: the scikit-learn digits
  upsampled x8 (bilinear), shifted by up to 4 px and colourised with a random foreground and
  background per image (fixed seed), as 8-bit pixels. Input: raw pixel values 0..255 (float32,
  NHWC); the /255 scaling is folded into the first convolution. Early layers shrink the tensor
  fast (:data:`RGBCNN_LAYERS`: a stride-2 conv, a 1x1 conv and MaxPool take the 48 KiB input to
  8 KiB at ``p1``, then 4 KiB at ``p2`` and 2 KiB at ``p3``) while ~90 % of the FLOPs come after
  ``p1`` (wide 3x3 convs between the pools): a cut can send far less than the input and leave
  most of the work to a faster fog. ``validation.npz`` holds ``x`` as uint8
  pixels (the catalogue casts to the declared float32), which keeps the file small.
- ``cnn_int8``: the shipped ``cnn``, full-integer quantised for LiteRT (int8 weights,
  activations, input and output). Not retrained: the Keras model is rebuilt from
  ``models/cnn/model.onnx``'s weights (checked against that file's outputs), and the
  converter calibrates on the cnn's training split. Senders still send float pixels:
  edged quantises the input and dequantises the probabilities with the tensors' own
  scale and zero point (or a sender may send int8 directly). The manifest carries its
  accuracy and macro-F1 as edged serves it, and its agreement with the float ``cnn``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # edged from this checkout, installed or not

# The same sha256 the catalogue verifies and the same macro-F1 `edged profile` re-measures.
from edged.models import sha256_file  # noqa: E402
from edged.profile import macro_f1  # noqa: E402

SEED = 20240501
OPSET = 13


def split(x: np.ndarray, y: np.ndarray, frac: float = 0.25) -> Tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    return tuple(train_test_split(x, y, test_size=frac, random_state=SEED, stratify=y))


# --------------------------------------------------------------------------- datasets


def mlp_data() -> Dict[str, Any]:
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    x = ds.data.astype(np.float32)
    y = ds.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = split(x, y)
    return {
        "x_tr": x_tr, "y_tr": y_tr, "x_va": x_va, "y_va": y_va,
        "labels": [str(n) for n in ds.target_names],
        "feature_names": [str(n) for n in ds.feature_names],
        "dataset": "sklearn.datasets.load_breast_cancer (Wisconsin diagnostic, 569 x 30)",
    }


def cnn_data() -> Dict[str, Any]:
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = (ds.images.astype(np.float32) / 16.0)[..., np.newaxis]  # N, 8, 8, 1 (NHWC)
    y = ds.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = split(x, y)
    return {
        "x_tr": x_tr, "y_tr": y_tr, "x_va": x_va, "y_va": y_va,
        "labels": [str(i) for i in range(10)],
        "dataset": "sklearn.datasets.load_digits (8x8 grey digits, 1797 images)",
    }


RGBCNN_SIDE = 64
RGBCNN_SHIFT = 4  # pixels of random translation


def rgbcnn_data() -> Dict[str, Any]:
    """Digits as 64x64 RGB camera-like images (uint8 pixels), deterministic (``SEED``)."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    ds = load_digits()
    rng = np.random.default_rng(SEED)
    grey = ds.images.astype(np.float32) / 16.0  # N, 8, 8 in [0, 1]
    n = len(grey)
    side = RGBCNN_SIDE
    up = np.stack([np.clip(zoom(g, side // 8, order=1, mode="nearest"), 0.0, 1.0) for g in grey])
    shifts = rng.integers(-RGBCNN_SHIFT, RGBCNN_SHIFT + 1, size=(n, 2))
    bg = rng.uniform(0.0, 0.45, size=(n, 3)).astype(np.float32)
    fg = rng.uniform(0.55, 1.0, size=(n, 3)).astype(np.float32)
    x = np.empty((n, side, side, 3), dtype=np.uint8)
    for i in range(n):
        v = np.roll(up[i], tuple(int(s) for s in shifts[i]), axis=(0, 1))
        rgb = bg[i] + (fg[i] - bg[i]) * v[..., np.newaxis]
        x[i] = np.round(rgb * 255.0).astype(np.uint8)
    y = ds.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = split(x, y)
    return {
        "x_tr": x_tr, "y_tr": y_tr, "x_va": x_va, "y_va": y_va,
        "labels": [str(i) for i in range(10)],
        "dataset": "sklearn.datasets.load_digits upsampled x8 (bilinear) to 64x64, shifted up to "
                   f"{RGBCNN_SHIFT} px, colourised per image (seed {SEED}); 1797 RGB images, uint8 pixels",
    }


# --------------------------------------------------------------------------- training


def train_mlp(d: Dict[str, Any]):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    mean = d["x_tr"].mean(axis=0)
    std = d["x_tr"].std(axis=0) + 1e-8
    z_tr = (d["x_tr"] - mean) / std
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(30,), name="input"),
        tf.keras.layers.Dense(32, activation="relu", name="hidden"),
        tf.keras.layers.Dense(2, activation="softmax", name="probs"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(z_tr, d["y_tr"], epochs=60, batch_size=32, verbose=0, shuffle=True)
    # Fold standardisation into the first Dense layer: W' = W / std, b' = b - (mean / std) @ W.
    w1, b1 = model.get_layer("hidden").get_weights()
    w1f = (w1 / std[:, None]).astype(np.float32)
    b1f = (b1 - (mean / std) @ w1).astype(np.float32)
    model.get_layer("hidden").set_weights([w1f, b1f])
    return model, {"standardisation_folded": True, "mean": mean.tolist(), "std": std.tolist()}


def train_cnn(d: Dict[str, Any]):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    model = tf.keras.Sequential([
        tf.keras.Input(shape=(8, 8, 1), name="input"),
        tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        tf.keras.layers.MaxPooling2D(2, name="pool"),
        tf.keras.layers.Flatten(name="flatten"),
        tf.keras.layers.Dense(128, activation="relu", name="dense"),
        tf.keras.layers.Dense(10, activation="softmax", name="probs"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(d["x_tr"], d["y_tr"], epochs=30, batch_size=32, verbose=0, shuffle=True)
    return model, {"scale": "pixel / 16.0 -> [0, 1]"}


#: rgbcnn's layers in order: ("conv", name, filters, kernel, stride) | ("pool", name). A strided conv and
#: pooling shrink the 64x64x3 input (48 KiB) to 8 KiB at pool1 while ~90 % of the FLOPs come after it;
#: the 1x1 convs keep the tensors at the pools small (8, 4, 2 KiB) while the 3x3 convs between them are wide.
RGBCNN_LAYERS: List[Tuple[Any, ...]] = [
    ("conv", "conv1", 32, 3, 2), ("conv", "conv1b", 8, 1, 1), ("pool", "pool1"),
    ("conv", "conv2", 48, 3, 1), ("conv", "conv2b", 48, 3, 1), ("conv", "conv2c", 16, 1, 1), ("pool", "pool2"),
    ("conv", "conv3", 64, 3, 1), ("conv", "conv3b", 64, 3, 1), ("conv", "conv3c", 32, 1, 1), ("pool", "pool3"),
]


def rgbcnn_keras():  # type: ignore[no-untyped-def]
    import tensorflow as tf

    layers: List[Any] = [tf.keras.Input(shape=(RGBCNN_SIDE, RGBCNN_SIDE, 3), name="input")]
    for spec in RGBCNN_LAYERS:
        if spec[0] == "conv":
            _, name, filters, k, stride = spec
            layers.append(tf.keras.layers.Conv2D(filters, k, strides=stride, padding="same", activation="relu",
                                                 name=name))
        else:
            layers.append(tf.keras.layers.MaxPooling2D(2, name=spec[1]))
    layers += [tf.keras.layers.Flatten(name="flatten"), tf.keras.layers.Dense(64, activation="relu", name="dense"),
               tf.keras.layers.Dense(10, activation="softmax", name="probs")]
    return tf.keras.Sequential(layers)


def train_rgbcnn(d: Dict[str, Any]):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    model = rgbcnn_keras()
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(d["x_tr"].astype(np.float32) / 255.0, d["y_tr"], epochs=25, batch_size=32, verbose=0, shuffle=True)
    # Fold the /255 pixel scaling into the first convolution: the model takes raw 0..255 pixels.
    k1, c1 = model.get_layer("conv1").get_weights()
    model.get_layer("conv1").set_weights([(k1 / 255.0).astype(np.float32), c1])
    return model, {"scale": "raw 8-bit pixels 0..255 as float32; /255 folded into conv1", "layout": "NHWC RGB"}


# --------------------------------------------------------------------------- export


def export_tflite(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Float32 flatbuffer with a dynamic batch dimension (shape_signature -1)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = []
    path.write_bytes(conv.convert())


def _init(name: str, arr: np.ndarray):  # type: ignore[no-untyped-def]
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(arr), name=name)


def export_onnx_mlp(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    import onnx
    from onnx import TensorProto, helper

    w1, b1 = model.get_layer("hidden").get_weights()
    w2, b2 = model.get_layer("probs").get_weights()
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "edged_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])],
        [_init("w1", w1), _init("b1", b1), _init("w2", w2), _init("b2", b2)],
    )
    _save_onnx(onnx, helper, graph, path)


def export_onnx_cnn(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    import onnx
    from onnx import TensorProto, helper

    k1, c1 = model.get_layer("conv1").get_weights()  # HWIO
    k2, c2 = model.get_layer("conv2").get_weights()
    w3, b3 = model.get_layer("dense").get_weights()
    w4, b4 = model.get_layer("probs").get_weights()
    oihw = (3, 2, 0, 1)
    nodes = [
        helper.make_node("Conv", ["input", "k1", "c1"], ["a1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "k2", "c2"], ["a2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        # Keras flattens in HWC order: go back to NHWC before Flatten so Dense weights match.
        helper.make_node("Transpose", ["p"], ["p_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Flatten", ["p_nhwc"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["d_pre"]),
        helper.make_node("Relu", ["d_pre"], ["d"]),
        helper.make_node("Gemm", ["d", "w4", "b4"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "edged_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        [_init("k1", k1.transpose(oihw)), _init("c1", c1), _init("k2", k2.transpose(oihw)), _init("c2", c2),
         _init("w3", w3), _init("b3", b3), _init("w4", w4), _init("b4", b4)],
    )
    _save_onnx(onnx, helper, graph, path)


def export_onnx_rgbcnn(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    """NCHW graph from :data:`RGBCNN_LAYERS`; Keras 'same' padding with stride 2 on an even side pads one
    pixel at the end only. Tensors: ``a<i>``/``r<i>`` per conv (``conv2b`` -> ``a2b``, ``r2b``), ``p1..p3``."""
    import onnx
    from onnx import TensorProto, helper

    oihw = (3, 2, 0, 1)
    inits = []
    nodes = []
    cur = "input"
    for spec in RGBCNN_LAYERS:
        if spec[0] == "pool":
            out = "p" + spec[1][len("pool"):]
            nodes.append(helper.make_node("MaxPool", [cur], [out], kernel_shape=[2, 2], strides=[2, 2]))
            cur = out
            continue
        _, name, _filters, k, stride = spec
        i = name[len("conv"):]
        kern, bias = model.get_layer(name).get_weights()
        inits += [_init(f"k{i}", kern.transpose(oihw)), _init(f"c{i}", bias)]
        pads = [0, 0, 1, 1] if stride == 2 else [k // 2] * 4
        nodes += [helper.make_node("Conv", [cur, f"k{i}", f"c{i}"], [f"a{i}"], kernel_shape=[k, k],
                                   strides=[stride, stride], pads=pads),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        cur = f"r{i}"
    w4, b4 = model.get_layer("dense").get_weights()
    w5, b5 = model.get_layer("probs").get_weights()
    inits += [_init("w4", w4), _init("b4", b4), _init("w5", w5), _init("b5", b5)]
    nodes += [
        # Keras flattens in HWC order: go back to NHWC before Flatten so Dense weights match.
        helper.make_node("Transpose", [cur], [f"{cur}_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Flatten", [f"{cur}_nhwc"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["d_pre"]),
        helper.make_node("Relu", ["d_pre"], ["d"]),
        helper.make_node("Gemm", ["d", "w5", "b5"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "edged_rgbcnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, RGBCNN_SIDE, RGBCNN_SIDE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    _save_onnx(onnx, helper, graph, path)


def _save_onnx(onnx, helper, graph, path: Path) -> None:  # type: ignore[no-untyped-def]
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edged-models-build")
    m.ir_version = 8  # readable by onnxruntime >= 1.14 (Pi / Jetson wheels lag behind)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


# --------------------------------------------------------------------------- evaluation


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def metrics(probs: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    pred = probs.argmax(axis=1)
    return {"accuracy": round(float(np.mean(pred == y)), 6), "macro_f1": round(macro_f1(y, pred), 6)}


def count_flops(model) -> Tuple[int, int]:  # type: ignore[no-untyped-def]
    """(parameters, FLOPs per input) with FLOPs = 2 x multiply-accumulates of Dense/Conv layers."""
    params = int(model.count_params())
    flops = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Dense":
            w = layer.get_weights()[0]
            flops += 2 * w.shape[0] * w.shape[1]
        elif kind == "Conv2D":
            kh, kw, cin, cout = layer.get_weights()[0].shape
            _, oh, ow, _ = layer.output.shape
            flops += 2 * kh * kw * cin * cout * oh * ow
    return params, int(flops)


def build(name: str, out_dir: Path) -> Dict[str, Any]:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # older TF
        pass
    d = {"mlp": mlp_data, "cnn": cnn_data, "rgbcnn": rgbcnn_data}[name]()
    model, prep = {"mlp": train_mlp, "cnn": train_cnn, "rgbcnn": train_rgbcnn}[name](d)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_stored = d["x_va"]  # rgbcnn: uint8 pixels, the float32 the model takes is the same numbers
    x_va = np.ascontiguousarray(d["x_va"], dtype=np.float32)
    y_va = np.asarray(d["y_va"], dtype=np.int64)
    n_classes = len(d["labels"])

    tfl, onx, val = out_dir / "model.tflite", out_dir / "model.onnx", out_dir / "validation.npz"
    export_tflite(model, tfl)
    {"mlp": export_onnx_mlp, "cnn": export_onnx_cnn, "rgbcnn": export_onnx_rgbcnn}[name](model, onx)
    np.savez_compressed(val, x=x_stored if name == "rgbcnn" else x_va, y=y_va)

    keras_p = model.predict(x_va, verbose=0)
    onnx_in = x_va if name == "mlp" else np.ascontiguousarray(x_va.transpose(0, 3, 1, 2))
    onnx_p = run_onnx(onx, onnx_in)
    tfl_p = run_tflite(tfl, x_va)
    delta = float(max(np.abs(onnx_p - keras_p).max(), np.abs(tfl_p - keras_p).max()))
    if delta > 1e-4:
        raise SystemExit(f"{name}: exported artifacts disagree with Keras by {delta:.2e} (> 1e-4)")
    params, flops = count_flops(model)

    layout = "NC" if name == "mlp" else "NHWC"
    in_shape: List[Any] = [None, *[int(v) for v in x_va.shape[1:]]]
    manifest: Dict[str, Any] = {
        "format": "edged-model/1",
        "name": name,
        "description": (
            "MLP for 1-D signals: Dense(32, relu) -> Dense(2, softmax); breast-cancer features"
            if name == "mlp" else
            "CNN for 64x64 RGB images whose early layers shrink the tensor (partitioning pays): "
            "Conv2D(32, stride 2)->Conv2D(8, 1x1)->MaxPool->Conv2D(48)->Conv2D(48)->Conv2D(16, 1x1)->MaxPool->"
            "Conv2D(64)->Conv2D(64)->Conv2D(32, 1x1)->MaxPool->Flatten->Dense(64, relu)->Dense(10, softmax); "
            "input raw 0..255 pixels"
            if name == "rgbcnn" else
            "CNN for 8x8 grey images: Conv2D(16)->Conv2D(32)->MaxPool->Flatten->Dense(128, relu)->Dense(10, softmax)"
        ),
        "task": "classification",
        "input": {"name": "input", "shape": in_shape, "dtype": "float32", "layout": layout},
        "output": {"name": "probs", "shape": [None, n_classes], "dtype": "float32", "kind": "probabilities"},
        "labels": d["labels"],
        "preprocessing": prep,
        "artifacts": {
            "onnx": {"file": onx.name, "sha256": sha256_file(onx), "layout": "NC" if name == "mlp" else "NCHW",
                     "opset": OPSET},
            "litert": {"file": tfl.name, "sha256": sha256_file(tfl), "layout": layout},
        },
        "validation": {"file": val.name, "sha256": sha256_file(val), "count": int(len(y_va)),
                       "split": f"stratified 25% hold-out, seed {SEED}"},
        "parameters": params,
        "flops": flops,
        "metrics": {
            "keras": metrics(keras_p, y_va),
            "onnx": metrics(onnx_p, y_va),
            "litert": metrics(tfl_p, y_va),
            "max_abs_output_delta": delta,
        },
        "dataset": d["dataset"],
        "build": {"seed": SEED, "tensorflow": tf.__version__, "numpy": np.__version__, "script": "models/build.py"},
    }
    if name == "rgbcnn":  # LiteRT has no graph extraction: heads and tails come from the Keras model
        manifest["partition"] = {"litert_splits": export_tflite_cuts(model, out_dir, x_va, tfl_p, RGBCNN_TFLITE_CUTS)}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


#: Keras layer after which a LiteRT cut is written -> the name of the same cut in the ONNX graph
RGBCNN_TFLITE_CUTS = {"pool1": "p1", "pool3": "p3"}


def export_tflite_cuts(model, out_dir: Path, x_va: np.ndarray, full_p: np.ndarray,  # type: ignore[no-untyped-def]
                       cuts: Dict[str, str]) -> Dict[str, Any]:
    """``cuts/<cut>.head.tflite`` and ``.tail.tflite`` per cut, split from the Keras model (which shares its
    layers, so the weights are the same), each pair checked against the full flatbuffer (max |d| <= 1e-5).
    The intermediate tensor is NHWC here (NCHW in the ONNX graph); ``edged.partition.litert`` transposes."""
    import tensorflow as tf

    cut_dir = out_dir / "cuts"
    cut_dir.mkdir(exist_ok=True)
    out: Dict[str, Any] = {}
    for j, layer in enumerate(model.layers):
        if layer.name not in cuts:
            continue
        cut = cuts[layer.name]
        shape = [int(v) for v in layer.output.shape[1:]]
        head = tf.keras.Sequential([tf.keras.Input(shape=tuple(model.input_shape[1:]), name="input"),
                                    *model.layers[: j + 1]])
        tail = tf.keras.Sequential([tf.keras.Input(shape=tuple(shape), name=cut), *model.layers[j + 1:]])
        hp, tp = cut_dir / f"{cut}.head.tflite", cut_dir / f"{cut}.tail.tflite"
        export_tflite(head, hp)
        export_tflite(tail, tp)
        got = run_tflite(tp, run_tflite(hp, x_va))
        delta = float(np.abs(got - full_p).max())
        if delta > 1e-5:
            raise SystemExit(f"LiteRT cut {cut}: head + tail differ from model.tflite by {delta:.2e} (> 1e-5)")
        out[cut] = {"keras_layer": layer.name, "head": f"cuts/{hp.name}", "head_sha256": sha256_file(hp),
                    "tail": f"cuts/{tp.name}", "tail_sha256": sha256_file(tp), "layout": "NHWC",
                    "shape": [None, *shape], "bytes": int(np.prod(shape)) * 4, "max_abs_delta": delta}
    return out


# --------------------------------------------------------------------------- cnn_int8


def cnn_from_onnx(onnx_path: Path):  # type: ignore[no-untyped-def]
    """The Keras cnn with the weights of a shipped model.onnx (inverse of export_onnx_cnn)."""
    import onnx
    import tensorflow as tf
    from onnx import numpy_helper

    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    hwio = (2, 3, 1, 0)  # OIHW -> HWIO
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(8, 8, 1), name="input"),
        tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        tf.keras.layers.MaxPooling2D(2, name="pool"),
        tf.keras.layers.Flatten(name="flatten"),
        tf.keras.layers.Dense(128, activation="relu", name="dense"),
        tf.keras.layers.Dense(10, activation="softmax", name="probs"),
    ])
    model.get_layer("conv1").set_weights([w["k1"].transpose(hwio), w["c1"]])
    model.get_layer("conv2").set_weights([w["k2"].transpose(hwio), w["c2"]])
    model.get_layer("dense").set_weights([w["w3"], w["b3"]])
    model.get_layer("probs").set_weights([w["w4"], w["b4"]])
    return model


def export_tflite_int8(model, path: Path, calibration: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """Full-integer flatbuffer: int8 weights, activations, input and output; calibrated on ``calibration``."""
    import tensorflow as tf

    def representative():  # type: ignore[no-untyped-def]
        for i in range(len(calibration)):
            yield [calibration[i : i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    path.write_bytes(conv.convert())


def build_cnn_int8(out_dir: Path, src_dir: Path) -> Dict[str, Any]:
    import shutil

    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    src = json.loads((src_dir / "manifest.json").read_text())
    model = cnn_from_onnx(src_dir / "model.onnx")
    d = cnn_data()
    with np.load(src_dir / "validation.npz") as z:
        x_va, y_va = np.ascontiguousarray(z["x"], dtype=np.float32), np.asarray(z["y"], dtype=np.int64)
    float_p = run_onnx(src_dir / "model.onnx", np.ascontiguousarray(x_va.transpose(0, 3, 1, 2)))
    keras_p = model.predict(x_va, verbose=0)
    delta = float(np.abs(keras_p - float_p).max())
    if delta > 1e-4:
        raise SystemExit(f"cnn_int8: Keras rebuilt from {src_dir / 'model.onnx'} disagrees with it by {delta:.2e}")

    out_dir.mkdir(parents=True, exist_ok=True)
    tfl, val = out_dir / "model.tflite", out_dir / "validation.npz"
    export_tflite_int8(model, tfl, np.ascontiguousarray(d["x_tr"], dtype=np.float32))
    shutil.copyfile(src_dir / "validation.npz", val)  # the same held-out set, byte for byte

    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tfl))
    i_det, o_det = it.get_input_details()[0], it.get_output_details()[0]
    quant = {
        "input": {"dtype": np.dtype(i_det["dtype"]).name, "scale": float(i_det["quantization"][0]),
                  "zero_point": int(i_det["quantization"][1])},
        "output": {"dtype": np.dtype(o_det["dtype"]).name, "scale": float(o_det["quantization"][0]),
                   "zero_point": int(o_det["quantization"][1])},
    }
    manifest: Dict[str, Any] = {
        "format": "edged-model/1",
        "name": "cnn_int8",
        "description": "cnn, full-integer int8 for LiteRT (weights, activations, input and output); "
                       "float inputs are quantised by edged with the input tensor's scale and zero point",
        "task": "classification",
        "input": {"name": "input", "shape": [None, 8, 8, 1], "dtype": "float32", "layout": "NHWC"},
        "output": {"name": "probs", "shape": [None, 10], "dtype": "float32", "kind": "probabilities"},
        "labels": src["labels"],
        "preprocessing": src["preprocessing"],
        "quantization": quant,
        "artifacts": {"litert": {"file": tfl.name, "sha256": sha256_file(tfl), "layout": "NHWC"}},
        "validation": {"file": val.name, "sha256": sha256_file(val), "count": int(len(y_va)),
                       "split": src["validation"]["split"]},
        "parameters": src["parameters"],
        "flops": src["flops"],
        "source": {"model": "cnn", "onnx_sha256": sha256_file(src_dir / "model.onnx"),
                   "calibration": f"cnn training split ({len(d['x_tr'])} images)"},
        "metrics": {},
        "dataset": src["dataset"],
        "build": {"seed": SEED, "tensorflow": tf.__version__, "numpy": np.__version__, "script": "models/build.py"},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    # measure what edged serves: float pixels in, quantised by the LiteRT backend, probabilities out
    from edged.models import Catalogue

    cat = Catalogue.discover([out_dir.parent], include_shipped=False)
    with cat.load("cnn_int8", "litert") as m:
        int8_p = m.predict(x_va)
    manifest["metrics"] = {
        "litert": metrics(int8_p, y_va),
        "float_cnn": metrics(float_p, y_va),
        "agreement_with_cnn": round(float(np.mean(int8_p.argmax(1) == float_p.argmax(1))), 6),
        "max_abs_output_delta_vs_cnn": round(float(np.abs(int8_p - float_p).max()), 6),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", metavar="MODEL",
                    help="mlp, cnn, cnn_int8 and/or rgbcnn (default: all four; cnn_int8 is made from models/cnn)")
    ap.add_argument("--out", type=Path, default=HERE, help="output root (default: models/)")
    args = ap.parse_args(argv)
    for name in args.models or ["mlp", "cnn", "cnn_int8", "rgbcnn"]:
        if name not in ("mlp", "cnn", "cnn_int8", "rgbcnn"):
            ap.error(f"unknown model {name!r}: expected mlp, cnn, cnn_int8 or rgbcnn")
        print(f"building {name} ...", file=sys.stderr, flush=True)
        if name == "cnn_int8":
            m = build_cnn_int8(args.out / name, args.out / "cnn")
            print(f"{name}: metrics={json.dumps(m['metrics'])}")
            continue
        m = build(name, args.out / name)
        print(f"{name}: params={m['parameters']} flops={m['flops']} metrics={json.dumps(m['metrics'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
