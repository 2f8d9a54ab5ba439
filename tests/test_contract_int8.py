"""The shipped full-integer int8 cnn (models/cnn_int8, built by models/build.py from models/cnn)."""

from __future__ import annotations

import numpy as np
import pytest

from edged.results import summarize
from edged.runtime import available_backends

pytestmark = pytest.mark.skipif("litert" not in available_backends(), reason="no LiteRT implementation installed")


def test_int8_cnn_is_served_and_its_manifest_metrics_reproduce(catalogue):
    e = catalogue.get("cnn_int8")
    assert e.backends == ["litert"] and e.input.dtype == "float32" and e.labels == catalogue.get("cnn").labels
    assert catalogue.check("cnn_int8") is None
    x, y = e.load_validation()
    with catalogue.load("cnn_int8") as m:
        q = m.backend.quantization(m.backend.input_spec.name)
        assert m.backend.input_spec.dtype == "int8" and q is not None
        assert q.scale == pytest.approx(e.manifest["quantization"]["input"]["scale"])
        probs = m.predict(x)
    assert probs.dtype == np.float32 and probs.shape == (len(x), 10)  # dequantised
    acc = float(np.mean(probs.argmax(1) == y))
    assert acc == pytest.approx(e.metric("litert", "accuracy"), abs=1e-6) and acc > 0.95
    with catalogue.load("cnn", "onnx") as f:
        float_pred = f.predict(x).argmax(1)
    agree = float(np.mean(probs.argmax(1) == float_pred))
    assert agree == pytest.approx(e.manifest["metrics"]["agreement_with_cnn"], abs=1e-6) and agree >= 0.99


def test_int8_cnn_takes_float_or_int8_inputs_alike(catalogue):
    e = catalogue.get("cnn_int8")
    x, _ = e.load_validation()
    with catalogue.load("cnn_int8") as m:
        q = m.backend.quantization(m.backend.input_spec.name)
        assert q is not None
        xq = q.quantize(x[:20], "int8")
        assert xq.dtype == np.int8
        np.testing.assert_array_equal(m.predict(xq), m.predict(x[:20]))
        np.testing.assert_array_equal(m.run(xq[3])["probs"], m.run(x[3])["probs"])
        # dequantised probabilities are multiples of the output scale
        out = m.run(x[3])["probs"]
        s = summarize(e, {"probs": out})["probs"]
    assert s["label"] == int(out[0].argmax()) and s["name"] == e.labels[s["label"]] and 0 < s["score"] <= 1
