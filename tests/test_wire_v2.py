"""Wire protocol v2 end to end: several named tensors per message, over a real ZeroMQ PUSH and a real pty,
for models built in the tests (a 3-input stateful VAD-like model, a dynamic H x W model), validated against
their catalogue entries; the samples' feeds run through a real onnxruntime session."""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, List

import numpy as np
import pytest
import zmq

from edged.sources.base import Rejection
from edged.sources.framing import (
    build_cobs_frame,
    build_tensor_cobs_frame,
    build_tensor_frames,
    format_line,
)
from edged.sources.serial import SerialSource
from edged.sources.validate import MAX_TENSOR_ELEMENTS
from edged.sources.zmq import ZmqSource
from tests import modelgen as g
from tests.helpers_ingest import Collector, PtyPair, wait_until

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from edged.models import Catalogue

    root = tmp_path_factory.mktemp("models")
    g.write_model(root, "vad", g.STATEFUL_MANIFEST, {"onnx": ("model.onnx", g.onnx_stateful())})
    g.write_model(root, "seg", g.DYNAMIC_MANIFEST, {"onnx": ("model.onnx", g.onnx_dynamic_hw())})
    return Catalogue.discover([root])  # with the shipped mlp and cnn


@pytest.fixture(scope="module")
def entries(catalogue: Any) -> Dict[str, Any]:
    return catalogue.entries()


def _x() -> np.ndarray:
    return RNG.standard_normal(16).astype(np.float32)


SR = np.array([16000], np.int64)


class _Zmq:
    """A ZmqSource on a free loopback port and a real PUSH connected to it."""

    def __init__(self, entries: Dict[str, Any]) -> None:
        self.src = ZmqSource(entries, endpoint="tcp://127.0.0.1:*")
        self.rejected: List[Rejection] = []
        self.src.on_rejected = self.rejected.append
        self.got = Collector()
        self.stop = threading.Event()
        self.src.start(self.got, self.stop)
        assert self.src.ready.wait(5)
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 1000)
        self.push.connect(self.src.bound_endpoint or "")

    def send(self, frames: List[bytes]) -> None:
        self.push.send_multipart(frames)

    def wait(self, n_total: int) -> None:
        assert wait_until(lambda: len(self.got) + self.src.stats.rejected_total >= n_total, 10), \
            (len(self.got), self.src.stats.snapshot())

    def close(self) -> None:
        self.stop.set()
        self.push.close()
        self.ctx.term()


@pytest.fixture
def zmq_source(entries: Dict[str, Any]) -> Any:
    z = _Zmq(entries)
    yield z
    z.close()


def _head(**h: Any) -> bytes:
    return json.dumps(h, separators=(",", ":")).encode()


def test_zmq_v2_multipart_carries_every_input_and_v1_stays_byte_for_byte(zmq_source: _Zmq, entries: Dict) -> None:
    z = zmq_source
    xs = [_x() for _ in range(3)]
    mlp = RNG.standard_normal(30).astype(np.float32)
    z.send(build_tensor_frames({"model": "vad", "seq": 0, "sender": "mic1"}, {"x": xs[0], "sr": SR}))
    z.send(build_tensor_frames({"model": "vad", "seq": 1, "sender": "mic1"}, {"sr": SR, "x": xs[1]}))  # any order
    h = np.full(8, 0.25, np.float32)  # a sender may send the state input itself: it then wins
    z.send(build_tensor_frames({"model": "vad", "seq": 2, "sender": "mic1"}, {"x": xs[2], "sr": SR, "h": h}))
    z.send([_head(model="mlp", seq=0), mlp.tobytes()])  # v1, unchanged
    z.send([json.dumps({"model": "vad", "seq": 3, "sender": "mic1",
                        "inputs": {"x": xs[0].tolist(), "sr": [16000]}}).encode()])  # one-frame JSON v2
    z.wait(5)
    assert z.src.stats.rejected_total == 0, z.src.stats.snapshot()
    by = {(s.model, s.seq): s for s in z.got.samples}
    s0 = by[("vad", 0)]
    assert s0.sender == "mic1" and set(s0.feeds or {}) == {"x", "sr"}
    assert s0.array is (s0.feeds or {})["x"] and np.array_equal(s0.array, xs[0])
    assert (s0.feeds or {})["sr"].dtype == np.int64 and (s0.feeds or {})["sr"].shape == (1,)
    assert np.array_equal((by[("vad", 1)].feeds or {})["x"], xs[1])
    assert np.array_equal((by[("vad", 2)].feeds or {})["h"], h)
    assert by[("vad", 3)].feeds is not None and np.array_equal(by[("vad", 3)].array, xs[0])
    assert s0.nbytes == 16 * 4 + 8
    m = by[("mlp", 0)]
    assert m.feeds is None and np.array_equal(m.array, mlp)
    assert z.src.stats.lost_in_transit == 0


