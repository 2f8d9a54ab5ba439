"""Dispatcher bookkeeping with a scripted fog back end: one record per input, whatever happens.

The fog here is a scripted :class:`FogBackend` (the network paths are covered against a real
``edged fog`` in test_offload_fog.py); the models are the real shipped ones.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pytest

from edged.models import Catalogue
from edged.offload.dispatcher import Dispatcher
from edged.offload.estimator import LinkEstimator
from edged.offload.fog_client import FogBackend, FogReply, FogUnavailable, PingReply
from edged.offload.policy import decide, inputs_from_record
from edged.sources.sample import Sample


class ScriptedFog(FogBackend):
    """Holds every request until the test resolves it; pings answer at once with fixed numbers."""

    def __init__(self) -> None:
        self.pending: List[Future] = []
        self.lock = threading.Lock()

    def submit(self, model: str, array: np.ndarray, model_hash: Optional[str], timeout_s: float) -> Future:
        fut: Future = Future()
        with self.lock:
            self.pending.append(fut)
        return fut

    def ping(self, timeout_s: float = 1.0, pad_bytes: int = 0) -> PingReply:
        return PingReply(rtt_us=1000.0 + pad_bytes / 10, bytes_out=100 + pad_bytes, bytes_in=100 + pad_bytes,
                         models={"cnn": {"model_hash": "x", "t_f_us": 500.0}})

    def close(self) -> None:
        pass

    def resolve_all_ok(self) -> None:
        with self.lock:
            futs, self.pending = self.pending, []
        for f in futs:
            f.set_result(FogReply(outputs=np.eye(10, dtype=np.float32)[4], t_f_us=500.0, queue_us=0.0,
                                  rtt_us=3000.0, bytes_out=500, bytes_in=200))

    def fail_all(self) -> None:
        with self.lock:
            futs, self.pending = self.pending, []
        for f in futs:
            f.set_exception(FogUnavailable("scripted failure"))


@pytest.fixture(scope="module")
def cnn() -> Iterator[Any]:
    m = Catalogue.discover().load("cnn", backend="onnx")
    yield m
    m.close()


def _x() -> np.ndarray:
    return np.zeros((8, 8, 1), np.float32)


def _ready(d: Dispatcher) -> None:
    deadline = time.monotonic() + 5
    while d.link.t_f_us("cnn") is None and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.timeout(30)
def test_backpressure_blocks_but_never_drops(cnn: Any) -> None:
    records: List[Dict[str, Any]] = []
    d = Dispatcher({"cnn": cnn}, {"*": "local"}, records.append, max_local_queue=1)
    for i in range(200):
        d.submit(Sample(model="cnn", seq=i, array=_x(), source="t"))
    assert d.close(10.0)
    assert sorted(r["seq"] for r in records) == list(range(200))
    assert {r["decision"] for r in records} == {"local"}
    assert d.stats()["decisions"]["local"] == 200 and d.stats()["in_flight"] == 0


@pytest.mark.timeout(30)
def test_rejected_unknown_and_after_close(cnn: Any) -> None:
    records: List[Dict[str, Any]] = []
    d = Dispatcher({"cnn": cnn}, {"*": "local"}, records.append)
    d.record_rejected(Sample(model="cnn", seq=1, array=_x()), "dropped_oldest")
    d.submit(Sample(model="nope", seq=2, array=_x()))
    assert d.close(5.0)
    d.submit(Sample(model="cnn", seq=3, array=_x()))
    assert [(r["seq"], r["decision"]) for r in records] == [(1, "rejected"), (2, "rejected"), (3, "rejected")]
    assert "not loaded" in records[1]["error"] and records[2]["error"] == "dispatcher closed"


@pytest.mark.timeout(30)
def test_offload_success_failure_and_close_leftovers(cnn: Any) -> None:
    records: List[Dict[str, Any]] = []
    fog = ScriptedFog()
    calls: List[str] = []

    class Activity:
        def begin(self, kind: str) -> str:
            calls.append(kind)
            return kind

        def end(self, token: str) -> None:
            calls.append("end-" + token)

    d = Dispatcher({"cnn": cnn}, {"*": "offload"}, records.append, fog=fog, model_hashes={"cnn": "x"},
                   energy_fn=lambda t0, t1: 1.5, activity=Activity())
    _ready(d)
    for i in range(3):
        d.submit(Sample(model="cnn", seq=i, array=_x()))
    fog.resolve_all_ok()
    for i in range(3, 5):
        d.submit(Sample(model="cnn", seq=i, array=_x()))
    fog.fail_all()
    d.submit(Sample(model="cnn", seq=5, array=_x()))  # never answered: close() must still record it
    assert not d.close(0.5)
    by_seq = {r["seq"]: r for r in records}
    assert sorted(by_seq) == [0, 1, 2, 3, 4, 5] and len(records) == 6
    assert [by_seq[i]["decision"] for i in range(5)] == ["offload"] * 3 + ["fallback"] * 2
    res = by_seq[0]["result"]
    assert (res["label"], res["name"], res["score"]) == (4, "4", 1.0) and res["top"][0] == [4, 1.0]
    assert by_seq[0]["transfer_us"] == 2500.0
    assert by_seq[0]["energy_mj"] == 1.5 and by_seq[3]["energy_mj"] == 1.5
    assert "scripted failure" in by_seq[3]["fog_error"] and by_seq[3]["result"] is not None
    assert "closed before the input finished" in by_seq[5]["error"]
    fog.resolve_all_ok()  # a reply after close: still exactly one record each
    time.sleep(0.05)
    assert len(records) == 6
    assert calls.count("radio") == 6 and calls.count("local") == 2
    for r in records[:5]:
        replay = decide(r["policy"], inputs_from_record(r)).decision
        assert replay == ("offload" if r["decision"] == "fallback" else r["decision"])


@pytest.mark.timeout(30)
def test_overdue_offload_raises_t_l(cnn: Any) -> None:
    now = [1000.0]
    records: List[Dict[str, Any]] = []
    fog = ScriptedFog()
    link = LinkEstimator(clock=lambda: now[0])
    link.observe_round_trip(300, 200, 3000.0, t_f_us=500.0, model="cnn")
    d = Dispatcher({"cnn": cnn}, {"*": "adaptive"}, records.append, fog=fog, link=link, clock=lambda: now[0],
                   wcet_us={"cnn": 50_000.0}, model_hashes={"cnn": "x"}, probe_interval_s=60)
    d.submit(Sample(model="cnn", seq=0, array=_x(), t_arrival=now[0]))  # offloaded, never answered yet
    now[0] += 0.5  # 500 ms later: far beyond its ~3 ms expected round trip
    d.submit(Sample(model="cnn", seq=1, array=_x(), t_arrival=now[0]))
    fog.resolve_all_ok()
    assert d.close(5.0)
    by_seq = {r["seq"]: r for r in records}
    assert by_seq[0]["decision"] == "offload"
    assert by_seq[1]["t_l_us"] > 400_000 and by_seq[1]["decision"] == "local"
