"""MQTT result sink against a real Mosquitto broker: every result counted once (delivered, dropped or
queued), QoS 1 results published while the broker is down are delivered after it comes back, login
works and a wrong password is a clear state, never a crash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List, Tuple

import pytest

from edged.errors import ConfigError
from edged.sinks import SinkSet, parse_sink_config
from edged.sinks.mqtt import MqttSink, MqttSinkConfig, topic_level

from .helpers_ingest import wait_until
from .helpers_sinks import model_results, rejected_result
from .mosquitto import Broker, broker_fixture, needs_mosquitto  # noqa: F401  (the 'broker' fixture)

pytestmark = needs_mosquitto
paho = pytest.importorskip("paho.mqtt.client")


class Subscriber:
    """A paho subscriber (QoS 1, persistent session) that keeps every message it gets."""

    def __init__(self, port: int, topic: str = "edged/results/#", client_id: str = "test-sub") -> None:
        self.got: List[Tuple[str, Dict]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.reconnect_delay_set(0.1, 0.5)
        c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10), "subscriber did not subscribe"

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.got.append((msg.topic, json.loads(msg.payload)))

    def unique(self) -> Dict[Tuple[str, str, int], Dict]:
        with self.lock:
            return {(h["model"], h["sender"] or "", h["seq"]): h for _, h in self.got}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _sink(port: int, **kw) -> MqttSink:
    cfg = parse_sink_config({"type": "mqtt", "host": "127.0.0.1", "port": port, "client_id": "edged-test-sink",
                             "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, **kw}, "sinks[0]")
    assert isinstance(cfg, MqttSinkConfig)
    s = MqttSink(cfg)
    s.open()
    return s


def _balanced(st: Dict) -> bool:
    return st["results"] == st["delivered"] + st["dropped"] + st["queued"]


def test_every_result_reaches_the_subscriber_once_with_its_summary(broker, catalogue):
    results = model_results(catalogue, 2000) + [rejected_result(5000 + i) for i in range(5)]
    sub = Subscriber(broker.port)
    sink = _sink(broker.port, qos=1)
    try:
        sinks = SinkSet([sink])
        for i in range(0, len(results), 32):
            sinks.publish_many(results[i:i + 32])
        assert sink.wait_delivered(30)
        st = sink.stats()
        assert st["delivered"] == len(results) and st["dropped"] == 0 and _balanced(st)
        assert wait_until(lambda: len(sub.unique()) == len(results), 30)
        got = sub.unique()
        for r in results:
            rec = r.record
            h = got[(rec["model"], rec["sender"] or "", rec["seq"])]
            assert h["decision"] == rec["decision"] and h["result"] == rec["result"] and h["error"] == rec["error"]
        topics = {t for t, _ in sub.got}
        assert "edged/results/mlp/dev-0" in topics
    finally:
        sink.close(2)
        sub.close()


def test_broker_restart_mid_run_counts_every_result_qos1(broker, catalogue):
    """QoS 1: results published while the broker is away wait in paho's queue and are delivered after the
    reconnect; published == delivered + dropped, and the subscriber gets exactly the delivered ones."""
    results = model_results(catalogue, 3000)
    sub = Subscriber(broker.port)
    sink = _sink(broker.port, qos=1, max_queued=60000)
    restarted = threading.Event()
    during: List[Dict] = []

    def restart() -> None:
        time.sleep(0.3)
        broker.stop()
        time.sleep(1.0)
        during.append(sink.stats())  # broker still away
        broker.start()
        restarted.set()

    t = threading.Thread(target=restart)
    try:
        t.start()
        for i in range(0, len(results), 8):  # ~2.5 s of results, across the outage
            sink.publish_many(results[i:i + 8])
            time.sleep(0.006)
        t.join(30)
        assert restarted.is_set()
        assert during[0]["queued"] > 0 and not during[0]["connected"], during  # results did wait for the broker
        assert sink.wait_delivered(30)
        st = sink.stats()
        assert st["disconnects"] >= 1 and st["connects"] >= 2, st
        assert st["results"] == len(results) and _balanced(st) and st["queued"] == 0
        assert st["delivered"] + st["dropped"] == len(results)
        assert wait_until(lambda: len(sub.unique()) >= st["delivered"], 30)
        time.sleep(0.5)
        assert len(sub.unique()) == st["delivered"], (len(sub.unique()), st)
        seqs = {k[2] for k in sub.unique()}
        assert seqs <= {r.record["seq"] for r in results}
    finally:
        t.join(30)
        sink.close(2)
        sub.close()


def test_broker_down_qos0_drops_are_counted_never_silent(broker, catalogue):
    results = model_results(catalogue, 1500)
    sub = Subscriber(broker.port, client_id="test-sub-q0")
    sink = _sink(broker.port, qos=0)
    try:
        sink.publish_many(results[:500])
        broker.stop()
        assert wait_until(lambda: not sink.stats()["connected"], 10)
        sink.publish_many(results[500:1000])  # broker away: QoS 0 cannot wait
        broker.start()
        assert wait_until(lambda: sink.stats()["connected"], 15)
        sink.publish_many(results[1000:])
        assert sink.wait_delivered(10)
        st = sink.stats()
        assert _balanced(st) and st["queued"] == 0
        assert st["dropped"] >= 500 and st["delivered"] >= 500
        assert "cannot connect" not in (sink.state() or "")
        time.sleep(0.5)
        assert len(sub.unique()) <= st["delivered"]  # QoS 0: the broker may lose some that were written
    finally:
        sink.close(2)
        sub.close()


def test_username_password_and_a_wrong_password(broker, catalogue, tmp_path):
    results = model_results(catalogue, 50)
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    sub = Subscriber(broker.port, client_id="test-sub-auth")  # anonymous listener; same broker
    good = _sink(broker.auth_port, username="edge", password_file=str(pw), client_id="good")
    bad = _sink(broker.auth_port, username="edge", password="wrong", client_id="bad", qos=1, max_queued=20)
    try:
        good.publish_many(results)
        assert good.wait_delivered(10) and good.stats()["delivered"] == 50
        assert wait_until(lambda: len(sub.unique()) == 50, 10)
        bad.publish_many(results)  # never connected: 20 queue, 30 dropped at once; nothing raises
        st = bad.stats()
        assert not st["connected"] and st["queued"] == 20 and st["dropped"] == 30 and _balanced(st)
        assert wait_until(lambda: "refused" in (bad.state() or ""), 10)
        state = bad.state() or ""
        assert "mqtt://127.0.0.1" in state and ("authori" in state.lower() or "password" in state.lower()), state
        assert "check username/password" in state
    finally:
        bad.close(0.5)
        good.close(2)
        sub.close()
    st = bad.stats()
    assert st["queued"] == 0 and st["dropped"] == 50 and _balanced(st)  # still queued at close: counted dropped


def test_mqtt5_results_the_broker_refuses_count_as_dropped(broker, catalogue):
    results = model_results(catalogue, 10)
    for r in results[1::2]:
        r.record["model"] = "denied"  # the broker's ACL forbids edged/results/denied/#
    sub = Subscriber(broker.port, client_id="test-sub-acl")
    sink = _sink(broker.auth_port, username="edge", password="s3cret", protocol="5", client_id="acl")
    try:
        sink.publish_many(results)
        assert sink.wait_delivered(10)
        st = sink.stats()
        assert st["delivered"] == 5 and st["dropped"] == 5 and st["lost"] == 5 and _balanced(st)
        assert wait_until(lambda: len(sub.unique()) == 5, 10)
        time.sleep(0.3)
        assert sorted(k[2] for k in sub.unique()) == [0, 2, 4, 6, 8]
    finally:
        sink.close(1)
        sub.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make test certificates")
def test_tls_with_client_certificate_and_the_insecure_flag(tmp_path, catalogue):
    b = Broker(tmp_path / "tls", tls=True)
    c = b.certs
    tls = {"tls": True, "ca_file": str(c["ca"]), "cert_file": str(c["client_cert"]), "key_file": str(c["client_key"])}
    results = model_results(catalogue, 20)
    with b:
        good = _sink(b.tls_port, host="localhost", client_id="tls-good", **tls)
        mismatch = _sink(b.tls_port, client_id="tls-mismatch", connect_wait_s=0.5, **tls)  # 127.0.0.1 not in cert
        insecure = _sink(b.tls_port, client_id="tls-insecure", tls_insecure=True, **tls)
        no_cert = _sink(b.tls_port, host="localhost", client_id="tls-nocert", tls=True, ca_file=str(c["ca"]),
                        connect_wait_s=0.5)
        try:
            for s in (good, mismatch, insecure, no_cert):
                s.publish_many(results)
            assert good.wait_delivered(10) and good.stats()["delivered"] == 20
            assert insecure.wait_delivered(10) and insecure.stats()["delivered"] == 20
            assert good.cfg.url.startswith("mqtts://localhost:")
            st = mismatch.state() or ""
            assert "cannot connect to mqtts://127.0.0.1" in st and "certificate" in st.lower(), st
            assert not mismatch.stats()["connected"] and not no_cert.stats()["connected"]
            assert no_cert.state(), "a broker that wants a client certificate must not look connected"
        finally:
            for s in (good, mismatch, insecure, no_cert):
                s.close(0.5)
    for s in (good, mismatch, insecure, no_cert):
        assert _balanced(s.stats())


def test_broker_down_at_open_does_not_raise_and_results_queue(tmp_path, catalogue):
    b = Broker(tmp_path / "later")
    sink = _sink(b.port, qos=1, connect_wait_s=0.2)
    try:
        assert "cannot connect to mqtt://127.0.0.1" in (sink.state() or "")
        assert "ECONNREFUSED" in (sink.state() or "")
        sink.publish_many(model_results(catalogue, 10))
        assert sink.stats()["queued"] == 10
        b.start()
        assert sink.wait_delivered(20), sink.stats()
        assert sink.stats()["delivered"] == 10 and sink.state() is None
    finally:
        sink.close(1)
        b.stop()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError) as e:
        MqttSinkConfig.from_mapping({"type": "mqtt", "qos": 3, "port": 0, "password": "x", "topic": "a/+/b",
                                     "tls_insecure": "yes"}, "sinks[2]")
    msg = str(e.value)
    assert "sinks[2].qos = 3: expected one of 0, 1, 2" in msg
    assert "sinks[2].port = 0: expected a value >= 1" in msg
    assert "sinks[2].topic = 'a/+/b': expected a topic without wildcards" in msg
    assert "sinks[2].tls_insecure = 'yes': expected true or false" in msg
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.username = '': expected a username with a password"):
        MqttSinkConfig.from_mapping({"type": "mqtt", "password": "x"}, "sinks[0]")
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.ca_file = '/nonexistent/ca.pem': expected a readable file"):
        MqttSinkConfig.from_mapping({"type": "mqtt", "tls": True, "ca_file": "/nonexistent/ca.pem"}, "sinks[0]")
    with pytest.raises(ConfigError, match=r"password = \(hidden\)"):
        MqttSinkConfig.from_mapping({"type": "mqtt", "password": 5}, "sinks[0]")


def test_topic_levels_are_sanitised():
    assert topic_level("dev/1+#") == "dev_1__" and topic_level(None) == "-" and topic_level("") == "-"


def test_missing_paho_gives_the_extra_to_install():
    code = ("import sys; sys.modules['paho'] = None; sys.modules['paho.mqtt'] = None; "
            "sys.modules['paho.mqtt.client'] = None\n"
            "from edged.sinks import build_sink, parse_sink_config\n"
            "s = build_sink(parse_sink_config({'type': 'mqtt'}, 'sinks[0]'))\n"
            "try:\n    s.open()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "MissingDependencyError sink 'mqtt' needs paho-mqtt: pip install 'edged[mqtt]'" in out.stdout, out
