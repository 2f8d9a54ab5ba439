"""Contract v2 through both runtimes: several inputs and outputs by name, state, dynamic H x W, int8.

The ONNX models are built with the `onnx` helper API and every result is compared with a direct
onnxruntime call on the same file; the TFLite models are flatbuffers written by tests/modelgen.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from edged.errors import BackendError, InputError, ManifestError
from edged.models import Catalogue
from edged.results import StateStore, summarize
from edged.runtime import available_backends, backend_class

from . import modelgen as g

HAVE_LITERT = "litert" in available_backends()
needs_litert = pytest.mark.skipif(not HAVE_LITERT, reason="no LiteRT implementation installed")


def direct_ort(path: Path, feeds: dict) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "models"
    g.write_model(r, "vad", g.STATEFUL_MANIFEST, {"onnx": ("model.onnx", g.onnx_stateful())})
    g.write_model(r, "two", g.TWO_OUTPUT_MANIFEST, {"onnx": ("model.onnx", g.onnx_two_outputs())})
    g.write_model(r, "seg", g.DYNAMIC_MANIFEST, {"onnx": ("model.onnx", g.onnx_dynamic_hw())})
    return r


@pytest.fixture
def cat(root):
    return Catalogue.discover([root], include_shipped=False)


# --------------------------------------------------------------------------- ONNX


def test_backend_reports_every_input_and_output(root):
    b = backend_class("onnx")()
    b.load(str(root / "vad" / "model.onnx"))
    assert [(s.name, s.shape, s.dtype) for s in b.input_specs] == [
        ("x", (None, 16), "float32"), ("h", (None, 8), "float32"), ("sr", (1,), "int64")]
    assert [s.name for s in b.output_specs] == ["y", "h_out"]
    assert b.input_spec.name == "x" and b.output_spec.name == "y"
    out = b.infer_named({"x": np.zeros((2, 16), np.float32), "h": np.zeros((2, 8), np.float32),
                         "sr": np.array([16000], np.int64)})
    assert set(out) == {"y", "h_out"} and out["y"].shape == (2, 1) and out["h_out"].shape == (2, 8)


def test_stateful_model_equals_direct_runtime_and_numpy(cat, root):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    h = rng.standard_normal((3, 8)).astype(np.float32)
    sr = np.array([16000], np.int64)
    with cat.load("vad") as m:
        assert m.input_names == ["x", "h", "sr"] and m.output_names == ["y", "h_out"]
        out = m.run({"x": x, "h": h, "sr": sr})
    ref = direct_ort(root / "vad" / "model.onnx", {"x": x, "h": h, "sr": sr})
    assert set(out) == {"y", "h_out"}
    np.testing.assert_array_equal(out["y"], ref["y"])
    np.testing.assert_array_equal(out["h_out"], ref["h_out"])
    y_np, h_np = g.stateful_reference(x, h, 16000)
    np.testing.assert_allclose(out["y"], y_np, atol=1e-5)
    np.testing.assert_allclose(out["h_out"], h_np, atol=1e-5)


def test_state_round_trips_per_sender(cat, root):
    """Two senders interleaved: each one's state is its own, and equals feeding h_out back by hand."""
    rng = np.random.default_rng(1)
    chunks = {s: rng.standard_normal((5, 16)).astype(np.float32) for s in ("mcu-a", "mcu-b")}
    sr = np.array([8000], np.int64)
    store = StateStore(max_entries=8)
    entry = cat.get("vad")
    got = {s: [] for s in chunks}
    with cat.load("vad") as m:
        for k in range(5):
            for s in ("mcu-a", "mcu-b"):
                feeds = store.feeds(s, entry, {"x": chunks[s][k], "sr": sr})
                assert feeds["h"].shape == (1, 8)
                out = m.run(feeds)
                store.update(s, entry, out)
                got[s].append(out)
                summary = summarize(entry, out)
                assert set(summary) == {"y"}  # the state output is fed back, not summarised
                assert summary["y"]["n"] == 1 and 0.0 < summary["y"]["values"][0] < 1.0
    path = root / "vad" / "model.onnx"
    for s, xs in chunks.items():
        h = np.zeros((1, 8), np.float32)
        for k in range(5):
            ref = direct_ort(path, {"x": xs[k : k + 1], "h": h, "sr": sr})
            np.testing.assert_array_equal(got[s][k]["y"], ref["y"])
            np.testing.assert_array_equal(got[s][k]["h_out"], ref["h_out"])
            h = ref["h_out"]
        np.testing.assert_array_equal(store.get(s, entry)["h"], h)
    assert not np.allclose(got["mcu-a"][4]["h_out"], got["mcu-b"][4]["h_out"])
    assert len(store) == 2


