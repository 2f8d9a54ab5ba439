"""SerialSource on real transports: a pty at full speed, socket:// against a TCP server, loop://."""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
import zlib
from typing import List, Optional

import numpy as np
import pytest

from edged.sources.framing import FrameError, build_body, build_cobs_frame, cobs_decode, cobs_encode, format_line
from edged.sources.serial import SerialSource
from tests.helpers_ingest import SPECS, Collector, PtyPair, mlp_rows, wait_until

N_FRAMES = 10_000


def _run(source: SerialSource, sink: Collector) -> threading.Event:
    stop = threading.Event()
    source.start(sink, stop)
    assert source.connected.wait(5), "serial port did not open"
    return stop


@pytest.mark.timeout(60)
def test_10000_cobs_frames_with_garbage_over_a_pty_all_arrive_in_order() -> None:
    rng = random.Random(42)
    rows = mlp_rows(N_FRAMES)
    chunks: List[bytes] = []
    garbage_nonzero = 0
    garbage_segments = 0
    for i in range(N_FRAMES):
        if rng.random() < 0.3:
            junk = bytes(rng.randrange(0, 256) for _ in range(rng.randint(1, 50)))
            garbage_nonzero += sum(1 for b in junk if b)
            garbage_segments += sum(1 for s in junk.split(b"\x00") if s)
            chunks.append(junk)
        chunks.append(build_cobs_frame({"model": "mlp", "seq": i, "ts": 1.5}, rows[i].tobytes()))
    pty = PtyPair()
    got = Collector()
    src = SerialSource(SPECS, pty.path, framing="cobs")
    stop = _run(src, got)
    try:
        pty.writer_thread([b"".join(chunks)])
        assert wait_until(lambda: len(got) >= N_FRAMES and src.stats.rejected_total >= garbage_segments, 30)
        time.sleep(0.05)
    finally:
        stop.set()
        pty.close()
    assert [s.seq for s in got.samples] == list(range(N_FRAMES))
    assert np.array_equal(np.stack([s.array for s in got.samples]), rows)
    assert all(s.model == "mlp" and s.sender_ts == 1.5 and s.array.dtype == np.float32 for s in got.samples)
    snap = src.stats.snapshot()
    print("garbage test (cobs) rejection counters:", json.dumps(snap))
    assert snap["accepted"] == N_FRAMES
    assert snap["garbage_bytes"] == garbage_nonzero
    assert snap["rejected_total"] == garbage_segments
    assert set(snap["rejected"]) <= {"bad_cobs", "truncated", "bad_crc"}
    assert snap["lost_in_transit"] == 0 and snap["errors"] == 0


