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
    mlp = inputs["mlp"]
    assert isinstance(mlp, np.ndarray) and np.array_equal(got.samples[0].array, mlp[0])


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
        stderr = proc.stderr
        assert stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")), daemon=True)
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



# --------------------------------------------------------------------------- any catalogue model (protocol v2)


@pytest.fixture(scope="module")
def user_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with the 3-input stateful model (no validation set) and the dynamic H x W model."""
    from tests import modelgen as g

    root = tmp_path_factory.mktemp("user_models")
    g.write_model(root, "vad", g.STATEFUL_MANIFEST, {"onnx": ("model.onnx", g.onnx_stateful())})
    g.write_model(root, "seg", g.DYNAMIC_MANIFEST, {"onnx": ("model.onnx", g.onnx_dynamic_hw())})
    return root


def _entries(root: Path) -> dict:
    from edged.models import Catalogue

    return Catalogue.discover([root]).entries()


@pytest.mark.timeout(60)
def test_sim_models_dir_drives_a_multi_input_model_as_v2_into_a_real_zmq_source(user_models: Path) -> None:
    entries = _entries(user_models)
    got = Collector()
    src = ZmqSource(entries, endpoint="tcp://127.0.0.1:*")
    stop = threading.Event()
    src.start(got, stop)
    assert src.ready.wait(5)
    try:
        proc = _sim("--models-dir", str(user_models), "--model", "vad", "--zmq", src.bound_endpoint or "",
                    "--rate", "0", "--count", "100", "--seed", "4", "--corrupt", "0.2", "--progress", "0")
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "sent 100 inputs (vad=100)" in out
        assert "vad: 64 synthetic inputs (seed 4); protocol v2 (x [16], sr [1])" in err
        corrupt = int(out.split("), ")[1].split(" ")[0])
        assert wait_until(lambda: len(got) == 100 and src.stats.rejected_total == corrupt, 10), src.stats.snapshot()
    finally:
        stop.set()
    assert corrupt > 0 and src.stats.errors == 0
    expected = entries["vad"].make_feeds(seed=4, batch=64)  # what the sim promises: seeded synthetic inputs
    assert [s.seq for s in got.samples] == list(range(100))
    for s in got.samples:
        feeds = s.feeds or {}
        assert set(feeds) == {"x", "sr"} and s.array is feeds["x"]
        assert np.array_equal(feeds["x"], expected["x"][s.seq % 64]) and np.array_equal(feeds["sr"], expected["sr"])
        assert feeds["sr"].dtype == np.int64


@pytest.mark.timeout(60)
def test_sim_dynamic_model_over_a_pty_with_cobs_sends_the_chosen_shape(user_models: Path) -> None:
    proc = _sim("--models-dir", str(user_models), "--model", "seg", "--shape", "24x20x1", "--pty", "--framing",
                "cobs", "--rate", "200", "--count", "40", "--progress", "0")
    got = Collector()
    stop = threading.Event()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("edged sim: serial device ready at /dev/"), line
        src = SerialSource(_entries(user_models), line.rsplit(" ", 1)[1].strip(), framing="cobs")
        src.start(got, stop)
        out, err = proc.communicate(timeout=30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "sent 40 inputs (seg=40)" in out and "protocol v2 (x [24, 20, 1])" in err
    assert got.samples and src.stats.rejected_total == 0
    assert all(s.array.shape == (24, 20, 1) and s.feeds is None for s in got.samples)


def test_sim_refuses_what_a_line_cannot_carry_and_a_shape_the_model_does_not_take(user_models: Path) -> None:
    for args, why in ((["--model", "vad", "--pty"], "a line carries one input; use --framing cobs"),
                      (["--model", "seg", "--pty"], "a line cannot carry its shape"),
                      (["--model", "seg", "--shape", "24x20x3", "--pty", "--framing", "cobs"], "input 'x' is [")):
        proc = _sim("--models-dir", str(user_models), *args, "--count", "1")
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == EXIT_CONFIG and why in err, err


def test_load_sim_inputs_reads_every_input_of_a_validation_set(tmp_path: Path) -> None:
    from edged.sim import FeedRows
    from tests import modelgen as g

    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    g.write_model(tmp_path, "vad", g.STATEFUL_MANIFEST, {"onnx": ("model.onnx", g.onnx_stateful())},
                  validation={"x": x, "sr": np.array([8000], np.int64)})
    inputs = load_sim_inputs(["vad", "mlp"], models_dirs=[str(tmp_path)])
    rows = inputs["vad"]
    assert isinstance(rows, FeedRows) and len(rows) == 5 and "validation set" in rows.where
    assert np.array_equal(rows[3]["x"], x[3]) and rows[3]["sr"].tolist() == [8000] and "h" not in rows[3]
    mlp = inputs["mlp"]
    assert isinstance(mlp, np.ndarray) and np.array_equal(mlp, MLP_X)  # one input: rows of it, sent as v1
