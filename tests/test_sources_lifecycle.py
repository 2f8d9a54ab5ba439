"""Source start and stop: open() before READY, clear bind errors, serial state, and the ZeroMQ drain on stop.

Real sockets and a real pty throughout.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, List

import numpy as np
import pytest
import zmq

from edged.errors import SourceError
from edged.sources.framing import build_cobs_frame
from edged.sources.serial import SerialSource
from edged.sources.zmq import DRAIN_BATCH, ZmqSource
from tests.helpers_ingest import SPECS, Collector, PtyPair, mlp_rows, wait_until

X = mlp_rows(1)[0]


def _msg(seq: int) -> List[bytes]:
    return [json.dumps({"model": "mlp", "seq": seq}).encode(), X.tobytes()]


@pytest.mark.timeout(20)
def test_bind_failure_is_a_source_error_naming_endpoint_and_errno() -> None:
    ctx = zmq.Context()
    squatter = ctx.socket(zmq.PULL)
    port = squatter.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        src = ZmqSource(SPECS, endpoint=endpoint, name="sensors")
        with pytest.raises(SourceError) as exc:
            src.open()
        assert str(exc.value) == (f"zmq source 'sensors': cannot bind {endpoint}: Address already in use "
                                  "(EADDRINUSE)")
        with pytest.raises(SourceError):  # start() opens first, so it raises the same, before any thread
            src.start(Collector(), threading.Event())
        assert not src.ready.is_set() and src.state() is None
        with pytest.raises(SourceError, match=r"cannot connect tcp//10\.0\.0\.2:5556: Invalid argument \(EINVAL\)"):
            ZmqSource(SPECS, endpoint="tcp//10.0.0.2:5556", bind=False).open()
    finally:
        squatter.close(0)
        ctx.term()


@pytest.mark.timeout(20)
def test_open_binds_synchronously_so_messages_sent_before_start_are_kept() -> None:
    ctx = zmq.Context()
    src = ZmqSource(SPECS, endpoint="tcp://127.0.0.1:*")
    src.open()
    assert src.ready.is_set() and src.bound_endpoint and src.bound_endpoint.startswith("tcp://127.0.0.1:")
    src.open()  # idempotent
    push = ctx.socket(zmq.PUSH)
    push.connect(src.bound_endpoint)
    for i in range(50):
        push.send_multipart(_msg(i))  # "right after READY": before the source thread even exists
    got = Collector()
    stop = threading.Event()
    t = src.start(got, stop)
    try:
        assert wait_until(lambda: len(got) == 50, 10)
    finally:
        stop.set()
        t.join(5)
        push.close(0)
        ctx.term()
    assert [s.seq for s in got.samples] == list(range(50)) and not t.is_alive()


@pytest.mark.timeout(20)
def test_close_without_start_releases_the_endpoint() -> None:
    src = ZmqSource(SPECS, endpoint="tcp://127.0.0.1:*")
    src.open()
    endpoint = src.bound_endpoint or ""
    src.close()
    again = ZmqSource(SPECS, endpoint=endpoint)

    def rebind() -> bool:  # libzmq closes the listener in its I/O thread, a moment after close()
        try:
            again.open()
        except SourceError:
            return False
        return True

    assert wait_until(rebind, 5), "the port is free again"
    again.close()


@pytest.mark.timeout(60)
def test_stop_unbinds_then_drains_everything_that_reached_the_socket() -> None:
    """A sender flat out; the sink is stuck while the socket fills up; then stop. Every message the
    source took from its socket is delivered, in order, with no hole, including the ones that were
    waiting in the socket when stop was set (the drain); what it never took is still queued at the
    sender, which hands it to the next receiver on the same endpoint. The only possible gap is what
    was on the wire when the connection closed (the kernel's buffers), which no receiver can see."""
    ctx = zmq.Context()
    src = ZmqSource(SPECS, endpoint="tcp://127.0.0.1:*", rcvhwm=1000)
    src.open()
    endpoint = src.bound_endpoint or ""
    release = threading.Event()
    got: List[int] = []
    refused: List[Any] = []

    def sink(sample) -> bool:  # type: ignore[no-untyped-def]
        release.wait(30)
        got.append(sample.seq)
        return True

    src.on_rejected = refused.append
    stop = threading.Event()
    t = src.start(sink, stop)
    n_total = 100_000  # ~17 MB: more than loopback TCP buffers can hold, so the sender keeps some
    sent = [0]
    sender_done = threading.Event()

    def sender() -> None:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 0)  # unlimited: the sender keeps everything the receiver did not take
        push.setsockopt(zmq.LINGER, 0)
        push.connect(endpoint)
        for i in range(n_total):
            push.send_multipart(_msg(i))
            sent[0] += 1
        sender_done.wait(30)
        # after the source stopped: a new receiver on the same endpoint gets what the sender kept
        late = ctx.socket(zmq.PULL)
        late.setsockopt(zmq.LINGER, 0)
        for _ in range(100):  # libzmq releases the old listener in its I/O thread, a moment after close
            try:
                late.bind(endpoint)
                break
            except zmq.ZMQError:
                time.sleep(0.05)
        while late.poll(3000):
            later.append(json.loads(late.recv_multipart()[0])["seq"])
        late.close(0)
        push.close(0)

    later: List[int] = []
    st = threading.Thread(target=sender, daemon=True)
    st.start()
    try:
        assert wait_until(lambda: sent[0] == n_total, 30), "the sender is not blocked by the stuck receiver"
        time.sleep(1.0)  # let libzmq fill the receive pipe up to RCVHWM while the sink is stuck
        stop.set()
        release.set()  # the sink works again: the source finishes its burst, unbinds and drains
        t.join(20)
        assert not t.is_alive()
        sender_done.set()
        st.join(30)
    finally:
        release.set()
        stop.set()
        ctx.term()
    assert not refused and src.stats.rejected_total == 0 and src.stats.errors == 0
    k = len(got)
    assert got == list(range(k)), "what the source took from its socket reached the sink, in order, no hole"
    assert src.stats.accepted == k
    # the sink was stuck inside the first burst (at most DRAIN_BATCH messages); the rest came from the drain
    assert k > DRAIN_BATCH, f"the drain handled the messages waiting in the socket at stop (got {k})"
    assert later and later == list(range(later[0], n_total)), "the sender kept the rest and delivered it later"
    in_flight = later[0] - k
    print(f"sent {n_total}: source {k}, next receiver {len(later)}, on the wire at disconnect {in_flight}")
    assert in_flight >= 0


