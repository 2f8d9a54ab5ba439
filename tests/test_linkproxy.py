"""The link-emulation proxy on its own, against a real TCP echo server (lower bounds only)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator, Tuple

import pytest

from tests.linkproxy import LinkProxy


@pytest.fixture()
def echo_server() -> Iterator[Tuple[str, int]]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.1)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()
    stop.set()
    t.join(2)
    srv.close()


def _round_trip(port: int, payload: bytes) -> Tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got, time.monotonic() - t0


def _closed_without_data(port: int) -> bool:
    """Connect and read: True if the proxy closed or reset the connection without sending anything."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(2)
            s.sendall(b"hello")
            return s.recv(10) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


@pytest.mark.timeout(20)
def test_forwards_bytes_unchanged(echo_server: Tuple[str, int]) -> None:
    with LinkProxy(0, *echo_server) as proxy:
        payload = bytes(range(256)) * 400
        got, _ = _round_trip(proxy.port, payload)
        assert got == payload


@pytest.mark.timeout(20)
def test_latency_is_added_each_way(echo_server: Tuple[str, int]) -> None:
    with LinkProxy(0, *echo_server, latency_ms=50) as proxy:
        got, rtt = _round_trip(proxy.port, b"ping")
        assert got == b"ping"
        assert rtt >= 0.100  # 50 ms up + 50 ms down


@pytest.mark.timeout(20)
def test_bandwidth_limits_transfer(echo_server: Tuple[str, int]) -> None:
    with LinkProxy(0, *echo_server, bandwidth_Bps=200_000) as proxy:
        payload = b"x" * 100_000
        got, rtt = _round_trip(proxy.port, payload)
        assert got == payload
        assert rtt >= 0.5  # 100 kB each way at 200 kB/s


@pytest.mark.timeout(20)
def test_loss_is_a_retransmission_delay(echo_server: Tuple[str, int]) -> None:
    with LinkProxy(0, *echo_server, loss=1.0, retransmit_ms=150) as proxy:
        got, rtt = _round_trip(proxy.port, b"data")
        assert got == b"data"  # nothing is lost in the stream, only delayed
        assert rtt >= 0.3


@pytest.mark.timeout(20)
def test_outage_resets_connections_and_refuses_new_ones(echo_server: Tuple[str, int]) -> None:
    with LinkProxy(0, *echo_server) as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(b"a")
        assert s.recv(10) == b"a"
        proxy.outage(True)
        with pytest.raises(OSError):
            for _ in range(50):  # reset: recv sees RST (error) or EOF, sendall eventually fails
                if s.recv(10) == b"":
                    raise ConnectionResetError("eof")
                time.sleep(0.05)
        s.close()
        assert _closed_without_data(proxy.port)  # refused while the outage lasts
        proxy.outage(False)
        got, _ = _round_trip(proxy.port, b"back")
        assert got == b"back"


@pytest.mark.timeout(20)
def test_target_down_closes_client(echo_server: Tuple[str, int]) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()
    with LinkProxy(0, "127.0.0.1", dead_port) as proxy:
        assert _closed_without_data(proxy.port)


@pytest.mark.timeout(20)
def test_schedule_applies_settings_in_order(echo_server: Tuple[str, int]) -> None:
    with LinkProxy(0, *echo_server) as proxy:
        th = proxy.schedule([(0.2, {"latency_ms": 80}), (0.05, {"latency_ms": 10}), (0.3, {"loss": 0.5})])
        th.join(5)
        assert proxy.settings.latency_ms == 80
        assert proxy.settings.loss == 0.5
        got, rtt = _round_trip(proxy.port, b"z")
        assert got == b"z" and rtt >= 0.160


@pytest.mark.timeout(20)
def test_jitter_spreads_latency_around_its_mean(echo_server: Tuple[str, int]) -> None:
    with LinkProxy(0, *echo_server, latency_ms=20, jitter_ms=15, seed=3) as proxy:
        rtts = [_round_trip(proxy.port, b"j")[1] for _ in range(12)]
    assert min(rtts) >= 0.010  # each way at least 20 - 15 ms
    assert max(rtts) - min(rtts) >= 0.008  # not a constant delay


def test_stall_windows_are_the_end_of_each_period() -> None:
    from tests.linkproxy import LinkSettings

    s = LinkSettings(stall_ms=300, stall_every_s=2.0)
    assert s.stalled_until(100.5, 100.0) == 100.5
    assert s.stalled_until(101.75, 100.0) == 102.0  # in [1.7, 2.0): held to the end of the stall
    assert s.stalled_until(103.69, 100.0) == 103.69 and s.stalled_until(103.71, 100.0) == 104.0
    assert LinkSettings().stalled_until(5.0, 0.0) == 5.0


@pytest.mark.timeout(20)
def test_a_stall_holds_delivery_until_it_ends(echo_server: Tuple[str, int]) -> None:
    with LinkProxy(0, *echo_server, stall_ms=400, stall_every_s=0.5) as proxy:
        time.sleep(0.15)  # now inside [0.1, 0.5): the stall
        got, rtt = _round_trip(proxy.port, b"stalled")
    assert got == b"stalled" and rtt >= 0.2


@pytest.mark.timeout(20)
def test_proxy_runs_in_its_own_process(echo_server: Tuple[str, int]) -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "tests.linkproxy", "--target-port", str(echo_server[1]),
                             json.dumps({"latency_ms": 30})], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline().split()[1])
        got, rtt = _round_trip(port, b"sub")
        assert got == b"sub" and rtt >= 0.060
        proc.stdin.write(json.dumps({"configure": {"latency_ms": 0}}) + "\n")
        proc.stdin.flush()
        time.sleep(0.2)
        assert _round_trip(port, b"sub")[1] < 0.060
        proc.stdin.write(json.dumps({"quit": True}) + "\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