@pytest.mark.timeout(60)
def test_10000_lines_with_garbage_lines_over_a_pty_all_arrive_in_order() -> None:
    rng = random.Random(43)
    rows = mlp_rows(N_FRAMES, seed=1)
    chunks: List[bytes] = []
    n_garbage = 0
    alphabet = [b for b in range(256) if b not in (0x0A, 0x0D)]  # both end a line
    for i in range(N_FRAMES):
        if rng.random() < 0.3:
            junk = bytearray(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            junk.insert(rng.randint(0, len(junk)), 0xFF)  # never valid UTF-8/ASCII: always unparsable
            chunks.append(bytes(junk) + b"\n")
            n_garbage += 1
        eol = b"\r\n" if i % 2 else b"\n"
        chunks.append(format_line(rows[i], "mlp" if i % 3 else None)[:-1] + eol)
    pty = PtyPair()
    got = Collector()
    src = SerialSource(SPECS, pty.path, framing="lines", default_model="mlp")
    stop = _run(src, got)
    try:
        pty.writer_thread([b"".join(chunks)])
        assert wait_until(lambda: len(got) >= N_FRAMES and src.stats.rejected_total >= n_garbage, 30)
    finally:
        stop.set()
        pty.close()
    assert [s.seq for s in got.samples] == list(range(N_FRAMES))
    assert np.array_equal(np.stack([s.array for s in got.samples]), rows)
    snap = src.stats.snapshot()
    print("garbage test (lines) rejection counters:", json.dumps(snap))
    assert snap["rejected"] == {"unparsable": n_garbage}
    assert snap["accepted"] == N_FRAMES and snap["errors"] == 0


def _frame_from_body(body: bytes) -> bytes:
    return b"\x00" + cobs_encode(body) + b"\x00"


def _crc_body(raw: bytes) -> bytes:
    return raw + struct.pack("<I", zlib.crc32(raw))


@pytest.mark.timeout(30)
def test_every_rejection_reason_is_counted_once_and_valid_frames_survive() -> None:
    x = np.arange(30, dtype=np.float32)
    good = build_cobs_frame({"model": "mlp"}, x.tobytes())
    nan = x.copy()
    nan[3] = np.nan
    cut = cobs_encode(build_body({"model": "mlp"}, x.tobytes()))[:-1]
    with pytest.raises(FrameError):
        cobs_decode(cut)
    bad_frames = {
        "bad_crc": _frame_from_body(build_body({"model": "mlp"}, x.tobytes())[:-4] + b"\x01\x02\x03\x04"),
        "bad_cobs": b"\x00" + cut + b"\x00",
        "truncated": _frame_from_body(b"\x01\x02\x03"),
        "oversize": b"\x00" + b"\x55" * 5000 + b"\x00",
        "bad_header": _frame_from_body(_crc_body(struct.pack("<H", 4) + b"nope")),
        "unknown_model": build_cobs_frame({"model": "resnet"}, x.tobytes()),
        "wrong_size": build_cobs_frame({"model": "mlp"}, x[:29].tobytes()),
        "dtype_mismatch": build_cobs_frame({"model": "mlp", "dtype": "float64"}, x.astype(np.float64)[:15].tobytes()),
        "non_finite": build_cobs_frame({"model": "mlp"}, nan.tobytes()),
    }
    pty = PtyPair()
    got = Collector()
    src = SerialSource(SPECS, pty.path, framing="cobs", max_frame_bytes=4096)
    stop = _run(src, got)
    try:
        pty.write_all(b"".join(f + good for f in bad_frames.values()))
        assert wait_until(lambda: len(got) >= len(bad_frames), 10)
    finally:
        stop.set()
        pty.close()
    assert src.stats.snapshot()["rejected"] == {reason: 1 for reason in bad_frames}
    assert len(got) == len(bad_frames)

    # lines framing: unparsable, unknown model without default, non-finite, wrong size, int dtype mismatch
    pty = PtyPair()
    got = Collector()
    src = SerialSource(SPECS, pty.path, framing="lines")
    stop = _run(src, got)
    try:
        pty.write_all(b"mlp: 1, 2, zebra\n1,2,3\nmlp:" + b"1," * 29 + b"inf\nmlp: 1 2\ncounts: 1 2 3.5 4\n"
                      b"counts: 1 2 99999 4\ncounts: 1 -2 3 4\n")
        assert wait_until(lambda: len(got) >= 1 and src.stats.rejected_total >= 6, 10)
    finally:
        stop.set()
        pty.close()
    assert src.stats.snapshot()["rejected"] == {
        "unparsable": 1, "unknown_model": 1, "non_finite": 1, "wrong_size": 1, "dtype_mismatch": 2,
    }
    assert got.samples[0].model == "counts" and got.samples[0].array.dtype == np.int16
    assert got.samples[0].array.tolist() == [1, -2, 3, 4]


class _FlakyServer:
    """A TCP server on 127.0.0.1 that can be stopped and restarted on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.lsock: Optional[socket.socket] = None
        self.conn: Optional[socket.socket] = None
        self.start()

    def start(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(1)
        s.settimeout(10)
        self.port = s.getsockname()[1]
        self.lsock = s

    def accept(self) -> socket.socket:
        assert self.lsock is not None
        self.conn, _ = self.lsock.accept()
        return self.conn

    def stop(self) -> None:
        for s in (self.conn, self.lsock):
            if s is not None:
                s.close()
        self.conn = self.lsock = None


@pytest.mark.timeout(30)
def test_port_that_disappears_and_returns_is_reopened_and_counted() -> None:
    server = _FlakyServer()
    got = Collector()
    src = SerialSource(SPECS, f"socket://127.0.0.1:{server.port}", framing="cobs")
    stop = threading.Event()
    src.start(got, stop)
    try:
        rows = mlp_rows(40, seed=3)
        conn = server.accept()
        # pyserial's open() flushes the input buffer, so send only once the port is open
        assert wait_until(src.connected.is_set, 10)
        conn.sendall(b"".join(build_cobs_frame({"model": "mlp", "seq": i}, rows[i].tobytes()) for i in range(20)))
        assert wait_until(lambda: len(got) == 20, 10)
        server.stop()  # the "port" disappears: reads fail, reopening is refused for a while
        assert wait_until(lambda: not src.connected.is_set(), 5)
        time.sleep(0.5)  # a few failed reopen attempts with backoff
        server.start()
        conn = server.accept()
        assert wait_until(src.connected.is_set, 10)
        conn.sendall(b"".join(build_cobs_frame({"model": "mlp", "seq": i}, rows[i].tobytes()) for i in range(20, 40)))
        assert wait_until(lambda: len(got) == 40, 10)
    finally:
        stop.set()
        server.stop()
    assert [s.seq for s in got.samples] == list(range(40))
    snap = src.stats.snapshot()
    assert snap["reconnects"] == 1
    assert snap["lost_in_transit"] == 0 and snap["rejected_total"] == 0


@pytest.mark.timeout(20)
def test_loop_url_and_sequence_gaps_counted_as_lost() -> None:
    import serial

    got = Collector()
    src = SerialSource(SPECS, "loop://", framing="cobs")
    # loop:// is per-instance: drive the source's own port by patching nothing — feed() is the shared path
    x = np.zeros(30, np.float32).tobytes()
    for seq in (0, 1, 5, 6, 2):
        src.feed(build_cobs_frame({"model": "mlp", "seq": seq, "sender": "a"}, x), got)
    src.feed(build_cobs_frame({"model": "mlp", "seq": 9, "sender": "b"}, x), got)
    snap = src.stats.snapshot()
    assert snap["lost_in_transit"] == 3 and snap["seq_restarts"] == 1 and snap["accepted"] == 6
    # and a loop:// port opens through the same serial_for_url door
    port = serial.serial_for_url("loop://", timeout=0.1)
    port.write(b"mlp:" + b"0," * 29 + b"0\n")
    line_src = SerialSource(SPECS, "loop://", framing="lines")
    line_src.feed(port.read(200), got)
    port.close()
    assert got.samples[-1].model == "mlp" and line_src.stats.accepted == 1


@pytest.mark.timeout(20)
def test_missing_device_retries_without_raising_and_stops_promptly() -> None:
    src = SerialSource(SPECS, "/dev/edged-no-such-tty", framing="lines")
    stop = threading.Event()
    t = src.start(Collector(), stop)
    time.sleep(0.4)
    assert t.is_alive() and not src.connected.is_set()
    stop.set()
    t.join(6)
    assert not t.is_alive()
    assert src.stats.reconnects == 0 and src.stats.errors == 0