def test_missing_state_input_gets_initial_state(cat, root):
    x = np.ones((16,), np.float32)
    with cat.load("vad") as m:
        out = m.run({"x": x, "sr": np.array([16000], np.int64)})
    ref = direct_ort(root / "vad" / "model.onnx", {"x": x[None], "h": np.zeros((1, 8), np.float32),
                                                  "sr": np.array([16000], np.int64)})
    np.testing.assert_array_equal(out["h_out"], ref["h_out"])


def test_bad_feeds_are_named(cat):
    sr = np.array([16000], np.int64)
    with cat.load("vad") as m:
        with pytest.raises(InputError, match=r"model 'vad': input\(s\) 'sr' missing"):
            m.run({"x": np.zeros(16, np.float32)})
        with pytest.raises(InputError, match=r"no input named 'audio': the inputs are x, h, sr"):
            m.run({"x": np.zeros(16, np.float32), "sr": sr, "audio": np.zeros(3)})
        with pytest.raises(InputError, match=r"input 'x' shape is \[15\], expected \[16\]"):
            m.run({"x": np.zeros(15, np.float32), "sr": sr})
        with pytest.raises(InputError, match=r"input 'sr' dtype is float32, expected int64"):
            m.run({"x": np.zeros(16, np.float32), "sr": np.zeros(1, np.float32)})
        with pytest.raises(InputError, match=r"input 'x' has a batch of 3, input 'h' one of 2"):
            m.run({"h": np.zeros((2, 8), np.float32), "x": np.zeros((3, 16), np.float32), "sr": sr})
        with pytest.raises(InputError, match=r"input 'h' has 1 NaN or inf"):
            m.run({"x": np.zeros(16, np.float32), "h": np.array([np.nan] + [0] * 7, np.float32), "sr": sr})
        # predict() of a multi-input model feeds the primary input only: the others are missing
        with pytest.raises(InputError, match="'sr' missing"):
            m.predict(np.zeros(16, np.float32))


def test_two_output_model_run_and_summary(cat, root):
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    with cat.load("two") as m:
        out = m.run(x)  # a bare array feeds the single data input
        first = m.predict(x[0])
    ref = direct_ort(root / "two" / "model.onnx", {"x": x})
    np.testing.assert_array_equal(out["probs"], ref["probs"])
    np.testing.assert_array_equal(out["emb"], ref["emb"])
    np.testing.assert_array_equal(first, ref["probs"][0])
    entry = cat.get("two")
    s = summarize(entry, {k: v[:1] for k, v in out.items()})
    p = ref["probs"][0]
    order = np.argsort(-p)
    assert s["probs"]["label"] == int(order[0]) and s["probs"]["name"] == ["cat", "dog", "owl"][order[0]]
    assert s["probs"]["score"] == pytest.approx(float(p[order[0]]), rel=1e-5)
    assert [t[0] for t in s["probs"]["top"]] == [int(order[0]), int(order[1])]  # top_k = 2
    e = ref["emb"][0]
    assert s["emb"] == {"shape": [2, 2], "dtype": "float32", "min": pytest.approx(float(e.min()), rel=1e-5),
                        "max": pytest.approx(float(e.max()), rel=1e-5),
                        "mean": pytest.approx(float(e.mean()), rel=1e-5, abs=1e-6)}
    assert "label" not in s["emb"]  # never an argmax over a non-classifier


def test_dynamic_hw_model_at_two_shapes(cat, root):
    """Canonical NHWC with dynamic H, W; the ONNX artifact is NCHW: transposed here, at any size."""
    rng = np.random.default_rng(3)
    entry = cat.get("seg")
    with cat.load("seg") as m:
        for h, w in ((32, 48), (200, 120)):
            x = rng.standard_normal((h, w, 1)).astype(np.float32)
            out = m.run(x)
            ref = direct_ort(root / "seg" / "model.onnx", {"x": np.ascontiguousarray(x.transpose(2, 0, 1)[None])})
            assert out["mask"].shape == (1, 1, h, w)
            np.testing.assert_array_equal(out["mask"], ref["mask"])
            assert entry.shape_key(x) == f"1x{h}x{w}x1"
            s = summarize(entry, out)
            assert s["mask"]["shape"] == [1, h, w] and "label" not in s["mask"]
        with pytest.raises(InputError, match=r"shape is \[8, 8, 3\], expected \['\?', '\?', 1\]"):
            m.run(np.zeros((8, 8, 3), np.float32))


