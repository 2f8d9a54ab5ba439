"""An intermediate tensor offloaded over the real fog protocol to a real ``edged fog`` subprocess.

The edge runs the head of a cut of ``rgbcnn``, sends the intermediate tensor with the cut's
name and tail hash, and the fog's tail must give the full model's result; a wrong tail hash
or an unknown cut is refused; ping replies report each cut's tail time.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from edged.models import Catalogue  # noqa: E402
from edged.offload.fog_client import FogError, FogRefused, ZmqFogBackend  # noqa: E402
from edged.partition.split import PartitionedModel  # noqa: E402
from tests.test_offload_fog import FogProcess  # noqa: E402

MODEL = "rgbcnn"


@pytest.fixture(scope="module")
def fog():
    f = FogProcess("--model", MODEL, "--model", "mlp", "--cuts")
    yield f
    assert f.stop() == 0


@pytest.fixture(scope="module")
def edge():
    cat = Catalogue.discover()
    entry = cat.get(MODEL)
    pm = PartitionedModel(entry, max_verify=64)
    x, _ = entry.load_validation()
    with cat.load(MODEL, "onnx") as full:
        want = full.predict(x[:8])
    return entry, pm, x[:8], want


def test_intermediate_tensor_over_the_fog_gives_the_full_result(fog, edge):
    entry, pm, x, want = edge
    client = ZmqFogBackend(fog.endpoint)
    client.ping(timeout_s=10.0)  # connected: an infer request never waits for the connection
    try:
        interior = [c for c in pm.cuts if c.interior]
        assert [c.name for c in interior][:5] == ["a1", "r1", "a1b", "r1b", "p1"]
        for c in interior:
            for i in (0, 5):
                mid = pm.head(c.name, x[i])[0]  # one sample, no batch axis
                assert mid.nbytes == c.bytes
                reply = client.submit(MODEL, mid, entry.model_hash, 10.0, cut=(c.name, c.tail_hash)).result(15)
                assert reply.outputs.shape == (10,)
                assert np.max(np.abs(reply.outputs - want[i])) <= 1e-5, c.name
                assert reply.bytes_out > c.bytes and reply.t_f_us > 0
        # the whole input, the v1 way, still works next to cut requests
        reply = client.submit(MODEL, x[1], entry.model_hash, 10.0).result(15)
        assert np.max(np.abs(reply.outputs - want[1])) <= 1e-5
        ping = client.ping(timeout_s=5.0)
        cuts = ping.models[MODEL]["cuts"]
        assert set(cuts) == {c.name for c in interior}
        assert all(v["t_tail_us"] > 0 and v["tail_hash"] == pm.cut(k).tail_hash for k, v in cuts.items())
        assert set(ping.models["mlp"]["cuts"]) == {"h_pre", "h", "logits"}  # --cuts: every ONNX model at start
    finally:
        client.close()


def test_wrong_tail_hash_and_unknown_cut_are_refused(fog, edge):
    entry, pm, x, _ = edge
    client = ZmqFogBackend(fog.endpoint)
    client.ping(timeout_s=10.0)  # connected: an infer request never waits for the connection
    try:
        c = pm.cut("p1")
        mid = pm.head("p1", x[0])[0]
        with pytest.raises(FogRefused, match=r"cut 'p1': tail hash mismatch: edge has 0{64}, fog has " + c.tail_hash):
            client.submit(MODEL, mid, entry.model_hash, 10.0, cut=("p1", "0" * 64)).result(15)
        with pytest.raises(FogRefused, match=r"no usable cut 'h1'; usable: all-fog, a1, r1, a1b"):
            client.submit(MODEL, mid, entry.model_hash, 10.0, cut=("h1", c.tail_hash)).result(15)
        with pytest.raises(FogRefused, match="hash mismatch: edge has nope"):  # the model hash is checked first
            client.submit(MODEL, mid, "nope", 10.0, cut=("p1", c.tail_hash)).result(15)
        with pytest.raises(FogError, match=r"cut 'p1': the intermediate tensor has shape \[1, 8, 16, 15\]"):
            client.submit(MODEL, mid[:, :, :15], entry.model_hash, 10.0, cut=("p1", c.tail_hash)).result(15)
        # after the refusals the same connection still serves a right request
        reply = client.submit(MODEL, mid, entry.model_hash, 10.0, cut=("p1", c.tail_hash)).result(15)
        assert reply.outputs.shape == (10,)
    finally:
        client.close()


def test_without_cuts_flag_tails_are_built_on_the_first_cut_request(edge):
    entry, pm, x, want = edge
    f = FogProcess("--model", MODEL, "--workers", "1")
    client = ZmqFogBackend(f.endpoint)
    try:
        assert "cuts" not in client.ping(timeout_s=10.0).models[MODEL]
        c = pm.cut("p2")
        reply = client.submit(MODEL, pm.head("p2", x[2]), entry.model_hash, 30.0,
                              cut=(c.name, c.tail_hash)).result(35)  # batch axis included: also accepted
        assert np.max(np.abs(reply.outputs - want[2])) <= 1e-5
        assert "p2" in client.ping(timeout_s=5.0).models[MODEL]["cuts"]
    finally:
        client.close()
        assert f.stop() == 0


def test_a_malformed_cut_header_is_an_error_reply_and_costs_nothing(fog, edge):
    import zmq

    from edged.offload.protocol import array_to_frames, decode_header

    entry, pm, x, _ = edge
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10_000)
    s.connect(fog.endpoint)
    try:
        mid = pm.head("p1", x[0])[0]
        for bad in ("p1", {"name": "p1"}, {"name": 3, "hash": "x"}):
            s.send_multipart(array_to_frames({"v": 1, "id": "r", "kind": "infer", "model": MODEL,
                                              "model_hash": entry.model_hash, "cut": bad}, mid))
            h = decode_header(s.recv_multipart()[0])
            assert h["status"] == "error" and "'cut' must be an object" in h["error"], h
        c = pm.cut("p1")
        s.send_multipart(array_to_frames({"v": 1, "id": "ok", "kind": "infer", "model": MODEL,
                                          "model_hash": entry.model_hash, "cut": {"name": "p1", "hash": c.tail_hash}},
                                         mid))
        h = decode_header(s.recv_multipart()[0])
        assert h["status"] == "ok" and h["cut"] == "p1" and h["shape"] == [10]
    finally:
        s.close()
        ctx.term()
