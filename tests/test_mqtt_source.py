"""MQTT source against a real Mosquitto broker: JSON, COBS and raw payloads become Samples, every bad
message is counted under its reason (attributable ones reported), a broker that is down at start or
restarts is waited for, and a wrong password is a clear state."""

from __future__ import annotations

import json
import math
import threading
from typing import List

import numpy as np
import pytest

from edged.errors import ConfigError
from edged.sources.base import Rejection
from edged.sources.framing import build_body, build_cobs_frame, cobs_encode
from edged.sources.mqtt import MqttSource, MqttSourceConfig, topic_fields

from .helpers_ingest import SPECS, Collector, mlp_rows, wait_until
from .mosquitto import Broker, broker_fixture, needs_mosquitto  # noqa: F401  (the 'broker' fixture)

pytestmark = needs_mosquitto
paho = pytest.importorskip("paho.mqtt.client")


def _publisher(port: int, client_id: str = "sensor"):
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    return c


def _source(port: int, **kw) -> MqttSource:
    cfg = MqttSourceConfig.from_mapping({"type": "mqtt", "host": "127.0.0.1", "port": port,
                                         "client_id": kw.pop("client_id", "edged-src"), **kw}, "sources[0]")
    return MqttSource(SPECS, cfg)


def _start(src: MqttSource):
    stop = threading.Event()
    sink = Collector()
    src.start(sink, stop)
    return stop, sink


def test_json_cobs_and_raw_forms_become_samples(broker):
    x = mlp_rows(6, seed=1)
    src = _source(broker.port)
    raw_src = _source(broker.port, client_id="edged-raw", name="mqtt-raw", format="raw", topics=["edged/raw/#"],
                      topic_pattern="edged/raw/{model}/{sender}")
    stop, sink = _start(src)
    stop2, sink2 = _start(raw_src)
    pub = _publisher(broker.port)
    try:
        assert wait_until(src.subscribed.is_set, 10) and wait_until(raw_src.subscribed.is_set, 10)
        pub.publish("edged/in/mlp/dev-1", json.dumps({"seq": 0, "data": x[0].tolist()}), qos=1)
        pub.publish("edged/in/mlp/dev-1", build_cobs_frame({"seq": 1}, x[1].astype("<f4").tobytes()), qos=1)
        pub.publish("edged/in/other/dev-9", json.dumps({"model": "mlp", "sender": "own", "seq": 2,
                                                        "data": x[2].tolist(), "room": "lab"}), qos=1)
        pub.publish("edged/in/mlp/dev-1", build_cobs_frame({"seq": 3}, x[3].astype("<f4").tobytes())[:-1], qos=1)
        pub.publish("edged/raw/mlp/dev-2", x[4].astype("<f4").tobytes(), qos=1)
        assert wait_until(lambda: len(sink) == 4 and len(sink2) == 1, 10), (src.stats.snapshot(), len(sink2))
        by_seq = {s.seq: s for s in sink.samples}
        for k in range(4):
            assert np.array_equal(by_seq[k].array, x[k]) and by_seq[k].model == "mlp"
        assert by_seq[0].sender == "dev-1" and by_seq[2].sender == "own" and by_seq[2].meta == {"room": "lab"}
        assert by_seq[0].source == "mqtt"
        raw = sink2.samples[0]
        assert raw.sender == "dev-2" and raw.seq == 0 and np.array_equal(raw.array, x[4])
        assert src.stats.snapshot()["rejected_total"] == 0 and src.state() is None
    finally:
        stop.set()
        stop2.set()
        pub.disconnect()
        pub.loop_stop()


