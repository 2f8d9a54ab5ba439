"""``edged run`` with an Open Inference Protocol fog: a real daemon subprocess offloading to a real MLServer
that serves an ``edged export-fog`` folder of the shipped models, the identity canary at start-up, and the
server killed mid-stream (every input still ends as exactly one record, offloaded or run locally).

Skipped where mlserver/grpcio are not installed (``make test-oip`` runs it in .venv-oip)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.oip_servers import Server, require, start_mlserver
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

pytestmark = pytest.mark.skipif(bool(os.environ.get("EDGED_EMULATED")), reason="MLServer under qemu: too slow")


@pytest.fixture()
def mlserver(tmp_path: Path) -> Iterator[Server]:
    require("grpc", "mlserver")
    from edged.export_fog import export
    from edged.models import Catalogue

    export("mlserver", tmp_path / "repo", Catalogue.discover(), ("mlp", "cnn"))
    server = start_mlserver(tmp_path / "repo", tmp_path / "mlserver.log")
    yield server
    server.stop()


def _config(tmp: Path, port: int, url: str) -> Path:
    cfg = write_config(tmp, port, fog=True, extra="""
[models]
enabled = ["mlp", "cnn"]
""")
    text = cfg.read_text().replace("[fog]\nenabled = true", f"""[fog]
enabled = true
backend = "oip"
url = "{url}"
timeout_ms = 2000""").replace('default = "adaptive"', 'default = "offload"')
    cfg.write_text(text)
    return cfg


@pytest.mark.timeout(180)
def test_edged_run_offloads_to_mlserver_and_loses_nothing_when_it_dies(tmp_path: Path, mlserver: Server) -> None:
    port = free_port()
    cfg = _config(tmp_path, port, mlserver.grpc)
    proc = start_daemon(cfg)
    sender = None
    try:
        wait_ready(cfg, proc, timeout=120)
        log = (tmp_path / "daemon.log").read_text()
        assert "ready in" in log and f"oip grpc {mlserver.grpc}" in log, log[-2000:]
        sender = Sender(port, "mlp", rate_hz=100).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            recs = parse_all(read_lines(tmp_path / "logs"))
            if sum(r["decision"] == "offload" for r in recs) >= 50:
                break
            time.sleep(0.2)
        mlserver.stop()  # the fog tier goes away mid-stream
        time.sleep(2.0)
        sender.stop()
        sent = sender.sent
        sender = None
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if sender is not None:
            sender.stop()
        if proc.poll() is None:
            proc.kill()
    text = (tmp_path / "daemon.log").read_text()
    recs = parse_all(read_lines(tmp_path / "logs"))
    accepted, decided = accepted_decided(text)
    assert accepted == decided == sent == len(recs), (accepted, decided, sent, len(recs))
    assert sorted(r["seq"] for r in recs) == list(range(sent)), "exactly one record per input"
    by = {d: [r for r in recs if r["decision"] == d] for d in ("offload", "fallback", "local")}
    assert len(by["offload"]) >= 50, text[-3000:]
    assert all(r["result"] is not None and r["error"] is None for r in by["offload"] + by["fallback"] + by["local"])
    assert by["fallback"] or by["local"], "after the server died the inputs ran here"
    # after the death nothing is offloaded: every record after the first non-offload is local or a fallback
    first_down = min(r["seq"] for r in by["fallback"] + by["local"])
    assert not [r for r in by["offload"] if r["seq"] > first_down + 5]


@pytest.mark.timeout(180)
def test_an_edged_fog_and_an_mlserver_node_fail_over_to_each_other_then_run_here(mlserver: Server) -> None:
    """Mixed [[fog]] nodes through the real Dispatcher: both serve while they live, MLServer takes everything
    when the edged fog is killed (the inputs in flight fail over), and both gone means local."""
    import numpy as np

    from edged.models import Catalogue
    from edged.offload.dispatcher import Dispatcher, FogNode
    from edged.offload.estimator import LinkEstimator
    from edged.offload.fog_client import CircuitBreaker, ZmqFogBackend
    from edged.offload.oip import OipFogBackend
    from edged.sources.sample import Sample
    from tests.test_offload_fog import FogProcess, Recorder, assert_one_record_each, wait_for

    cat = Catalogue.discover()
    mlp = cat.load("mlp", backend="onnx")
    oip = OipFogBackend(mlserver.grpc)
    assert oip.attach_models({"mlp": mlp}) == {"mlp": "verified"}
    zfog = FogProcess()

    def breaker() -> CircuitBreaker:
        return CircuitBreaker(failure_threshold=2, recovery_probes=2, probe_interval_s=0.2)

    nodes = [FogNode("mlserver", oip, LinkEstimator(), breaker()),
             FogNode("edged-fog", ZmqFogBackend(zfog.endpoint), LinkEstimator(), breaker())]
    rec = Recorder()
    d = Dispatcher({"mlp": mlp}, {"*": "offload"}, rec, nodes=nodes, fog_timeout_s=1.0, probe_interval_s=0.2)
    xs, _ = mlp.entry.load_validation()
    seq = 0

    def send(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            d.submit(Sample(model="mlp", seq=seq, array=xs[seq % len(xs)].astype(np.float32), source="t"))
            seq += 1
            time.sleep(0.02)

    try:
        wait_for(lambda: all(n.link.t_l_us(500) is not None and n.link.t_f_us("mlp") is not None for n in nodes), 30)
        send(20)
        wait_for(lambda: len(rec.records) == 20, 30)
        assert {r["decision"] for r in rec.records} == {"offload"}  # on whichever node looks faster now
        zfog.proc.kill()
        zfog.proc.wait(5)
        send(30)
        wait_for(lambda: len(rec.records) == 50, 30)
        after = rec.records[20:]
        assert all(r["decision"] == "offload" and r["fog"] == "mlserver" for r in after[-10:]), \
            [(r["decision"], r["fog"]) for r in after]
        assert all(r.get("t_f_source") for r in after if r["fog"] == "mlserver" and r["decision"] == "offload")
        mlserver.stop()
        send(30)
        wait_for(lambda: len(rec.records) == 80, 30)
        last = rec.records[50:]
        assert {r["decision"] for r in last} <= {"fallback", "local"} and last[-1]["reason"] == "fog down"
    finally:
        assert d.close(15.0)
        for n in nodes:
            n.backend.close()
        zfog.stop()
    assert_one_record_each(rec, 80)
    want = mlp.predict(np.stack([xs[i % len(xs)] for i in range(80)]).astype(np.float32)).argmax(axis=1)
    assert [r["result"]["label"] for r in sorted(rec.records, key=lambda r: r["seq"])] == want.tolist()
