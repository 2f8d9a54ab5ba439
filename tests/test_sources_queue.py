"""IngestQueue: block policy backpressure, drop-oldest with callback, close semantics."""

from __future__ import annotations

import threading
import time
from typing import List, Tuple

import numpy as np
import pytest

from edged.sources.queue import IngestQueue
from edged.sources.sample import Sample


def _s(seq: int) -> Sample:
    return Sample(model="mlp", seq=seq, array=np.zeros(3, np.float32), source="t")


@pytest.mark.timeout(10)
def test_block_policy_times_out_and_reports_refusal() -> None:
    dropped: List[Tuple[int, str]] = []
    q = IngestQueue(maxsize=2, policy="block", on_drop=lambda s, r: dropped.append((s.seq, r)))
    assert q.put(_s(0)) and q.put(_s(1), timeout=0)
    assert q.put(_s(2), timeout=0.05) is False
    assert q.stats["rejected_full"] == 1 and dropped == [(2, "queue_full")]
    assert [q.get(0.1).seq, q.get(0.1).seq] == [0, 1]  # type: ignore[union-attr]
    assert q.get(0.05) is None


@pytest.mark.timeout(10)
def test_block_policy_producer_waits_until_consumer_makes_room() -> None:
    q = IngestQueue(maxsize=1, policy="block")
    q.put(_s(0))
    done = threading.Event()

    def producer() -> None:
        q.put(_s(1))  # blocks: queue full
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.2)
    assert q.get(1).seq == 0  # type: ignore[union-attr]
    assert done.wait(2)
    assert q.get(1).seq == 1  # type: ignore[union-attr]
    assert q.stats["rejected_full"] == 0


@pytest.mark.timeout(10)
def test_drop_oldest_evicts_and_hands_every_evicted_sample_to_the_callback() -> None:
    dropped: List[Tuple[int, str]] = []
    q = IngestQueue(maxsize=3, policy="drop-oldest", on_drop=lambda s, r: dropped.append((s.seq, r)))
    for i in range(10):
        assert q.put(_s(i), timeout=0)
    assert [s.seq for s in q.get_many(10, 0.1)] == [7, 8, 9]
    assert dropped == [(i, "dropped_oldest") for i in range(7)]
    st = q.stats
    assert st["dropped_oldest"] == 7 and st["put"] == 10 and st["got"] == 3 and st["high_watermark"] == 3


@pytest.mark.timeout(10)
def test_close_wakes_blocked_getters_and_producers_and_refuses_puts() -> None:
    q = IngestQueue(maxsize=1, policy="block")
    results: List[object] = []
    t = threading.Thread(target=lambda: results.append(q.get(timeout=30)), daemon=True)
    t.start()
    time.sleep(0.1)
    q.close()
    t.join(2)
    assert not t.is_alive() and results == [None]
    dropped: List[str] = []
    q2 = IngestQueue(maxsize=1, policy="block", on_drop=lambda s, r: dropped.append(r))
    q2.put(_s(0))
    t2 = threading.Thread(target=lambda: results.append(q2.put(_s(1))), daemon=True)
    t2.start()
    time.sleep(0.1)
    q2.close()
    t2.join(2)
    assert results[-1] is False and dropped == ["queue_closed"]
    assert q2.drain()[0].seq == 0  # what was queued is still handed out for a decision


@pytest.mark.timeout(10)
def test_callback_errors_are_contained() -> None:
    def boom(sample: Sample, reason: str) -> None:
        raise RuntimeError("callback bug")

    q = IngestQueue(maxsize=1, policy="drop-oldest", on_drop=boom)
    q.put(_s(0))
    assert q.put(_s(1))
    assert q.get(0.1).seq == 1  # type: ignore[union-attr]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        IngestQueue(maxsize=0)
    with pytest.raises(ValueError):
        IngestQueue(policy="drop-newest")
