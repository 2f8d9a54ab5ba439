"""ZmqSource against a real PUSH socket on loopback."""

from __future__ import annotations

import json
import threading
from typing import List

import numpy as np
import pytest
import zmq

from edged.runtime.base import TensorSpec
from edged.sources.queue import IngestQueue
from edged.sources.zmq import ZmqSource
from tests.helpers_ingest import SPECS, Collector, mlp_rows, wait_until


def _start(source: ZmqSource, sink) -> threading.Event:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    source.start(sink, stop)
    assert source.ready.wait(5)
    return stop


def _push(endpoint: str, ctx: zmq.Context, sndhwm: int = 1000) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.connect(endpoint)
    return sock


@pytest.mark.timeout(30)
def test_two_frame_and_json_messages_from_a_real_push_socket() -> None:
    ctx = zmq.Context()
    got = Collector()
    src = ZmqSource(SPECS, endpoint="tcp://127.0.0.1:*", rcvhwm=100)
    stop = _start(src, got)
    push = _push(src.bound_endpoint or "", ctx)
    rows = mlp_rows(200)
    img = np.random.default_rng(2).random((8, 8, 1)).astype(np.float32)
    try:
        for i in range(200):
            header = {"model": "mlp", "seq": i, "ts": 1700000000.25, "deadline_ms": 50, "sensor": "ecg-1"}
            push.send_multipart([json.dumps(header).encode(), rows[i].tobytes()])
        push.send_multipart([b'{"model":"cnn","shape":[8,8,1],"dtype":"float32"}', img.tobytes()])
        push.send(json.dumps({"model": "mlp", "seq": 200, "data": rows[0].tolist()}).encode())
        push.send(json.dumps({"model": "cnn", "data": img.tolist()}).encode())
        push.send_multipart([b' {"model": "mlp", "seq": 201} \n', rows[1].tobytes()])  # whitespace is fine
        push.send_multipart([b'{"model":"mlp","seq":202,"ts":5}', rows[2].tobytes()])  # int ts is fine
        assert wait_until(lambda: len(got) == 205, 10)
    finally:
        stop.set()
        push.close()
        ctx.term()
    s = got.samples
    assert [x.seq for x in s[:200]] == list(range(200))
    assert np.array_equal(np.stack([x.array for x in s[:200]]), rows)
    assert s[0].sender_ts == 1700000000.25 and s[0].deadline_ms == 50.0 and s[0].meta == {"sensor": "ecg-1"}
    assert s[0].source == "zmq" and s[0].array.flags.writeable
    assert s[200].model == "cnn" and s[200].array.shape == (8, 8, 1) and np.array_equal(s[200].array, img)
    assert s[201].seq == 200 and np.array_equal(s[201].array, rows[0])
    assert s[202].model == "cnn" and np.array_equal(s[202].array, img)
    assert [x.seq for x in s[203:]] == [201, 202] and s[204].sender_ts == 5.0
    assert np.array_equal(s[203].array, rows[1]) and np.array_equal(s[204].array, rows[2])
    snap = src.stats.snapshot()
    assert snap["accepted"] == 205 and snap["rejected_total"] == 0 and snap["lost_in_transit"] == 0


