"""Model contract v2 through the dispatcher: every output reaches the record (as a task-aware summary) and
the result sinks (raw), and a stateful model's state round-trips per sender on the local path."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

from edged.models import Catalogue
from edged.offload.dispatcher import Dispatcher
from edged.sources.sample import Sample

from . import modelgen as g
from .test_contract_runtime import direct_ort


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "models"
    g.write_model(r, "vad", g.STATEFUL_MANIFEST, {"onnx": ("model.onnx", g.onnx_stateful())})
    g.write_model(r, "two", g.TWO_OUTPUT_MANIFEST, {"onnx": ("model.onnx", g.onnx_two_outputs())})
    return r


def _sample(model: str, seq: int, x: np.ndarray, sender: str, feeds: Optional[Dict[str, Any]] = None) -> Sample:
    s = Sample(model=model, seq=seq, array=x, source="test")
    s.sender = sender  # type: ignore[attr-defined]
    if feeds is not None:
        s.feeds = feeds  # type: ignore[attr-defined]
    return s


def test_every_output_reaches_records_and_sinks_and_state_round_trips(root):
    cat = Catalogue.discover([root], include_shipped=False)
    models = {n: cat.load(n, "onnx") for n in ("vad", "two")}
    records: List[dict] = []
    published: List[tuple] = []
    d = Dispatcher(models, {"*": "local"}, records.append,
                   on_results=lambda recs, outs: published.extend(zip(recs, outs)))
    rng = np.random.default_rng(7)
    sr = np.array([16000], np.int64)
    chunks = {s: rng.standard_normal((4, 16)).astype(np.float32) for s in ("mcu-a", "mcu-b")}
    xs = rng.standard_normal((5, 6)).astype(np.float32)
    seq = 0
    for k in range(4):  # two senders interleaved, with a two-output model's inputs between them
        for s in ("mcu-a", "mcu-b"):
            d.submit(_sample("vad", seq, chunks[s][k], s, {"x": chunks[s][k], "sr": sr}))
            seq += 1
        d.submit(_sample("two", seq, xs[k], "cam"))
        seq += 1
    assert d.close(10)
    assert len(records) == len(published) == seq
    assert all(r["decision"] == "local" and r["error"] is None for r in records), [r["error"] for r in records]

    # the two-output model: the classifier is the result, both outputs are summarised, raw outputs published
    two = [(r, o) for r, o in published if r["model"] == "two"]
    ref = direct_ort(root / "two" / "model.onnx", {"x": xs[:4]})
    for i, (rec, outs) in enumerate(two):
        p = ref["probs"][i]
        assert rec["result"]["label"] == int(p.argmax()) and rec["result"]["name"] == ["cat", "dog", "owl"][p.argmax()]
        assert set(rec["outputs"]) == {"probs", "emb"} and rec["outputs"]["emb"]["shape"] == [2, 2]
        np.testing.assert_array_equal(outs["probs"], ref["probs"][i])
        np.testing.assert_array_equal(outs["emb"], ref["emb"][i])

    # the stateful model: no argmax over its regression output, and each sender's state chain is its own
    path = root / "vad" / "model.onnx"
    for s, x in chunks.items():
        got = [(r, o) for r, o in published if r["model"] == "vad" and r["sender"] == s]
        h = np.zeros((1, 8), np.float32)
        for k, (rec, outs) in enumerate(got):
            ref = direct_ort(path, {"x": x[k : k + 1], "h": h, "sr": sr})
            np.testing.assert_array_equal(outs["y"], ref["y"][0])
            np.testing.assert_array_equal(outs["h_out"], ref["h_out"][0])
            assert rec["result"] is None and set(rec["outputs"]) == {"y"}
            assert rec["outputs"]["y"]["values"][0] == pytest.approx(float(ref["y"][0, 0]), rel=1e-5)
            h = ref["h_out"]
    for m in models.values():
        m.close()


@pytest.mark.timeout(120)
def test_offloaded_multi_tensor_and_stateful_models_equal_the_runtime_and_state_travels(root):
    """Over a real `edged fog`: the two-output model returns both outputs, and the VAD's state travels with
    each offloaded input and comes back. The fog then dies: the next inputs fall back or run locally and
    each sender's state chain goes on unbroken, as a direct runtime call chain computes it."""
    from edged.offload.fog_client import ZmqFogBackend

    from .test_offload_fog import FogProcess

    cat = Catalogue.discover([root], include_shipped=False)
    models = {n: cat.load(n, "onnx") for n in ("vad", "two")}
    fog = FogProcess("--models-dir", str(root), "--model", "vad", "--model", "two")
    backend = ZmqFogBackend(fog.endpoint)
    records: List[dict] = []
    published: List[tuple] = []
    d = Dispatcher(models, {"*": "offload"}, records.append, fog=backend, fog_timeout_s=2.0,
                   on_results=lambda recs, outs: published.extend(zip(recs, outs)))
    rng = np.random.default_rng(11)
    sr = np.array([16000], np.int64)
    chunks = {s: rng.standard_normal((6, 16)).astype(np.float32) for s in ("mcu-a", "mcu-b")}
    xs = rng.standard_normal((3, 6)).astype(np.float32)
    seq = 0
    two_seq: Dict[int, int] = {}  # seq -> row of xs (offloaded results may complete in any order)
    try:
        deadline = time.monotonic() + 20  # the first probe has reached the fog: it is connected
        while (d.link.t_f_us("vad") is None or d.link.t_f_us("two") is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        for k in range(6):
            if k == 3:  # half-way: the fog node dies
                deadline = time.monotonic() + 30
                while len(records) < seq and time.monotonic() < deadline:
                    time.sleep(0.01)
                fog.proc.kill()
            for s in ("mcu-a", "mcu-b"):
                d.submit(_sample("vad", seq, chunks[s][k], s, {"x": chunks[s][k], "sr": sr}))
                seq += 1
            if k < 3:
                two_seq[seq] = k
                d.submit(_sample("two", seq, xs[k], "cam"))
                seq += 1
        assert d.close(30)
    finally:
        backend.close()
        fog.stop()
    assert len(records) == seq == len({r["seq"] for r in records})
    assert {r["decision"] for r in records[:9]} == {"offload"}, [r["decision"] for r in records]
    two = [(r, o) for r, o in published if r["model"] == "two"]
    ref = direct_ort(root / "two" / "model.onnx", {"x": xs})
    for rec, outs in two:
        i = two_seq[rec["seq"]]
        assert rec["decision"] == "offload" and set(rec["outputs"]) == {"probs", "emb"}
        np.testing.assert_allclose(outs["probs"], ref["probs"][i], rtol=1e-6)
        np.testing.assert_allclose(outs["emb"], ref["emb"][i], rtol=1e-6)
    path = root / "vad" / "model.onnx"
    for s, x in chunks.items():
        got = [(r, o) for r, o in published if r["model"] == "vad" and r["sender"] == s]
        assert [r["decision"] for r, _ in got[:3]] == ["offload"] * 3
        assert all(r["decision"] in ("fallback", "local") for r, _ in got[3:])
        h = np.zeros((1, 8), np.float32)
        for k, (_rec, outs) in enumerate(got):
            ref = direct_ort(path, {"x": x[k : k + 1], "h": h, "sr": sr})
            np.testing.assert_allclose(outs["y"], ref["y"][0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(outs["h_out"], ref["h_out"][0], rtol=1e-5, atol=1e-6)
            h = ref["h_out"]
    for m in models.values():
        m.close()


@pytest.mark.timeout(120)
def test_int8_cnn_local_and_offloaded_equal_a_direct_litert_call():
    """The full-integer int8 cnn: float inputs are quantised with the tensor's scale and zero point, the
    output dequantised, the same on the edge and on the fog, and equal to a direct LiteRT call."""
    pytest.importorskip("ai_edge_litert", reason="the int8 cnn needs LiteRT")
    from edged.offload.fog_client import ZmqFogBackend
    from edged.runtime import backend_class

    from .test_offload_fog import FogProcess

    cat = Catalogue.discover()
    entry = cat.get("cnn_int8")
    xs = np.load(entry.dir / "validation.npz")["x"][:6].astype(np.float32)
    direct = backend_class("litert")()
    direct.load(str(entry.dir / "model.tflite"))
    ref = [direct.infer_named({direct.input_spec.name: x[None]}) for x in xs]
    fog = FogProcess("--model", "cnn_int8")
    backend = ZmqFogBackend(fog.endpoint)
    out: List[tuple] = []
    try:
        for policy in ("local", "offload"):
            d = Dispatcher({"cnn_int8": cat.load("cnn_int8", "litert")}, {"*": policy}, lambda r: None,
                           fog=backend, fog_timeout_s=5.0, on_results=lambda recs, outs: out.extend(zip(recs, outs)))
            deadline = time.monotonic() + 10
            while policy == "offload" and d.link.t_f_us("cnn_int8") is None and time.monotonic() < deadline:
                time.sleep(0.02)
            for i, x in enumerate(xs):
                d.submit(Sample(model="cnn_int8", seq=i, array=x))
            assert d.close(20)
    finally:
        backend.close()
        fog.stop()
    assert [r["decision"] for r, _ in out] == ["local"] * 6 + ["offload"] * 6
    name = entry.outputs[0].name
    for rec, outs in out:
        want = next(iter(ref[rec["seq"]].values()))[0]
        np.testing.assert_allclose(outs[name], want, rtol=1e-6)
        assert outs[name].dtype == np.float32 and rec["result"]["label"] == int(np.argmax(want))