def test_file_that_contradicts_a_v2_manifest(tmp_path):
    m = copy.deepcopy(g.STATEFUL_MANIFEST)
    m["inputs"][1]["shape"] = [-1, 9]
    g.write_model(tmp_path / "m", "vad", m, {"onnx": ("model.onnx", g.onnx_stateful())})
    cat = Catalogue.discover([tmp_path / "m"], include_shipped=False)
    with pytest.raises(ManifestError, match=r"input 'h' takes float32 \[None, 8\] but the manifest says float32 \[None, 9\]"):
        cat.load("vad")
    m = copy.deepcopy(g.STATEFUL_MANIFEST)
    m["outputs"][0]["name"] = "speech"
    g.write_model(tmp_path / "n", "vad", m, {"onnx": ("model.onnx", g.onnx_stateful())})
    cat = Catalogue.discover([tmp_path / "n"], include_shipped=False)
    with pytest.raises(ManifestError, match=r"has no output named 'speech': its outputs are 'y', 'h_out'.*names"):
        cat.load("vad")
    m["artifact_options"] = {"onnx": {"names": {"speech": "y"}}}  # ... unless mapped to the file's name
    g.write_model(tmp_path / "o", "vad", m, {"onnx": ("model.onnx", g.onnx_stateful())})
    with Catalogue.discover([tmp_path / "o"], include_shipped=False).load("vad") as lm:
        out = lm.run({"x": np.zeros(16, np.float32), "sr": np.array([1], np.int64)})
        assert set(out) == {"speech", "h_out"}
    m = copy.deepcopy(g.STATEFUL_MANIFEST)
    del m["inputs"][2]
    g.write_model(tmp_path / "p", "vad", m, {"onnx": ("model.onnx", g.onnx_stateful())})
    cat = Catalogue.discover([tmp_path / "p"], include_shipped=False)
    with pytest.raises(ManifestError, match=r"takes input\(s\) 'sr' that the manifest does not declare"):
        cat.load("vad")


# --------------------------------------------------------------------------- LiteRT


LITERT_STATEFUL = {
    "inputs": [{"name": "x", "shape": [-1, 4], "dtype": "float32"},
               {"name": "h", "shape": [-1, 4], "dtype": "float32"}],
    "outputs": [{"name": "y", "kind": "regression"}, {"name": "h_out", "kind": "state", "state_input": "h"}],
}


@needs_litert
def test_litert_multi_input_multi_output_by_name_with_state(tmp_path):
    g.write_model(tmp_path / "m", "rnn", LITERT_STATEFUL, {"litert": ("model.tflite", g.tflite_stateful())})
    cat = Catalogue.discover([tmp_path / "m"], include_shipped=False)
    entry = cat.get("rnn")
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((6, 4)).astype(np.float32)
    store = StateStore()
    with cat.load("rnn") as m:
        assert m.backend_name == "litert"
        assert {s.name for s in m.backend.input_specs} == {"x", "h"}
        h = np.zeros((1, 4), np.float32)
        for k in range(6):
            out = m.run(store.feeds("s1", entry, {"x": xs[k]}))
            store.update("s1", entry, out)
            h_ref = np.tanh(xs[k : k + 1] + h)
            np.testing.assert_allclose(out["h_out"], h_ref, atol=1e-6)
            np.testing.assert_allclose(out["y"], h_ref * h_ref, atol=1e-6)
            h = h_ref
        batch = m.run({"x": xs, "h": np.zeros((6, 4), np.float32)})  # dynamic batch: resized, then back
        np.testing.assert_allclose(batch["h_out"], np.tanh(xs), atol=1e-6)
        one = m.run({"x": xs[0], "h": np.zeros(4, np.float32)})
        np.testing.assert_allclose(one["h_out"], np.tanh(xs[:1]), atol=1e-6)