def test_every_bad_message_costs_only_itself(broker):
    x = mlp_rows(4, seed=2)
    src = _source(broker.port)
    rejections: List[Rejection] = []
    src.on_rejected = rejections.append
    stop, sink = _start(src)
    pub = _publisher(broker.port)
    body = build_body({"seq": 6}, x[0].astype("<f4").tobytes())
    nan = x[0].copy()
    nan[3] = math.nan
    bad = [
        ("edged/in/mlp/a", b"\x01garbage", "bad_header"),
        ("edged/in/mlp/a", b"{not json", "unparsable"),
        ("edged/in/mlp/a", json.dumps({"data": [1, 2, 3]}).encode(), "wrong_size"),
        ("edged/in/nope/a", json.dumps({"data": x[0].tolist()}).encode(), "unknown_model"),
        ("edged/in/mlp/a", json.dumps({"seq": -1, "data": x[0].tolist()}).encode(), "bad_header"),
        ("edged/in/mlp/a", build_cobs_frame({"seq": 5}, nan.astype("<f4").tobytes()), "non_finite"),
        ("edged/in/mlp/a", b"\x00" + cobs_encode(body[:-4] + bytes(4)) + b"\x00", "bad_crc"),
        ("edged/in/mlp/a", b"\x00\x05\x01\x01", "bad_cobs"),
        ("edged/in/mlp/a", json.dumps({"data": ["1"] * 30}).encode(), "bad_values"),
    ]
    try:
        assert wait_until(src.subscribed.is_set, 10)
        for i, (topic, payload, _) in enumerate(bad):
            pub.publish(topic, payload, qos=1)
            pub.publish("edged/in/mlp/good", json.dumps({"seq": i, "data": x[i % 4].tolist()}), qos=1)
        assert wait_until(lambda: len(sink) == len(bad) and src.stats.rejected_total == len(bad), 10), \
            src.stats.snapshot()
        snap = src.stats.snapshot()
        want: dict = {}
        for _, _, reason in bad:
            want[reason] = want.get(reason, 0) + 1
        assert snap["rejected"] == want, snap["rejected"]
        assert [s.seq for s in sink.samples] == list(range(len(bad)))
        # attributable (the topic names a catalogue model): a rejected record for each but unknown_model
        assert sorted(r.reason for r in rejections) == sorted(r for _, _, r in bad if r != "unknown_model")
        assert all(r.model == "mlp" and r.sender == "a" for r in rejections)
        assert snap["errors"] == 0
    finally:
        stop.set()
        pub.disconnect()
        pub.loop_stop()


def test_broker_down_at_start_then_restarted(tmp_path):
    b = Broker(tmp_path / "b")
    src = _source(b.port)
    src.open()  # does not raise
    assert "waiting for broker mqtt://127.0.0.1" in (src.state() or "")
    assert "Connection refused (ECONNREFUSED)" in (src.state() or "")
    stop, sink = _start(src)
    try:
        b.start()
        assert wait_until(src.subscribed.is_set, 15)
        assert src.state() is None
        pub = _publisher(b.port)
        pub.publish("edged/in/mlp/d", json.dumps({"seq": 0, "data": mlp_rows(1)[0].tolist()}), qos=1)
        assert wait_until(lambda: len(sink) == 1, 10)
        pub.disconnect()
        pub.loop_stop()
        b.stop()
        assert wait_until(lambda: src.state() is not None, 10)
        assert "waiting for broker" in (src.state() or "")
        b.start()
        assert wait_until(lambda: src.subscribed.is_set() and src.state() is None, 15)
        pub = _publisher(b.port, "sensor2")
        pub.publish("edged/in/mlp/d", json.dumps({"seq": 1, "data": mlp_rows(1)[0].tolist()}), qos=1)
        assert wait_until(lambda: len(sink) == 2, 10)
        assert src.stats.snapshot()["reconnects"] >= 1
        pub.disconnect()
        pub.loop_stop()
    finally:
        stop.set()
        b.stop()


def test_wrong_password_is_a_clear_state_and_stop_works(broker):
    src = _source(broker.auth_port, username="edge", password="wrong")
    stop, sink = _start(src)
    try:
        assert wait_until(lambda: "refused" in (src.state() or ""), 10)
        state = src.state() or ""
        assert f"broker mqtt://127.0.0.1:{broker.auth_port} refused the connection" in state
        assert "check username/password" in state
    finally:
        stop.set()
        assert src._thread is not None
        src._thread.join(10)
        assert not src._thread.is_alive()
    good = _source(broker.auth_port, username="edge", password="s3cret", client_id="edged-good")
    stop, sink = _start(good)
    try:
        assert wait_until(good.subscribed.is_set, 10) and good.state() is None
    finally:
        stop.set()


def test_stop_drains_nothing_silently_and_thread_ends(broker):
    src = _source(broker.port)
    stop, sink = _start(src)
    assert wait_until(src.subscribed.is_set, 10)
    stop.set()
    assert src._thread is not None
    src._thread.join(5)
    assert not src._thread.is_alive()


