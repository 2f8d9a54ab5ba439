"""Results out of the real daemon: `edged run` with a ZeroMQ PUB, a serial-reply and an MQTT sink, fed by
ZeroMQ, a pty and MQTT (a real Mosquitto broker). Every decided input yields exactly one result on each sink,
the outputs a subscriber receives equal the model's, and the MCU on the pty reads its replies."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Dict, List, Tuple

import numpy as np
import pytest
import zmq

from edged.sinks.zmq import decode_result

from .conftest import REPO
from .mosquitto import Broker, needs_mosquitto
from .test_daemon import free_port, parse_all, read_lines, stop_counts, write_config
from .test_faults import Daemon, mlp_frames, push_socket

pytestmark = [needs_mosquitto, pytest.mark.timeout(240)]
paho = pytest.importorskip("paho.mqtt.client")

N_MQTT, N_ZMQ, N_SERIAL = 10_000, 500, 30
MLP_X = np.load(REPO / "models" / "mlp" / "validation.npz")["x"].astype(np.float32)


def test_daemon_publishes_one_result_per_input_on_every_sink(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    port, pub_port = free_port(), free_port()
    master, slave = os.openpty()
    cfg = write_config(tmp_path, port, extra=f"""
[[sources]]
type = "serial"
name = "uart"
url = "{os.ttyname(slave)}"
framing = "lines"
model = "mlp"
[[sources]]
type = "mqtt"
name = "mqtt-in"
host = "127.0.0.1"
port = {broker.port}
topics = ["edged/in/#"]
[[sinks]]
type = "zmq"
endpoint = "tcp://127.0.0.1:{pub_port}"
[[sinks]]
type = "serial"
[[sinks]]
type = "mqtt"
host = "127.0.0.1"
port = {broker.port}
qos = 1
max_queued = 20000
""")
    cfg.write_text(cfg.read_text().replace("[fog]", "[queue]\nsize = 4096\n[fog]"))
    got_mqtt: Dict[Tuple[str, str, int], int] = {}
    lock = threading.Lock()
    ready = threading.Event()

    def on_message(c, u, msg) -> None:
        h = json.loads(msg.payload)
        with lock:
            key = (h["source"], str(h.get("sender")), h["seq"])
            got_mqtt[key] = got_mqtt.get(key, 0) + 1

    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="results-sub")
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("edged/results/#", qos=1)
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    ctx = zmq.Context()
    zsub = ctx.socket(zmq.SUB)
    zsub.setsockopt(zmq.SUBSCRIBE, b"")
    zsub.setsockopt(zmq.RCVHWM, 0)
    zsub.connect(f"tcp://127.0.0.1:{pub_port}")
    d = Daemon(cfg)
    pub = None
    replies = b""
    try:
        assert ready.wait(10)
        d.wait_ready()
        time.sleep(0.5)  # the SUB's subscription reaches the daemon's PUB
        sock = push_socket(ctx, port)
        for i in range(N_ZMQ):
            sock.send_multipart(mlp_frames(i, sender="z"))
        os.write(master, b"".join(b"mlp:" + ",".join(f"{v:.9g}" for v in MLP_X[i]).encode() + b"\n"
                                  for i in range(N_SERIAL)))
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sensors")
        pub.max_inflight_messages_set(1000)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        infos = [pub.publish(f"edged/in/mlp/m{i % 4}", json.dumps({"seq": i // 4, "data": MLP_X[i % len(MLP_X)]
                                                                    .tolist()}).encode(), qos=1)
                 for i in range(N_MQTT)]
        for info in infos:
            info.wait_for_publish(60)
        total = N_MQTT + N_ZMQ + N_SERIAL
        zgot: List[tuple] = []
        deadline = time.monotonic() + 120
        while (len(zgot) < total or len(got_mqtt) < total) and time.monotonic() < deadline:
            if zsub.poll(100):
                zgot.append(decode_result(zsub.recv_multipart()))
            try:
                replies += os.read(master, 65536) if _readable(master) else b""
            except OSError:
                pass
        time.sleep(0.3)
        while zsub.poll(200):
            zgot.append(decode_result(zsub.recv_multipart()))
        while _readable(master):
            replies += os.read(master, 65536)
        assert d.terminate() == 0, d.output[-3000:]
        sock.close(0)
    finally:
        d.close()
        sub.loop_stop()
        if pub is not None:
            pub.loop_stop()
        zsub.close(0)
        ctx.term()
        broker.stop()
        os.close(master)
        os.close(slave)
    recs = parse_all(read_lines(tmp_path / "logs"))
    c = stop_counts(d.output)
    assert c["accepted"] == c["decided"] == len(recs) == total
    keys = {(r["source"], str(r.get("sender")), r["seq"]) for r in recs}
    # ZeroMQ PUB: exactly one result per input, outputs equal to the model's
    zkeys = [(h["source"], str(h.get("sender")), h["seq"]) for _, h, _ in zgot]
    assert len(zkeys) == len(set(zkeys)) == total and set(zkeys) == keys
    from edged.models import Catalogue

    with Catalogue.discover().load("mlp", "onnx") as m:
        for _, h, outs in zgot:
            if h["source"] == "zmq":
                np.testing.assert_allclose(outs["probabilities"] if "probabilities" in outs
                                           else next(iter(outs.values())), m.predict(MLP_X[h["seq"] % len(MLP_X)]),
                                           rtol=1e-6)
    # MQTT: exactly one result per decided input, none lost, none twice
    assert set(got_mqtt) == keys and set(got_mqtt.values()) == {1}
    # the serial reply sink answered each line on the pty it came from, in order
    lines = replies.decode().splitlines()
    uart = sorted((r for r in recs if r["source"] == "uart"), key=lambda r: r["seq"])
    assert lines == [f"mlp:{r['result']['label']},{r['result']['score']:.6g}" for r in uart], lines[:5]


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])