def test_samples_feed_the_real_model_and_equal_the_reference(catalogue: Any, zmq_source: _Zmq) -> None:
    """What the source hands on is exactly what the model runs: feeds + the edge's state -> onnxruntime."""
    z = zmq_source
    xs = [_x() for _ in range(4)]
    for i, x in enumerate(xs):
        z.send(build_tensor_frames({"model": "vad", "seq": i}, {"x": x, "sr": SR}))
    z.wait(4)
    model = catalogue.load("vad", "onnx")
    h = np.zeros(8, np.float32)
    for s, x in zip(z.got.samples, xs):
        outs = model.run({**(s.feeds or {}), "h": h})
        y_ref, h_ref = g.stateful_reference(x[None], h[None], 16000)
        assert np.allclose(outs["y"], y_ref, atol=1e-6) and np.allclose(outs["h_out"], h_ref, atol=1e-6)
        h = outs["h_out"][0]


def test_zmq_v2_refusals_are_per_message_named_and_attributed(zmq_source: _Zmq) -> None:
    z = zmq_source
    x = _x()
    good = build_tensor_frames({"model": "vad", "seq": 0}, {"x": x, "sr": SR})
    head = json.loads(good[0])
    bad: Dict[str, List[bytes]] = {
        "v1 two frames": [_head(model="vad", seq=1), x.tobytes()],
        "unknown input": build_tensor_frames({"model": "vad", "seq": 2}, {"x": x, "sr": SR, "gain": SR}),
        "missing input": build_tensor_frames({"model": "vad", "seq": 3}, {"x": x}),
        "wrong dtype": build_tensor_frames({"model": "vad", "seq": 4}, {"x": x, "sr": SR.astype(np.int32)}),
        "short frame": [good[0], good[1][:-4], good[2]],
        "frame count": good[:2],
        "nan": build_tensor_frames({"model": "vad", "seq": 5}, {"x": np.full(16, np.nan, np.float32), "sr": SR}),
        "bad shape": [_head(**dict(head, tensors=[dict(head["tensors"][0], shape=[4, 4]), head["tensors"][1]])),
                      *good[1:]],
        "json data": [json.dumps({"model": "vad", "seq": 6, "data": x.tolist()}).encode()],
        "json missing": [json.dumps({"model": "vad", "seq": 7, "inputs": {"x": x.tolist()}}).encode()],
        "json unknown": [json.dumps({"model": "vad", "inputs": {"x": x.tolist(), "sr": [1], "z": [1]}}).encode()],
    }
    for frames in bad.values():
        z.send(frames)
    z.send(good)
    z.wait(len(bad) + 1)
    assert [s.seq for s in z.got.samples] == [0]
    snap = z.src.stats.snapshot()
    assert snap["rejected"] == {"missing_input": 4, "unknown_input": 2, "dtype_mismatch": 1, "wrong_size": 2,
                                "bad_header": 1, "non_finite": 1}, snap
    assert snap["errors"] == 0
    assert len(z.rejected) == len(bad) and all(r.model == "vad" for r in z.rejected)
    why = {r.reason: r.detail for r in reversed(z.rejected)}
    assert "'sr'" in why["missing_input"] and "'h' is state" in why["missing_input"]
    assert "'gain'" in why["unknown_input"] and "'x' float32 [16]" in why["unknown_input"]
    assert "'sr'" in why["dtype_mismatch"] and "int32" in why["dtype_mismatch"]
    assert "'x'" in why["non_finite"]
    v1 = next(r for r in z.rejected if r.seq == 1)
    assert v1.reason == "missing_input" and "send 'tensors'" in v1.detail


