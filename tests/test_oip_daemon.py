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