@pytest.mark.timeout(30)
def test_every_zmq_rejection_reason_is_counted_and_source_keeps_running() -> None:
    ctx = zmq.Context()
    got = Collector()
    src = ZmqSource(SPECS, endpoint="tcp://127.0.0.1:*", max_msg_bytes=1000)
    stop = _start(src, got)
    push = _push(src.bound_endpoint or "", ctx)
    x = np.ones(30, np.float32)
    nan = x.copy()
    nan[0] = np.inf
    bad: List[List[bytes]] = [
        [b"{nope", x.tobytes()],                                      # bad_header
        [b'{"model":"vgg"}', x.tobytes()],                              # unknown_model
        [b'{"model":"mlp"}', x.tobytes()[:-4]],                         # wrong_size
        [b'{"model":"mlp","dtype":"float64"}', x.astype(np.float64)[:15].tobytes()],  # dtype_mismatch
        [b'{"model":"mlp"}', nan.tobytes()],                            # non_finite
        [b"not json at all"],                                           # unparsable
        [b'{"model":"mlp","pad":"' + b"x" * 900 + b'"}', x.tobytes()],  # oversize (whole message > 1000 bytes)
    ]
    try:
        for frames in bad:
            push.send_multipart(frames)
            push.send_multipart([b'{"model":"mlp"}', x.tobytes()])
        assert wait_until(lambda: len(got) == len(bad), 10)
    finally:
        stop.set()
        push.close()
        ctx.term()
    assert src.stats.snapshot()["rejected"] == {
        "bad_header": 1, "unknown_model": 1, "wrong_size": 1, "dtype_mismatch": 1, "non_finite": 1,
        "unparsable": 1, "oversize": 1,
    }
    assert [s.seq for s in got.samples] == list(range(len(bad)))  # no seq sent: the source numbers them


@pytest.mark.timeout(30)
def test_seq_gaps_are_lost_in_transit_per_sender_and_model() -> None:
    src = ZmqSource(SPECS)
    x = np.zeros(30, np.float32).tobytes()
    got = Collector()
    for sender, seq in [("a", 0), ("a", 1), ("b", 0), ("a", 4), ("b", 1), ("a", 5)]:
        src.handle_message([json.dumps({"model": "mlp", "seq": seq, "sender": sender}).encode(), x], got)
    assert src.stats.lost_in_transit == 2 and len(got) == 6
    assert got.samples[0].sender == "a" and got.samples[0].meta == {}


@pytest.mark.timeout(60)
def test_block_policy_gives_backpressure_to_the_pusher_without_loss() -> None:
    big = {"big": TensorSpec("input", (None, 16384), "float32", "NC")}  # 64 KiB per input
    ctx = zmq.Context()
    queue = IngestQueue(maxsize=4, policy="block")
    src = ZmqSource(big, endpoint="tcp://127.0.0.1:*", rcvhwm=4)
    stop = _start(src, queue.sink())
    push = _push(src.bound_endpoint or "", ctx, sndhwm=4)
    payload = np.zeros(16384, np.float32).tobytes()
    sent = 0
    blocked = False
    try:
        while sent < 2000:  # 128 MiB if nothing pushed back
            try:
                push.send_multipart([json.dumps({"model": "big", "seq": sent}).encode(), payload], zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                if not push.poll(300, zmq.POLLOUT):
                    blocked = True
                    break
        assert blocked, "sender never felt backpressure"
        assert sent < 2000
        assert queue.qsize() == 4
        received: List[int] = []
        while len(received) < sent:
            s = queue.get(timeout=5)
            assert s is not None
            received.append(s.seq)
    finally:
        stop.set()
        queue.close()
        push.close()
        ctx.term()
    assert received == list(range(sent))
    assert queue.stats["rejected_full"] == 0 and queue.stats["dropped_oldest"] == 0


@pytest.mark.timeout(20)
def test_connect_mode_and_prompt_stop() -> None:
    ctx = zmq.Context()
    pull_peer = ctx.socket(zmq.PUSH)
    port = pull_peer.bind_to_random_port("tcp://127.0.0.1")
    got = Collector()
    src = ZmqSource(SPECS, endpoint=f"tcp://127.0.0.1:{port}", bind=False, context=ctx)
    stop = threading.Event()
    t = src.start(got, stop)
    try:
        assert src.ready.wait(5)
        pull_peer.send(json.dumps({"model": "mlp", "data": [0.5] * 30}).encode())
        assert wait_until(lambda: len(got) == 1, 5)
    finally:
        stop.set()
        t.join(2)
        pull_peer.close(0)
        ctx.term()
    assert not t.is_alive()
