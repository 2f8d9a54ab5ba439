"""Model contract v2 end to end: a real daemon serving a 3-input stateful model and a 2-output model from
--models-dir, fed by `edged sim` over ZeroMQ (wire v2), offloading to a real `edged fog` (fog protocol v2)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from . import modelgen as g
from .conftest import REPO
from .test_daemon import free_port, parse_all, read_lines, stop_counts, write_config
from .test_faults import Daemon
from .test_offload_fog import FogProcess


@pytest.mark.timeout(180)
def test_daemon_serves_multi_tensor_and_stateful_models_locally_and_offloaded(tmp_path):
    root = tmp_path / "models"
    g.write_model(root, "vad", g.STATEFUL_MANIFEST, {"onnx": ("model.onnx", g.onnx_stateful())})
    g.write_model(root, "two", g.TWO_OUTPUT_MANIFEST, {"onnx": ("model.onnx", g.onnx_two_outputs())})
    fog = FogProcess("--models-dir", str(root), "--model", "vad", "--model", "two")
    port = free_port()
    cfg = write_config(tmp_path, port, fog=True, models=None)
    text = cfg.read_text().replace("[power]", f'[models]\ndirs = ["{root}"]\nenabled = ["vad", "two"]\n[power]')
    text = text.replace('[fog]\nenabled = true', f'[fog]\nenabled = true\nendpoint = "{fog.endpoint}"')
    text = text.replace('default = "adaptive"', 'default = "adaptive"\nmodels = { vad = "offload", two = "local" }')
    cfg.write_text(text)
    d = Daemon(cfg)
    n = 40
    try:
        d.wait_ready()
        for model in ("vad", "two"):
            sim = subprocess.run([sys.executable, "-m", "edged", "sim", "--models-dir", str(root), "--model", model,
                                  "--zmq", f"tcp://127.0.0.1:{port}", "--rate", "200", "--count", str(n),
                                  "--progress", "0"], capture_output=True, text=True, cwd=str(REPO), timeout=60)
            assert sim.returncode == 0, sim.stderr
        deadline = time.monotonic() + 30
        while len(parse_all(read_lines(tmp_path / "logs"))) < 2 * n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.terminate() == 0, d.output
    finally:
        d.close()
        fog.stop()
    recs = parse_all(read_lines(tmp_path / "logs"))
    c = stop_counts(d.output)
    assert c["accepted"] == c["decided"] == len(recs) == 2 * n
    vad = [r for r in recs if r["model"] == "vad"]
    two = [r for r in recs if r["model"] == "two"]
    assert all(r["error"] is None for r in recs), [r["error"] for r in recs if r["error"]][:3]
    assert {r["decision"] for r in vad} <= {"offload", "fallback"} and any(r["decision"] == "offload" for r in vad)
    assert all(r["result"] is None and set(r["outputs"]) == {"y"} for r in vad), "no argmax over a VAD score"
    assert all(r["decision"] == "local" and r["result"]["name"] in ("cat", "dog", "owl")
               and set(r["outputs"]) == {"probs", "emb"} for r in two)
