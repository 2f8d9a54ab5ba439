"""``edged sim`` end to end (real subprocess, real pty and ZeroMQ) and the ReplaySource."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edged.errors import EXIT_CONFIG, ConfigError, InputError
from edged.sim import load_sim_inputs, open_pty_target, simulate
from edged.sources.queue import IngestQueue
from edged.sources.replay import ReplaySource
from edged.sources.serial import SerialSource
from edged.sources.zmq import ZmqSource
from tests.helpers_ingest import SPECS, Collector, wait_until

REPO = Path(__file__).resolve().parent.parent
MLP_X = np.load(REPO / "models" / "mlp" / "validation.npz")["x"]


def _sim(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edged", "sim", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


@pytest.mark.timeout(60)
def test_sim_pty_cobs_subprocess_feeds_a_serial_source() -> None:
    proc = _sim("--pty", "--framing", "cobs", "--model", "mlp", "--rate", "400", "--count", "300", "--progress", "0")
    got = Collector()
    stop = threading.Event()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("edged sim: serial device ready at /dev/")
        src = SerialSource(SPECS, line.rsplit(" ", 1)[1].strip(), framing="cobs")
        src.start(got, stop)
        out, err = proc.communicate(timeout=30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "sent 300 inputs (mlp=300), 0 corrupt injected" in out
    # the port opened while the sim was already writing (pyserial flushes on open): a contiguous tail arrives
    seqs = [s.seq for s in got.samples]
    assert seqs and seqs == list(range(seqs[0], 300))
    assert np.array_equal(got.samples[-1].array, MLP_X[299 % len(MLP_X)])
    assert src.stats.lost_in_transit == 0


@pytest.mark.timeout(60)
def test_sim_zmq_subprocess_stops_cleanly_on_sigterm_with_summary() -> None:
    queue = IngestQueue(maxsize=10000)
    src = ZmqSource(SPECS, endpoint="tcp://127.0.0.1:*")
    stop = threading.Event()
    src.start(queue.sink(), stop)
    assert src.ready.wait(5)
    proc = _sim("--zmq", src.bound_endpoint or "", "--model", "mlp", "--model", "cnn", "--rate", "500", "--count", "0",
                "--progress", "0.1", "--corrupt", "0.1", "--seed", "3")
    try:
        assert wait_until(lambda: queue.qsize() >= 250, 20)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert wait_until(lambda: queue.qsize() == src.stats.accepted, 5)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "inputs/s" in err  # periodic progress line
    summary = out.strip().splitlines()[-1]
    total = int(summary.split("sent ")[1].split(" ")[0])
    corrupt = int(summary.split("), ")[1].split(" ")[0])
    samples = queue.drain()
    assert len(samples) == total == src.stats.accepted  # every valid input arrived, nothing extra
    assert src.stats.rejected_total == corrupt > 0
    assert {s.model for s in samples} == {"cnn", "mlp"}
    for model in ("cnn", "mlp"):
        seqs = [s.seq for s in samples if s.model == model]
        assert seqs == list(range(len(seqs)))


@pytest.mark.timeout(30)
def test_simulate_in_process_lines_with_corruption_bursts_and_jitter() -> None:
    inputs = load_sim_inputs(["mlp", "cnn"], specs=SPECS)
    target = open_pty_target("lines")
    got = Collector()
    src = SerialSource(SPECS, target.path, framing="lines")
    stop = threading.Event()
    src.start(got, stop)
    assert src.connected.wait(5)
    try:
        stats = simulate(target, inputs, rate_hz=2000, count=400, burst=10, jitter_ms=1, corrupt=0.2, seed=5,
                         progress_s=0)
        assert wait_until(lambda: len(got) == 400 and src.stats.rejected_total == stats.corrupt, 10)
    finally:
        stop.set()
        target.close()
    assert stats.sent == {"mlp": 200, "cnn": 200} and stats.corrupt > 0
    assert [s.model for s in got.samples[:4]] == ["mlp", "cnn", "mlp", "cnn"]
    assert np.array_equal(got.samples[0].array, inputs["mlp"][0])


def test_sim_argument_errors() -> None:
    with pytest.raises(ConfigError):
        load_sim_inputs(["mlp", "cnn"], data_path="x.csv", specs=SPECS)
    with pytest.raises(InputError):
        load_sim_inputs(["mlp"], data_path="/nonexistent.npz", specs=SPECS)
    proc = _sim("--model", "mlp", "--count", "1")  # no target chosen
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_CONFIG and "choose exactly one of" in err


@pytest.mark.timeout(20)
def test_replay_source_npz_and_csv(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).standard_normal((5, 30)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=rows)
    np.savetxt(tmp_path / "in.csv", rows, delimiter=",", fmt="%.9g")
    (tmp_path / "bad.csv").write_text("1,2,3\n")
    for name in ("in.npz", "in.csv"):
        got = Collector()
        src = ReplaySource(SPECS, "mlp", tmp_path / name, count=12)
        src.run(got, threading.Event())
        assert [s.seq for s in got.samples] == list(range(12))
        assert np.array_equal(got.samples[6].array, rows[1])
    got = Collector()
    src = ReplaySource(SPECS, "mlp", tmp_path / "bad.csv")
    src.run(got, threading.Event())
    assert len(got) == 0 and src.stats.rejected == {"wrong_size": 1}
    with pytest.raises(InputError):
        ReplaySource(SPECS, "nope", rows)


@pytest.mark.timeout(20)
def test_replay_source_rate_and_stop() -> None:
    got = Collector()
    src = ReplaySource(SPECS, "mlp", MLP_X, rate_hz=50, loop=True)
    stop = threading.Event()
    t = src.start(got, stop)
    assert wait_until(lambda: len(got) >= 3, 5)
    stop.set()
    t.join(2)
    assert not t.is_alive() and src.done.is_set()


def test_sim_help_lists_targets() -> None:
    out = subprocess.run([sys.executable, "-m", "edged", "sim", "--help"], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ}, timeout=30)
    assert out.returncode == 0 and "--pty" in out.stdout and "--corrupt" in out.stdout


@pytest.mark.timeout(60)
def test_sim_stops_promptly_on_sigterm_under_backpressure_with_summary() -> None:
    """A PUSH to a PULL that nobody reads: once ZeroMQ's queues are full every send waits; SIGTERM
    must still stop the simulator, which prints its summary and exits 0."""
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 10)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    proc = _sim("--zmq", f"tcp://127.0.0.1:{port}", "--model", "cnn", "--rate", "5000", "--count", "0",
                "--progress", "0.2")
    lines: list = []
    try:
        assert proc.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
        reader.start()
        # a blocked sender prints no progress: wait until the count stops growing for a whole second
        last, still_since = -1, 0.0
        while True:
            counts = [int(ln.split("edged sim: ")[1].split(" ")[0]) for ln in list(lines) if "inputs/s" in ln]
            assert proc.poll() is None, f"edged sim exited early: {lines}"
            now = time.monotonic()
            if counts and counts[-1] == last:
                if now - still_since > 1.0:
                    break
            else:
                last, still_since = (counts[-1] if counts else -1), now
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)  # a hang fails here (pytest-timeout is the backstop)
        reader.join(5)
        err = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        pull.close()
        ctx.term()
    assert proc.returncode == 0, err
    summary = out.strip().splitlines()[-1]
    sent = int(summary.split("sent ")[1].split(" ")[0])
    assert sent >= last > 0, summary  # the inputs handed to ZeroMQ before the queues filled
    assert f"(cnn={sent})" in summary
    assert "stopped while the receiver was not reading" in summary