@pytest.mark.timeout(20)
def test_connect_mode_disconnects_and_drains_on_stop() -> None:
    ctx = zmq.Context()
    peer = ctx.socket(zmq.PUSH)
    port = peer.bind_to_random_port("tcp://127.0.0.1")
    src = ZmqSource(SPECS, endpoint=f"tcp://127.0.0.1:{port}", bind=False, context=ctx)
    got = Collector()
    stop = threading.Event()
    t = src.start(got, stop)
    try:
        for i in range(100):
            peer.send_multipart(_msg(i))
        assert wait_until(lambda: len(got) == 100, 10)
    finally:
        stop.set()
        t.join(5)
        peer.close(0)
        ctx.term()
    assert not t.is_alive() and [s.seq for s in got.samples] == list(range(100))


@pytest.mark.timeout(30)
def test_serial_open_before_start_keeps_a_frame_sent_right_after() -> None:
    """pyserial flushes the input buffer when it opens the port: open() does that before READY, so a
    frame written between open() and start() (i.e. right after READY) is read, not flushed."""
    pty = PtyPair()
    rows = mlp_rows(3)
    try:
        pty.write_all(build_cobs_frame({"model": "mlp", "seq": 0}, rows[0].tobytes()))  # before open: flushed
        src = SerialSource(SPECS, pty.path, framing="cobs")
        src.open()
        assert src.connected.is_set() and src.state() is None
        pty.write_all(b"".join(build_cobs_frame({"model": "mlp", "seq": i}, rows[i].tobytes()) for i in (1, 2)))
        got = Collector()
        stop = threading.Event()
        t = src.start(got, stop)
        assert wait_until(lambda: len(got) == 2, 10)
        stop.set()
        t.join(5)
    finally:
        pty.close()
    assert [s.seq for s in got.samples] == [1, 2]
    assert np.array_equal(got.samples[1].array, rows[2])


@pytest.mark.timeout(30)
def test_absent_serial_device_does_not_raise_and_says_why_until_it_appears(tmp_path) -> None:  # type: ignore[no-untyped-def]
    link = tmp_path / "ttyEDGED0"
    src = SerialSource(SPECS, str(link), framing="lines", default_model="mlp")
    src.open()  # no device: no exception
    assert not src.connected.is_set()
    assert src.state() == f"waiting for {link}: No such file or directory (ENOENT)"
    got = Collector()
    stop = threading.Event()
    t = src.start(got, stop)
    pty = PtyPair()
    try:
        os.symlink(pty.path, link)  # the device appears (as udev would create it)
        assert wait_until(src.connected.is_set, 15)
        assert src.state() is None
        pty.write_all(b"0.5" + b",0.5" * 29 + b"\n")
        assert wait_until(lambda: len(got) == 1, 10)
    finally:
        stop.set()
        t.join(7)
        pty.close()
    assert not t.is_alive() and src.stats.errors == 0


def test_serial_url_pyserial_cannot_understand_is_a_source_error() -> None:
    with pytest.raises(SourceError, match=r"serial source 'serial:foo://x': cannot open foo://x: invalid URL"):
        SerialSource(SPECS, "foo://x").open()
