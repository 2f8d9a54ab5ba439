"""Several fog nodes (issue 11): each with its own estimates and breaker, an input compared with the best node
for it, an offload that fails sent once more to the next-best healthy node, local when every node is gone,
and each input exactly one record naming the node. Real ``edged fog`` subprocesses, real ZeroMQ clients, and
a real daemon with a ``[[fog]]`` list."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from edged.offload.dispatcher import Dispatcher, FogNode
from edged.offload.estimator import LinkEstimator
from edged.offload.fog_client import CircuitBreaker, ZmqFogBackend
from edged.sources.sample import Sample
from tests.linkproxy import LinkProxy

from . import test_offload_fog as fogtests
from .test_offload_fog import FogProcess, Recorder, assert_one_record_each, assert_replayable, wait_for

catalogue, edge_models, inputs = fogtests.catalogue, fogtests.edge_models, fogtests.inputs


def _node(name: str, endpoint: str) -> FogNode:
    return FogNode(name=name, backend=ZmqFogBackend(endpoint), link=LinkEstimator(),
                   breaker=CircuitBreaker(failure_threshold=2, recovery_probes=2, probe_interval_s=0.2))


def _ready(d: Dispatcher, model: str) -> bool:
    return all(n.link.t_l_us(500) is not None and n.link.t_f_us(model) is not None for n in d.nodes)


def _send(d: Dispatcher, xs: np.ndarray, seq0: int, n: int, gap_s: float = 0.02) -> int:
    for i in range(n):
        d.submit(Sample(model="cnn", seq=seq0 + i, array=xs[(seq0 + i) % len(xs)], source="test"))
        time.sleep(gap_s)
    return seq0 + n


@pytest.mark.timeout(120)
def test_the_faster_node_is_chosen_a_dead_one_fails_over_and_both_dead_run_here(
        edge_models: Dict[str, Any], inputs: Dict[str, np.ndarray]) -> None:
    near, far = FogProcess(), FogProcess()
    rec = Recorder()
    try:
        with LinkProxy(0, "127.0.0.1", far.port, latency_ms=15.0) as slow:
            d = Dispatcher({"cnn": edge_models["cnn"]}, {"*": "offload"}, rec, fog_timeout_s=0.5,
                           probe_interval_s=0.2, nodes=[_node("far", slow.endpoint), _node("near", near.endpoint)])
            try:
                wait_for(lambda: _ready(d, "cnn"), 20)
                seq = _send(d, inputs["cnn"], 0, 20)
                wait_for(lambda: len(rec.records) == 20)
                first = list(rec.records)
                assert {r["decision"] for r in first} == {"offload"}
                assert {r["fog"] for r in first} == {"near"}, "the node with the shorter round trip"
                # the near node dies (kill -9): what was sent there goes to the far one, then new inputs go there
                near.proc.kill()
                near.proc.wait(5)
                seq = _send(d, inputs["cnn"], seq, 20)
                wait_for(lambda: len(rec.records) == 40, 30)
                second = rec.records[20:]
                assert all(r["decision"] == "offload" and r["fog"] == "far" for r in second), \
                    [(r["decision"], r.get("fog"), r.get("failover")) for r in second]
                moved = [r for r in second if r.get("failover")]
                assert moved and all(r["failover"].startswith("near: ") for r in moved)
                assert d.stats()["fogs"]["near"]["state"] == "down"
                # the far node dies too: nothing left to fail over to, so they run here; then "fog down"
                far.proc.kill()
                far.proc.wait(5)
                seq = _send(d, inputs["cnn"], seq, 20)
                wait_for(lambda: len(rec.records) == 60, 30)
                third = rec.records[40:]
                assert {r["decision"] for r in third} <= {"fallback", "local"}
                assert any(r["decision"] == "fallback" for r in third)
                assert third[-1]["decision"] == "local" and third[-1]["reason"] == "fog down"
                assert all(r["result"] is not None and r["error"] is None for r in rec.records)
            finally:
                assert d.close(15.0)
                for n in d.nodes:
                    n.backend.close()
    finally:
        near.stop()
        far.stop()
    assert_one_record_each(rec, 60)
    assert_replayable(rec.records)
    labels = edge_models["cnn"].predict(inputs["cnn"][np.arange(60) % len(inputs["cnn"])]).argmax(axis=1)
    assert [r["result"]["label"] for r in sorted(rec.records, key=lambda r: r["seq"])] == labels.tolist()


@pytest.mark.timeout(60)
def test_node_names_must_differ(edge_models: Dict[str, Any]) -> None:
    from edged.errors import ConfigError

    a, b = _node("x", "tcp://127.0.0.1:9"), _node("x", "tcp://127.0.0.1:10")
    try:
        with pytest.raises(ConfigError, match="fog node names must differ: x, x"):
            Dispatcher({"cnn": edge_models["cnn"]}, {"*": "offload"}, lambda r: None, nodes=[a, b])
    finally:
        a.backend.close()
        b.backend.close()


@pytest.mark.timeout(120)
def test_a_daemon_with_two_fog_nodes_fails_over_and_names_the_node(tmp_path: Path) -> None:
    from tests.test_daemon import (
        Sender,
        accepted_decided,
        free_port,
        parse_all,
        read_lines,
        start_daemon,
        wait_ready,
        write_config,
    )

    a, b = FogProcess(), FogProcess()
    port = free_port()
    cfg = write_config(tmp_path, port, extra="""
[models]
enabled = ["mlp"]
""")
    text = cfg.read_text().replace("[fog]\nenabled = false\n", f"""[[fog]]
name = "alpha"
endpoint = "{a.endpoint}"
timeout_ms = 500
breaker_failures = 2
probe_interval_s = 0.2
[[fog]]
name = "beta"
endpoint = "{b.endpoint}"
timeout_ms = 500
probe_interval_s = 0.2
""").replace('default = "adaptive"', 'default = "offload"')
    cfg.write_text(text)
    proc = start_daemon(cfg)
    sender = None
    recs: List[Dict[str, Any]] = []
    try:
        wait_ready(cfg, proc)
        assert f"fog {a.endpoint}, {b.endpoint}" in (tmp_path / "daemon.log").read_text()
        sender = Sender(port, "mlp", rate_hz=100).start()
        wait_for(lambda: sum(r["decision"] == "offload" for r in parse_all(read_lines(tmp_path / "logs"))) >= 30,
                 30)
        served = {r["fog"] for r in parse_all(read_lines(tmp_path / "logs")) if r["decision"] == "offload"}
        victim = a if "alpha" in served else b
        victim.proc.kill()
        victim.proc.wait(5)
        time.sleep(2.0)
        sender.stop()
        sent = sender.sent
        sender = None
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        recs = parse_all(read_lines(tmp_path / "logs"))
        accepted, decided = accepted_decided((tmp_path / "daemon.log").read_text())
    finally:
        if sender is not None:
            sender.stop()
        if proc.poll() is None:
            proc.kill()
        a.stop()
        b.stop()
    assert accepted == decided == sent == len(recs)
    assert sorted(r["seq"] for r in recs) == list(range(sent))
    assert all(r["fog"] in ("alpha", "beta") for r in recs)
    survivor = "beta" if victim is a else "alpha"
    tail = [r for r in recs if r["seq"] >= sent - 50]
    assert all(r["decision"] == "offload" and r["fog"] == survivor for r in tail), \
        [(r["seq"], r["decision"], r["fog"], r.get("failover")) for r in tail][:10]