def test_topic_pattern_and_config_errors():
    assert topic_fields("edged/in/{model}/{sender}", "edged/in/mlp/dev-1") == {"model": "mlp", "sender": "dev-1"}
    assert topic_fields("edged/in/{model}/{sender}", "edged/in/mlp") == {}
    assert topic_fields("+/{model}/#", "site/cnn/a/b") == {"model": "cnn"}
    assert topic_fields("", "edged/in/mlp/x") == {}
    with pytest.raises(ConfigError) as e:
        MqttSourceConfig.from_mapping({"type": "mqtt", "topics": ["a/#/b", "ok/+"], "format": "bin",
                                       "topic_pattern": "x/{device}"}, "sources[1]")
    msg = str(e.value)
    assert "sources[1].topics = ['a/#/b', 'ok/+']: expected MQTT topic filters" in msg
    assert "sources[1].format = 'bin': expected one of 'auto', 'raw'" in msg
    assert "sources[1].topic_pattern = 'x/{device}': expected a pattern" in msg


def test_without_paho_everything_imports_and_open_names_the_extra():
    import subprocess
    import sys

    code = ("import sys; sys.modules['paho'] = None; sys.modules['paho.mqtt'] = None; "
            "sys.modules['paho.mqtt.client'] = None\n"
            "import edged.sinks, edged.sinks.mqtt, edged.sources.mqtt\n"
            "from edged.sources.mqtt import MqttSource, MqttSourceConfig\n"
            "from edged.runtime.base import TensorSpec\n"
            "cfg = MqttSourceConfig.from_mapping({'type': 'mqtt', 'topics': ['edged/in/#']}, 'sources[0]')\n"
            "src = MqttSource({'mlp': TensorSpec('input', (None, 30), 'float32', 'NC')}, cfg)\n"
            "try:\n    src.open()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "SourceError source 'mqtt' needs paho-mqtt: pip install 'edged[mqtt]'" in out.stdout, out


def test_wire_v2_several_tensors_over_mqtt(broker, tmp_path):
    """A 3-input stateful model (built here): COBS v2 frames (tensors back to back) and JSON ``inputs``."""
    from edged.models import Catalogue
    from edged.sources.framing import build_tensor_cobs_frame

    from . import modelgen as g

    g.write_model(tmp_path, "vad", g.STATEFUL_MANIFEST, {"onnx": ("model.onnx", g.onnx_stateful())})
    entries = Catalogue.discover([tmp_path]).entries()
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(16).astype(np.float32) for _ in range(3)]
    sr = np.array([16000], np.int64)
    cfg = MqttSourceConfig.from_mapping({"type": "mqtt", "host": "127.0.0.1", "port": broker.port,
                                         "client_id": "edged-v2"}, "sources[0]")
    src = MqttSource(entries, cfg)
    rejections: List[Rejection] = []
    src.on_rejected = rejections.append
    stop, sink = _start(src)
    pub = _publisher(broker.port, "mic")
    try:
        assert wait_until(src.subscribed.is_set, 10)
        pub.publish("edged/in/vad/mic1", build_tensor_cobs_frame({"seq": 0}, {"x": xs[0], "sr": sr}), qos=1)
        pub.publish("edged/in/vad/mic1", json.dumps({"seq": 1, "inputs": {"x": xs[1].tolist(), "sr": [16000]}}),
                    qos=1)
        pub.publish("edged/in/vad/mic1", build_cobs_frame({"seq": 2}, xs[2].tobytes()), qos=1)  # v1: refused
        pub.publish("edged/in/mlp/dev", json.dumps({"seq": 0, "data": mlp_rows(1)[0].tolist()}), qos=1)
        assert wait_until(lambda: len(sink) == 3 and len(rejections) == 1, 10), src.stats.snapshot()
        by = {(s.model, s.seq): s for s in sink.samples}
        for k in (0, 1):
            s = by[("vad", k)]
            assert s.sender == "mic1" and set(s.feeds or {}) == {"x", "sr"}
            assert np.array_equal((s.feeds or {})["x"], xs[k]) and (s.feeds or {})["sr"].dtype == np.int64
        assert by[("mlp", 0)].feeds is None
        assert rejections[0].model == "vad" and rejections[0].seq == 2 and rejections[0].sender == "mic1"
    finally:
        stop.set()
        pub.disconnect()
        pub.loop_stop()
