"""``python -m edged.sinks.watch`` (the demo's subscriber) prints one line per result from the PUB sink."""

from __future__ import annotations

import subprocess
import sys

from edged.sinks.watch import line, summary_text
from edged.sinks.zmq import ZmqSink, ZmqSinkConfig

from .helpers_sinks import model_results, rejected_result


def test_watch_prints_one_line_per_result(catalogue):
    sink = ZmqSink(ZmqSinkConfig(endpoint="tcp://127.0.0.1:*"))
    sink.open()
    results = model_results(catalogue, 5) + [rejected_result(9)]
    proc = subprocess.Popen([sys.executable, "-m", "edged.sinks.watch", sink.bound_endpoint or "", "--count", "6"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.wait_for_subscribers(1, 20)
        sink.publish_many(results)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sink.close(0)
    lines = out.splitlines()
    assert len(lines) == 6
    p = results[0].outputs["probs"]
    assert lines[0].startswith("mlp/dev-0  seq 0  local  123 us  probs: ")
    assert f"probs: {int(p.argmax())} " in lines[0] and "[probs float32 (2,)]" in lines[0]
    assert lines[-1].startswith("mlp/dev-0  seq 9  rejected") and "ERROR model 'mlp' input has 1 NaN" in lines[-1]


def test_summary_text_by_kind():
    assert summary_text({"y": {"values": [1.0, 2.0], "n": 2}}) == "y: [1.0, 2.0]"
    assert summary_text({"m": {"shape": [4, 4], "mean": 0.5}}) == "m: (4, 4) mean 0.5"
    assert summary_text({"label": 1, "score": 0.9}) == "1 0.9"
    assert line("t", {"seq": 1, "decision": "local", "latency_us": None, "result": None}) == "t  seq 1  local  -  -"