def test_dynamic_model_needs_its_shape_and_takes_any_size_within_the_bound(zmq_source: _Zmq) -> None:
    z = zmq_source
    small = RNG.standard_normal((12, 20, 1)).astype(np.float32)
    large = RNG.standard_normal((64, 48, 1)).astype(np.float32)
    z.send(build_tensor_frames({"model": "seg", "seq": 0}, {"x": small}))
    z.send([_head(model="seg", seq=1, shape=[64, 48, 1]), large.tobytes()])  # v1 with shape
    z.send([_head(model="seg", seq=2), large.tobytes()])  # v1 without shape
    z.send([_head(model="seg", seq=3, tensors=[{"name": "x"}]), large.tobytes()])  # v2 without shape
    z.send([_head(model="seg", seq=4, tensors=[{"name": "x", "shape": [4096, 4097, 1]}]), b"\0" * 16])
    z.send([_head(model="seg", seq=5, tensors=[{"name": "x", "shape": [64, 48, 2]}]), large.tobytes()])
    z.send([json.dumps({"model": "seg", "seq": 6, "data": small.ravel().tolist()}).encode()])  # flat: no shape
    z.send([json.dumps({"model": "seg", "seq": 7, "data": small.tolist()}).encode()])  # nested: the shape
    z.wait(8)
    got = {s.seq: s for s in z.got.samples}
    assert sorted(got) == [0, 1, 7]
    assert got[0].feeds is None and np.array_equal(got[0].array, small)  # one tensor: array only
    assert np.array_equal(got[1].array, large) and np.array_equal(got[7].array, small)
    rej = {r.seq: r for r in z.rejected}
    for seq in (2, 3, 6):
        assert rej[seq].reason == "missing_shape" and "send its 'shape'" in rej[seq].detail, rej[seq]
    assert rej[4].reason == "wrong_size" and str(MAX_TENSOR_ELEMENTS) in rej[4].detail
    assert rej[5].reason == "wrong_size"


def test_pty_cobs_v2_frames_and_lines_refusal(entries: Dict[str, Any]) -> None:
    pty = PtyPair()
    src = SerialSource(entries, pty.path, framing="cobs")
    rej: List[Rejection] = []
    src.on_rejected = rej.append
    got = Collector()
    stop = threading.Event()
    src.start(got, stop)
    try:
        assert src.connected.wait(5)
        xs = [_x() for _ in range(20)]
        img = RNG.standard_normal((9, 7, 1)).astype(np.float32)
        stream = b"garbage\x00\x00"
        for i, x in enumerate(xs):
            stream += build_tensor_cobs_frame({"model": "vad", "seq": i, "sender": "mcu"}, {"x": x, "sr": SR})
        stream += build_cobs_frame({"model": "vad", "seq": 20, "sender": "mcu"}, xs[0].tobytes())  # v1: refused
        stream += build_tensor_cobs_frame({"model": "seg", "seq": 0}, {"x": img})
        stream += build_cobs_frame({"model": "mlp", "seq": 0}, np.ones(30, np.float32).tobytes())
        pty.writer_thread([stream[i:i + 101] for i in range(0, len(stream), 101)])
        assert wait_until(lambda: len(got) == 22 and src.stats.rejected_total >= 2, 10), src.stats.snapshot()
    finally:
        stop.set()
        pty.close()
    vad = [s for s in got.samples if s.model == "vad"]
    assert [s.seq for s in vad] == list(range(20)) and all(s.sender == "mcu" for s in vad)
    assert all(np.array_equal((s.feeds or {})["x"], x) and np.array_equal((s.feeds or {})["sr"], SR)
               for s, x in zip(vad, xs))
    seg = next(s for s in got.samples if s.model == "seg")
    assert seg.array.shape == (9, 7, 1) and np.array_equal(seg.array, img)
    assert [(r.model, r.reason, r.seq) for r in rej] == [("vad", "missing_input", 20)]
    assert src.stats.errors == 0


