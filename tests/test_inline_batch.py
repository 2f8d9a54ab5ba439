"""The batch hand-off (issue 13): inputs a source receives back to back reach a BatchSink in one call, in order,
around anything the fast path does not take; the dispatcher decides them together and, when its worker is idle,
runs same-model neighbours as one batch on the caller's thread. Every input still ends as exactly one record."""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pytest

from edged.models import Catalogue
from edged.offload.dispatcher import Dispatcher
from edged.sources.base import Rejection, batch_sink
from edged.sources.sample import Sample
from edged.sources.zmq import ZmqSource
from tests.helpers_ingest import SPECS, Collector, mlp_rows


class ManySink:
    """A BatchSink that remembers each call: ("one", [seq]) or ("many", [seqs]); refuses seqs in ``refuse``."""

    def __init__(self, refuse: Sequence[int] = ()) -> None:
        self.calls: List[Tuple[str, List[int]]] = []
        self.samples: List[Sample] = []
        self.refuse = set(refuse)

    def __call__(self, sample: Sample) -> bool:
        self.calls.append(("one", [sample.seq]))
        return self._take([sample]) == 1

    def many(self, samples: Sequence[Sample]) -> int:
        self.calls.append(("many", [s.seq for s in samples]))
        return self._take(samples)

    def _take(self, samples: Sequence[Sample]) -> int:
        kept = [s for s in samples if s.seq not in self.refuse]
        self.samples.extend(kept)
        return len(kept)


def _two_frame(seq: int, row: np.ndarray) -> List[bytes]:
    return [json.dumps({"model": "mlp", "seq": seq}).encode(), row.tobytes()]


def test_a_burst_reaches_a_batch_sink_in_order_around_general_path_and_refused_messages() -> None:
    rows = mlp_rows(12)
    nan = rows[5].copy()
    nan[3] = np.nan
    burst: List[List[bytes]] = [_two_frame(i, rows[i]) for i in range(5)]           # 0-4: fast path
    burst.append(_two_frame(5, nan))                                                 # 5: non_finite
    burst += [_two_frame(i, rows[i]) for i in range(6, 9)]                           # 6-8: fast path
    burst.append([json.dumps({"model": "mlp", "seq": 9, "data": rows[9].tolist()}).encode()])  # 9: general
    burst += [_two_frame(i, rows[i]) for i in range(10, 12)]                         # 10-11: fast path
    src = ZmqSource(SPECS)
    rejected: List[Rejection] = []
    src.on_rejected = rejected.append
    sink = ManySink()
    assert batch_sink(sink) is not None and batch_sink(Collector()) is None
    src.handle_burst([(m, float(i)) for i, m in enumerate(burst)], sink)
    assert sink.calls == [("many", [0, 1, 2, 3, 4]), ("many", [6, 7, 8]), ("one", [9]), ("many", [10, 11])]
    assert [s.seq for s in sink.samples] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert np.array_equal(np.stack([s.array for s in sink.samples]), np.delete(rows, 5, axis=0))
    assert [r.seq for r in rejected] == [5] and rejected[0].reason == "non_finite"
    snap = src.stats.snapshot()
    assert snap["accepted"] == 11 and snap["rejected"] == {"non_finite": 1} and snap["errors"] == 0


def test_a_batch_sink_that_refuses_some_inputs_is_counted_like_one_by_one_delivery() -> None:
    rows = mlp_rows(6)
    src_many, src_one = ZmqSource(SPECS), ZmqSource(SPECS)
    burst = [(_two_frame(i, rows[i]), float(i)) for i in range(6)]
    src_many.handle_burst(burst, ManySink(refuse=[1, 4]))
    one = Collector()
    src_one.handle_burst(burst, one)  # a plain callable: one call per sample, as before
    assert len(one) == 6
    a, b = src_many.stats.snapshot(), src_one.stats.snapshot()
    assert a["accepted"] == b["accepted"] == 6
    assert a["not_accepted_downstream"] == 2 and b["not_accepted_downstream"] == 0


def test_a_batch_sink_that_raises_is_counted_and_the_source_goes_on() -> None:
    class Broken(ManySink):
        def many(self, samples: Sequence[Sample]) -> int:
            raise RuntimeError("downstream bug")

    rows = mlp_rows(4)
    src = ZmqSource(SPECS)
    sink = Broken()
    src.handle_burst([(_two_frame(i, rows[i]), float(i)) for i in range(3)], sink)
    src.handle_burst([([json.dumps({"model": "mlp", "seq": 3, "data": rows[3].tolist()}).encode()], 3.0)], sink)
    snap = src.stats.snapshot()
    assert snap["errors"] == 1 and snap["accepted"] == 4
    assert [s.seq for s in sink.samples] == [3], "the next message is delivered as usual"


@pytest.fixture(scope="module")
def mlp() -> Any:
    return Catalogue.discover().load("mlp", backend="onnx", threads=1)


