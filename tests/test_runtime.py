"""Backends on the shipped models: agreement, batching, providers, LiteRT implementation fallback."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from edged.errors import BackendError, MissingDependencyError
from edged.runtime import available_backends, backend_class, canonical_name
from edged.runtime.litert import LiteRTBackend, find_interpreter

from .conftest import MODELS

HAVE_LITERT = "litert" in available_backends()


@pytest.mark.skipif(not HAVE_LITERT, reason="no LiteRT implementation installed")
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_both_artifacts_agree_on_whole_validation_set(catalogue, name):
    x, _ = catalogue.get(name).load_validation()
    outs = {}
    for b in ("onnx", "litert"):
        with catalogue.load(name, b) as m:
            outs[b] = m.predict(x)
    assert outs["onnx"].shape == (len(x), len(catalogue.get(name).labels))
    assert np.abs(outs["onnx"] - outs["litert"]).max() <= 1e-4


@pytest.mark.parametrize("backend", ["onnx", "litert"])
def test_batch_equals_one_at_a_time(catalogue, backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    x, _ = catalogue.get("cnn").load_validation()
    with catalogue.load("cnn", backend) as m:
        batch = m.predict(x[:17])
        single = np.stack([m.predict(x[i]) for i in range(17)])
        again = m.predict(x[:3])  # the interpreter resizes back down
    np.testing.assert_allclose(batch, single, atol=1e-6)
    np.testing.assert_allclose(again, single[:3], atol=1e-6)


def test_onnx_warns_when_requested_provider_is_not_active(caplog):
    b = backend_class("onnx")()
    with caplog.at_level(logging.WARNING, logger="edged.runtime.onnx"):
        b.load(str(MODELS / "mlp" / "model.onnx"), threads=2,
               providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert b.providers == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider" in caplog.text and "not active" in caplog.text
    assert b.infer(np.zeros((1, 30), np.float32)).shape == (1, 2)


def test_onnx_corrupt_file_is_a_backend_error(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"definitely not a protobuf")
    with pytest.raises(BackendError, match="bad.onnx"):
        backend_class("onnx")().load(str(p))


def test_backend_names_and_aliases():
    assert canonical_name("tflite") == "litert"
    assert canonical_name("ONNXRuntime") == "onnx"
    with pytest.raises(BackendError, match="expected one of"):
        canonical_name("tensorrt")


def test_litert_missing_everywhere_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edged\[tflite\]'"):
        find_interpreter()


def test_litert_falls_back_to_tflite_runtime_when_ai_edge_litert_is_absent(monkeypatch):
    """Where tflite-runtime is installed (make test-legacy), it must be picked up and run the model."""
    pytest.importorskip("tflite_runtime.interpreter", reason="tflite-runtime not installed (see make test-legacy)")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    _, impl, _ = find_interpreter()
    assert impl == "tflite-runtime"
    b = LiteRTBackend()
    if int(np.__version__.split(".")[0]) >= 2:
        with pytest.raises(BackendError, match=r"tflite-runtime needs numpy<2"):
            b.load(str(MODELS / "mlp" / "model.tflite"))
        return
    b.load(str(MODELS / "mlp" / "model.tflite"))
    assert b.implementation == "tflite-runtime"
    x = np.load(MODELS / "mlp" / "validation.npz")["x"][:5]
    ref = backend_class("onnx")()
    ref.load(str(MODELS / "mlp" / "model.onnx"))
    assert np.abs(b.infer(x) - ref.infer(x)).max() <= 1e-4


@pytest.mark.skipif(not HAVE_LITERT, reason="no LiteRT implementation installed")
def test_litert_several_inputs_and_outputs_by_name_and_int8(tmp_path):
    """Also run by `make test-legacy`, so tflite-runtime's interpreter takes the same paths as ai-edge-litert."""
    from . import modelgen as g

    p = tmp_path / "rnn.tflite"
    p.write_bytes(g.tflite_stateful())
    b = LiteRTBackend()
    b.load(str(p))
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    h = np.full((3, 4), 0.25, np.float32)
    out = b.infer_named({"h": h, "x": x})
    np.testing.assert_allclose(out["h_out"], np.tanh(x + h), atol=1e-6)
    np.testing.assert_allclose(out["y"], np.tanh(x + h) ** 2, atol=1e-6)
    q = tmp_path / "q.tflite"
    q.write_bytes(g.tflite_quantized("int8"))
    bq = LiteRTBackend()
    bq.load(str(q))
    y_ref, yf_ref = g.quantized_reference(x, "int8")
    outq = bq.infer_named({"q": x})
    np.testing.assert_allclose(outq["y"], y_ref, atol=1e-6)
    np.testing.assert_allclose(outq["yf"], yf_ref, atol=1e-6)