def test_cobs_v2_sizes_are_implied_and_nbytes_is_checked(entries: Dict[str, Any]) -> None:
    src = SerialSource(entries, "loop://", framing="cobs")
    rej: List[Rejection] = []
    src.on_rejected = rej.append
    got = Collector()
    x = _x()
    body = x.tobytes() + SR.tobytes()
    frames = [
        build_cobs_frame({"model": "vad", "seq": 0, "tensors": [{"name": "x"}, {"name": "sr"}]}, body),
        build_cobs_frame({"model": "vad", "seq": 1, "tensors": [{"name": "x", "nbytes": 64},
                                                                 {"name": "sr", "dtype": "<i8", "nbytes": 8}]}, body),
        build_cobs_frame({"model": "vad", "seq": 2, "tensors": [{"name": "x", "nbytes": 60}, {"name": "sr"}]}, body),
        build_cobs_frame({"model": "vad", "seq": 3, "tensors": [{"name": "x"}, {"name": "sr"}]}, body + b"\0"),
        build_cobs_frame({"model": "vad", "seq": 4, "tensors": [{"name": "x", "shpae": [16]}, {"name": "sr"}]}, body),
        build_cobs_frame({"model": "vad", "seq": 5, "tensors": [{"name": "x"}, {"name": "x"}]}, body),
        build_cobs_frame({"model": "vad", "seq": 6, "dtype": "float32", "tensors": [{"name": "x"}, {"name": "sr"}]},
                         body),
    ]
    src.feed(b"".join(frames), got)
    assert [s.seq for s in got.samples] == [0, 1]
    assert np.array_equal((got.samples[1].feeds or {})["sr"], SR)
    assert [(r.seq, r.reason) for r in rej] == [(2, "wrong_size"), (3, "wrong_size"), (4, "bad_header"),
                                                 (5, "bad_header"), (6, "bad_header")]
    assert "'nbytes' is 60" in rej[0].detail and "need 72" in rej[1].detail and "shpae" in rej[2].detail


def test_lines_carry_single_data_input_models_only(entries: Dict[str, Any]) -> None:
    src = SerialSource(entries, "loop://", framing="lines")
    rej: List[Rejection] = []
    src.on_rejected = rej.append
    got = Collector()
    src.feed(format_line(_x(), "vad") + format_line(np.ones(30), "mlp"), got)
    assert [s.model for s in got.samples] == ["mlp"]
    assert [(r.model, r.reason) for r in rej] == [("vad", "missing_input")]
    assert "use cobs framing" in rej[0].detail


def test_a_loaded_model_contract_takes_its_quantised_integer_dtype_too(entries: Dict[str, Any]) -> None:
    """A LoadedModel (or anything with ``entry`` and ``accepted_dtypes``) adds the dtypes a quantised input
    also takes; a ModelEntry alone takes the manifest's dtype only."""

    class Loaded:
        def __init__(self, entry: Any) -> None:
            self.entry = entry

        def accepted_dtypes(self, name: str) -> List[str]:
            return ["float32", "int8"]

    src = ZmqSource({"mlp": Loaded(entries["mlp"]), "plain": entries["mlp"]})
    got = Collector()
    q = np.arange(30, dtype=np.int8)
    src.handle_message(build_tensor_frames({"model": "mlp"}, {"input": q}), got)
    src.handle_message(build_tensor_frames({"model": "plain"}, {"input": q}), got)
    src.handle_message([b'{"model":"mlp","seq":5,"dtype":"int8"}', q.tobytes()], got)  # v1 naming the int type
    src.handle_message([b'{"model":"plain","dtype":"int8"}', q.tobytes()], got)
    src.handle_message([b'{"model":"mlp","seq":6}', np.ones(30, np.float32).tobytes()], got)  # and float still
    assert [s.array.dtype for s in got.samples] == [np.int8, np.int8, np.float32]
    assert np.array_equal(got.samples[0].array, q) and np.array_equal(got.samples[1].array, q)
    assert got.samples[1].seq == 5 and got.samples[1].feeds is None
    assert src.stats.rejected == {"dtype_mismatch": 2}