def test_a_burst_submitted_together_runs_inline_as_one_batch_with_one_record_each(mlp: Any) -> None:
    records: List[Dict[str, Any]] = []
    threads: List[str] = []

    def sink_many(recs: List[Dict[str, Any]]) -> None:
        threads.append(threading.current_thread().name)
        records.extend(recs)

    d = Dispatcher({"mlp": mlp}, {"*": "local"}, sink=lambda r: sink_many([r]), sink_many=sink_many,
                   wcet_us={"mlp": 100.0}, max_batch=8)
    rows = mlp_rows(20)
    try:
        d.submit_many([Sample("mlp", i, rows[i], "test") for i in range(20)])
        assert d.close(5.0)
    finally:
        d.close(1.0)
    assert sorted(r["seq"] for r in records) == list(range(20)), "exactly one record per input"
    assert [r["seq"] for r in records] == list(range(20)), "in order: the caller ran them itself"
    assert set(threads) == {threading.current_thread().name}, "no hand-off to a worker thread"
    assert [r["batch"] for r in records] == [8] * 16 + [4] * 4, "same-model neighbours as batches of max_batch"
    want = mlp.predict(rows).argmax(axis=1)
    assert [r["result"]["label"] for r in records] == want.tolist()
    # the batched classifier summary is the per-row one, value for value
    one: List[Dict[str, Any]] = []
    d1 = Dispatcher({"mlp": mlp}, {"*": "local"}, sink=one.append, wcet_us={"mlp": 100.0})
    try:
        for i in range(20):
            d1.submit(Sample("mlp", i, rows[i], "test"))
        assert d1.close(5.0)
    finally:
        d1.close(1.0)
    assert [r["batch"] for r in one] == [1] * 20
    assert [r["result"] for r in one] == [r["result"] for r in records]


def test_a_burst_behind_a_busy_worker_is_queued_not_run_inline(mlp: Any) -> None:
    gate = threading.Event()
    started = threading.Event()

    class Slow:
        """The mlp, but its first run blocks until the test lets it go (keeps the worker busy)."""

        entry = mlp.entry

        def predict(self, x: np.ndarray, validate: bool = True) -> np.ndarray:
            if not started.is_set():
                started.set()
                assert gate.wait(10)
            return mlp.predict(x, validate=validate)

    records: List[Dict[str, Any]] = []
    lock = threading.Lock()

    def sink(r: Dict[str, Any]) -> None:
        with lock:
            records.append(dict(r, thread=threading.current_thread().name))

    d = Dispatcher({"mlp": Slow()}, {"*": "local"}, sink=sink, wcet_us={"mlp": 100.0})
    rows = mlp_rows(6)
    try:
        t = threading.Thread(target=d.submit, args=(Sample("mlp", 0, rows[0], "test"),))
        t.start()  # runs inline on this thread, and blocks inside predict
        assert started.wait(5)
        d.submit_many([Sample("mlp", i, rows[i], "test") for i in range(1, 6)])  # returns: queued for a worker
        gate.set()
        t.join(5)
        assert d.close(5.0)
    finally:
        gate.set()
        d.close(1.0)
    assert sorted(r["seq"] for r in records) == list(range(6))
    by_seq = {r["seq"]: r for r in records}
    assert by_seq[0]["thread"] == t.name
    assert all(by_seq[i]["thread"].startswith("dispatch-local") for i in range(1, 6))


def test_a_serial_chunk_reaches_a_batch_sink_in_order_around_bad_lines() -> None:
    from edged.sources.serial import SerialSource

    rows = mlp_rows(6)

    def line(i: int) -> bytes:
        return ("mlp:" + ",".join(f"{v:.6g}" for v in rows[i]) + "\n").encode()

    src = SerialSource(SPECS, url="loop://", framing="lines")
    sink = ManySink()
    chunk = line(0) + line(1) + b"mlp:1,2,3\n" + line(2) + line(3) + line(4) + b"mlp:" + b",".join([b"nan"] * 30) + b"\n"
    src.feed(chunk + line(5), sink)
    assert sink.calls == [("many", [0, 1]), ("many", [2, 3, 4]), ("one", [5])]
    assert np.allclose(np.stack([s.array for s in sink.samples]), rows, atol=1e-5)
    snap = src.stats.snapshot()
    assert snap["accepted"] == 6 and snap["rejected"] == {"non_finite": 1, "wrong_size": 1}


def test_long_local_work_goes_to_a_worker_so_the_caller_keeps_receiving(mlp: Any) -> None:
    from edged.offload.dispatcher import INLINE_MAX_US

    threads: Dict[str, str] = {}

    def sink(r: Dict[str, Any]) -> None:
        threads[r["model"] + str(r["seq"])] = threading.current_thread().name

    rows = mlp_rows(2)
    for name, est in (("short", INLINE_MAX_US / 4), ("long", INLINE_MAX_US * 2)):
        d = Dispatcher({"mlp": mlp}, {"*": "local"}, sink, wcet_us={"mlp": est}, local_exec_us={"mlp": est})
        try:
            d.submit(Sample("mlp", 0 if name == "short" else 1, rows[0], "test"))
            assert d.close(5.0)
        finally:
            d.close(1.0)
    assert threads["mlp0"] == threading.current_thread().name, "expected to be short: run on the caller"
    assert threads["mlp1"].startswith("dispatch-local"), "expected to be long: handed to a worker"