@needs_litert
def test_litert_dynamic_hw_resizes_per_input(tmp_path):
    m = {"inputs": [{"name": "x", "shape": [1, -1, -1, 1], "dtype": "float32", "layout": "NHWC"}],
         "outputs": [{"name": "y", "kind": "tensor"}]}
    g.write_model(tmp_path / "m", "sq", m, {"litert": ("model.tflite", g.tflite_dynamic_hw())})
    cat = Catalogue.discover([tmp_path / "m"], include_shipped=False)
    assert cat.get("sq").dynamic_inputs == ["x"]
    with cat.load("sq") as lm:
        for h, w in ((5, 7), (64, 32), (5, 7)):
            x = np.random.default_rng(h).standard_normal((h, w, 1)).astype(np.float32)
            out = lm.run(x)["y"]
            assert out.shape == (1, h, w, 1)
            np.testing.assert_allclose(out[0], x * x, rtol=1e-6)


@needs_litert
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_litert_quantized_float_in_float_out_and_integer_in(tmp_path, dtype):
    m = {"inputs": [{"name": "q", "shape": [-1, 4], "dtype": "float32"}],
         "outputs": [{"name": "y", "kind": "regression"}, {"name": "yf", "kind": "regression"}]}
    g.write_model(tmp_path / "m", "qm", m, {"litert": ("model.tflite", g.tflite_quantized(dtype))})
    cat = Catalogue.discover([tmp_path / "m"], include_shipped=False)
    assert cat.unservable() == {}
    # values beyond the int range clip, halves round to even (as numpy.rint and TFLite do)
    x = np.array([[0.0, 0.31, -1.7, 9.0], [-9.0, 0.05, 0.011, -0.03]], np.float32)
    y_ref, yf_ref = g.quantized_reference(x, dtype)
    with cat.load("qm") as lm:
        q = lm.backend.quantization("q")
        assert q is not None and q.zero_point == g.QUANT_IN[dtype][1]
        out = lm.run(x)
        assert out["y"].dtype == np.float32 and out["yf"].dtype == np.float32  # dequantised
        np.testing.assert_allclose(out["yf"], yf_ref, atol=1e-6)
        np.testing.assert_allclose(out["y"], y_ref, atol=1e-6)
        # a sender may send the integer type itself: no conversion
        qx = q.quantize(x, dtype)
        out_int = lm.run(qx)
        np.testing.assert_array_equal(out_int["y"], out["y"])
        np.testing.assert_allclose(lm.predict(x[0]), y_ref[0], atol=1e-6)
        with pytest.raises(InputError, match=rf"dtype is int16, expected float32 or {dtype}"):
            lm.run(x.astype(np.int16))


@needs_litert
def test_litert_backend_direct_names_and_errors(tmp_path):
    p = tmp_path / "m.tflite"
    p.write_bytes(g.tflite_stateful())
    b = backend_class("litert")()
    b.load(str(p))
    assert [s.name for s in b.input_specs] == ["x", "h"] and [s.name for s in b.output_specs] == ["y", "h_out"]
    out = b.infer_named({"x": np.ones((2, 4), np.float32), "h": np.zeros((2, 4), np.float32)})
    np.testing.assert_allclose(out["h_out"], np.tanh(np.ones((2, 4))), atol=1e-6)
    with pytest.raises(BackendError, match="no input named 'z'"):
        b.infer_named({"z": np.ones((1, 4), np.float32)})
    with pytest.raises(BackendError, match=r"input\(s\) h not fed"):
        b.infer_named({"x": np.ones((1, 4), np.float32)})


def test_state_of_a_micro_batch_of_senders(cat):
    """Three senders in one batch: each row's state is that sender's; equals running them one by one."""
    entry = cat.get("vad")
    rng = np.random.default_rng(5)
    senders = ["a", "b", "c"]
    xs = rng.standard_normal((2, 3, 16)).astype(np.float32)
    sr = np.array([16000], np.int64)
    batched, single = StateStore(), StateStore()
    with cat.load("vad") as m:
        for step in range(2):
            out = m.run({"x": xs[step], "sr": sr, **batched.stack(senders, entry)})
            batched.update_rows(senders, entry, out)
            for k, s in enumerate(senders):
                one = m.run(single.feeds(s, entry, {"x": xs[step, k], "sr": sr}))
                single.update(s, entry, one)
                np.testing.assert_allclose(out["y"][k : k + 1], one["y"], atol=1e-6)
    for s in senders:
        np.testing.assert_allclose(batched.get(s, entry)["h"], single.get(s, entry)["h"], atol=1e-6)
    with pytest.raises(ValueError, match="appears twice"):
        batched.stack(["a", "a"], entry)
