"""The dispatcher against a REAL ``edged fog`` subprocess behind the link-emulation proxy.

Every test decides by counting records (one per input, decision, result), never by durations.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import numpy as np
import pytest
import zmq

from edged.models import Catalogue
from edged.offload.dispatcher import Dispatcher
from edged.offload.fog_client import CircuitBreaker, ZmqFogBackend
from edged.offload.keys import create_key_pair
from edged.offload.policy import decide, inputs_from_record
from edged.sources.sample import Sample
from tests.linkproxy import LinkProxy

REPO = Path(__file__).resolve().parents[1]


class FogProcess:
    """``python -m edged fog`` on a free loopback port; the ready line gives the endpoint."""

    def __init__(self, *extra: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="edged-fog-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "fog", "--bind", "tcp://127.0.0.1:0", "--workers", "2", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=str(REPO))
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if r:
                line = self.proc.stdout.readline()
                break
        if "serving" not in line:
            self.proc.kill()
            raise RuntimeError(f"edged fog did not start: {line!r} {Path(self.log.name).read_text()[-2000:]}")
        self.ready_line = line.strip()
        self.endpoint = line.strip().rsplit(" ", 1)[-1]
        self.port = int(self.endpoint.rsplit(":", 1)[-1])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        os.unlink(self.log.name)
        return rc


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.discover()


@pytest.fixture(scope="module")
def fog() -> Iterator[FogProcess]:
    proc = FogProcess()
    yield proc
    assert proc.stop() == 0  # SIGTERM: a clean stop


@pytest.fixture(scope="module")
def edge_models(catalogue: Catalogue) -> Iterator[Dict[str, Any]]:
    models = {n: catalogue.load(n, backend="onnx") for n in ("cnn", "mlp")}
    yield models
    for m in models.values():
        m.close()


@pytest.fixture(scope="module")
def inputs(catalogue: Catalogue) -> Dict[str, np.ndarray]:
    return {n: catalogue.get(n).load_validation()[0][:40] for n in ("cnn", "mlp")}


class Recorder:
    def __init__(self) -> None:
        self.records: List[Dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, rec: Dict[str, Any]) -> None:
        with self.lock:
            self.records.append(rec)

    def by(self, **match: Any) -> List[Dict[str, Any]]:
        with self.lock:
            return [r for r in self.records if all(r.get(k) == v for k, v in match.items())]


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def make_dispatcher(models: Dict[str, Any], endpoint: str, policies: Dict[str, str], rec: Recorder,
                    **kw: Any) -> Dispatcher:
    fog_kw = kw.pop("fog_kw", {})
    backend = ZmqFogBackend(endpoint, **fog_kw)
    kw.setdefault("breaker", CircuitBreaker(failure_threshold=3, recovery_probes=2, probe_interval_s=0.2))
    return Dispatcher(models, policies, rec, fog=backend, probe_interval_s=0.2, **kw)


def shutdown(d: Dispatcher) -> None:
    assert d.close(15.0)
    assert d.fog is not None
    d.fog.close()


def link_ready(d: Dispatcher, *models: str) -> Callable[[], bool]:
    return lambda: d.link.t_l_us(500) is not None and all(d.link.t_f_us(m) is not None for m in models)


def submit(d: Dispatcher, model: str, xs: np.ndarray, seq0: int = 0, gap_s: float = 0.0) -> None:
    for i, x in enumerate(xs):
        d.submit(Sample(model=model, seq=seq0 + i, array=x, source="test"))
        if gap_s:
            time.sleep(gap_s)


def assert_one_record_each(rec: Recorder, n: int) -> None:
    assert len(rec.records) == n
    keys = [(r["model"], r["seq"]) for r in rec.records]
    assert len(set(keys)) == n  # exactly one record per input


def assert_replayable(records: List[Dict[str, Any]]) -> None:
    for r in records:
        if r["decision"] == "rejected":
            continue
        replay = decide(r["policy"], inputs_from_record(r)).decision
        assert replay == ("offload" if r["decision"] == "fallback" else r["decision"]), r


def labels(models: Dict[str, Any], model: str, xs: np.ndarray) -> List[int]:
    return [int(np.argmax(models[model].predict(x))) for x in xs]


# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_ready_line_names_models(fog: FogProcess) -> None:
    assert fog.ready_line.startswith("edged fog: serving ")
    assert fog.ready_line.endswith(fog.endpoint)


@pytest.mark.timeout(60)
def test_fast_link_and_slow_model_offload(fog: FogProcess, edge_models: Dict[str, Any],
                                          inputs: Dict[str, np.ndarray]) -> None:
    rec = Recorder()
    with LinkProxy(0, "127.0.0.1", fog.port) as proxy:
        # the local models are made "slow" by their WCET / local estimate, not by a timing assumption
        d = make_dispatcher(edge_models, proxy.endpoint, {"cnn": "threshold", "mlp": "adaptive"}, rec,
                            wcet_us={"cnn": 1e6, "mlp": 1e6}, local_exec_us={"mlp": 1e6})
        wait_for(link_ready(d, "cnn", "mlp"))
        submit(d, "cnn", inputs["cnn"][:20])
        submit(d, "mlp", inputs["mlp"][:20])
        shutdown(d)
    assert_one_record_each(rec, 40)
    for model in ("cnn", "mlp"):
        got = rec.by(model=model)
        assert [r["decision"] for r in got] == ["offload"] * 20, [r["reason"] for r in got]
        want = labels(edge_models, model, inputs[model][:20])
        assert [r["result"]["label"] for r in sorted(got, key=lambda r: r["seq"])] == want
        assert all(r["error"] is None and r["t_f_us"] is not None and r["transfer_us"] is not None for r in got)
    assert all("> T_L+T_F" in r["reason"] for r in rec.by(model="cnn"))
    assert_replayable(rec.records)


@pytest.mark.timeout(60)
def test_slow_link_threshold_and_adaptive_choose_local(fog: FogProcess, edge_models: Dict[str, Any],
                                                       inputs: Dict[str, np.ndarray]) -> None:
    rec = Recorder()
    with LinkProxy(0, "127.0.0.1", fog.port, latency_ms=100) as proxy:
        d = make_dispatcher(edge_models, proxy.endpoint, {"cnn": "threshold", "mlp": "adaptive"}, rec,
                            wcet_us={"cnn": 5000, "mlp": 5000})
        wait_for(link_ready(d, "cnn", "mlp"))
        submit(d, "cnn", inputs["cnn"][:15])
        submit(d, "mlp", inputs["mlp"][:15])
        shutdown(d)
    assert_one_record_each(rec, 30)
    assert [r["decision"] for r in rec.records] == ["local"] * 30
    assert all("<= T_L+T_F" in r["reason"] for r in rec.by(model="cnn"))
    assert all(r["reason"].startswith("expected local") for r in rec.by(model="mlp"))
    assert all(r["t_l_us"] > 50_000 for r in rec.records)  # the estimator saw the slow link
    assert [r["result"]["label"] for r in sorted(rec.by(model="cnn"), key=lambda r: r["seq"])] == \
        labels(edge_models, "cnn", inputs["cnn"][:15])
    assert_replayable(rec.records)


@pytest.mark.timeout(60)
def test_outage_falls_back_then_probes_bring_offloading_back(fog: FogProcess, edge_models: Dict[str, Any],
                                                             inputs: Dict[str, np.ndarray]) -> None:
    rec = Recorder()
    x = inputs["cnn"]
    with LinkProxy(0, "127.0.0.1", fog.port) as proxy:
        d = make_dispatcher(edge_models, proxy.endpoint, {"*": "threshold"}, rec, wcet_us={"cnn": 1e6})
        wait_for(link_ready(d, "cnn"))
        submit(d, "cnn", x[:5], seq0=0)
        wait_for(lambda: len(rec.records) == 5)
        proxy.outage(True)
        submit(d, "cnn", x[5:15], seq0=100, gap_s=0.02)
        wait_for(lambda: d.breaker.state == "down")
        submit(d, "cnn", x[15:20], seq0=200)
        wait_for(lambda: len(rec.records) == 20)
        proxy.outage(False)
        wait_for(lambda: d.breaker.is_up())
        submit(d, "cnn", x[20:25], seq0=300)
        shutdown(d)
    assert_one_record_each(rec, 25)
    phase = {p: [r for r in rec.records if p <= r["seq"] < p + 100] for p in (0, 100, 200, 300)}
    assert [r["decision"] for r in phase[0]] == ["offload"] * 5
    assert {r["decision"] for r in phase[100]} <= {"fallback", "local"}
    assert any(r["decision"] == "fallback" for r in phase[100])
    assert [(r["decision"], r["reason"]) for r in phase[200]] == [("local", "fog down")] * 5
    assert [r["decision"] for r in phase[300]] == ["offload"] * 5
    assert all(r["result"] is not None and r["error"] is None for r in rec.records)
    assert_replayable(rec.records)


@pytest.mark.timeout(60)
def test_hash_mismatch_is_refused_then_runs_locally(fog: FogProcess, edge_models: Dict[str, Any],
                                                    inputs: Dict[str, np.ndarray]) -> None:
    rec = Recorder()
    x = inputs["cnn"]
    d = make_dispatcher(edge_models, fog.endpoint, {"*": "offload"}, rec, model_hashes={"cnn": "f" * 64})
    wait_for(link_ready(d, "cnn"))
    submit(d, "cnn", x[:1])
    wait_for(lambda: len(rec.records) == 1)
    submit(d, "cnn", x[1:6], seq0=1)
    shutdown(d)
    assert_one_record_each(rec, 6)
    first = rec.by(seq=0)[0]
    assert first["decision"] == "fallback"
    assert "FogRefused" in first["fog_error"] and "hash mismatch" in first["fog_error"]
    assert "f" * 64 in first["fog_error"] and edge_models["cnn"].entry.model_hash in first["fog_error"]
    assert [(r["decision"], r["reason"]) for r in rec.records[1:]] == [("local", "fog refuses this model's hash")] * 5
    assert all(r["result"] is not None for r in rec.records)
    assert d.stats()["refused_models"] == ["cnn"]


@pytest.mark.timeout(60)
def test_kill_9_mid_stream_loses_nothing(edge_models: Dict[str, Any], inputs: Dict[str, np.ndarray]) -> None:
    fog = FogProcess()
    rec = Recorder()
    x = inputs["cnn"]
    try:
        with LinkProxy(0, "127.0.0.1", fog.port, latency_ms=20) as proxy:
            d = make_dispatcher(edge_models, proxy.endpoint, {"*": "offload"}, rec)
            wait_for(link_ready(d, "cnn"))
            submit(d, "cnn", x[:15], gap_s=0.005)  # several are in flight (20 ms each way) at the kill
            fog.proc.kill()
            fog.proc.wait(10)
            submit(d, "cnn", x[15:40], seq0=15, gap_s=0.005)
            shutdown(d)
    finally:
        fog.stop()
    assert_one_record_each(rec, 40)
    after = [r for r in rec.records if r["seq"] >= 15]
    assert {r["decision"] for r in after} <= {"fallback", "local"}  # nothing after the kill is offloaded
    assert any(r["decision"] == "fallback" for r in rec.records)
    assert all(r["result"] is not None and r["error"] is None for r in rec.records)
    by_seq = sorted(rec.records, key=lambda r: r["seq"])
    assert [r["result"]["label"] for r in by_seq] == labels(edge_models, "cnn", x[:40])
    assert_replayable(rec.records)


@pytest.mark.timeout(90)
def test_curve_unknown_key_gets_nothing_and_falls_back(tmp_path: Path, edge_models: Dict[str, Any],
                                                       inputs: Dict[str, np.ndarray]) -> None:
    _, fog_secret = create_key_pair(tmp_path / "fog", "fog")
    create_key_pair(tmp_path / "edges", "good")
    _, bad_secret = create_key_pair(tmp_path / "stranger", "bad")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "good.key").write_bytes((tmp_path / "edges" / "good.key").read_bytes())
    fog = FogProcess("--curve-secret-key", str(fog_secret), "--curve-authorized-dir", str(authorized))
    x = inputs["cnn"]
    try:
        bad = Recorder()
        d = make_dispatcher(edge_models, fog.endpoint, {"*": "offload"}, bad,
                            fog_kw={"curve_server_key": str(tmp_path / "fog" / "fog.key"),
                                    "curve_client_key": str(bad_secret)})
        submit(d, "cnn", x[:10], gap_s=0.02)
        shutdown(d)
        assert_one_record_each(bad, 10)
        assert {r["decision"] for r in bad.records} <= {"fallback", "local"}
        assert any(r["decision"] == "fallback" for r in bad.records)
        assert all(r["result"] is not None for r in bad.records)

        good = Recorder()
        d = make_dispatcher(edge_models, fog.endpoint, {"*": "offload"}, good,
                            fog_kw={"curve_server_key": str(tmp_path / "fog" / "fog.key"),
                                    "curve_client_key": str(tmp_path / "edges" / "good.key_secret")})
        wait_for(link_ready(d, "cnn"))
        submit(d, "cnn", x[:5])
        shutdown(d)
        assert [r["decision"] for r in good.records] == ["offload"] * 5
    finally:
        assert fog.stop() == 0


@pytest.mark.timeout(60)
def test_poison_requests_cost_the_fog_node_nothing(fog: FogProcess) -> None:
    """Hostile frames (a nesting bomb, a huge header, bad UTF-8, wrong frame counts) get an error reply or
    nothing; the node goes on answering pings, as it did not when a nesting bomb killed its I/O thread."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(fog.endpoint)
    try:
        poisons = [[b"[" * 100_000, b""], [b"{" * 70_000, b""], [b"\xff\xfe", b""], [b"x" * 200_000, b""],
                   [b'{"kind": "infer", "model": "mlp", "shape": [1e999]}', b""], [b"{}"], [b"{}", b"", b""]]
        for frames in poisons:
            sock.send_multipart(frames)
        for i in range(3):
            sock.send_multipart([json.dumps({"kind": "ping", "id": f"p{i}"}).encode(), b""])
        pongs = 0
        deadline = time.monotonic() + 20
        while pongs < 3 and time.monotonic() < deadline:
            if sock.poll(500):
                hdr = json.loads(sock.recv_multipart()[0])
                pongs += hdr.get("kind") == "ping" and hdr.get("status") == "ok"
        assert pongs == 3, "the fog node stopped answering after poison requests"
        assert fog.proc.poll() is None
    finally:
        sock.close(0)
        ctx.term()
