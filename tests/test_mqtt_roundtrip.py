"""MQTT carries inputs in and results out through a real Mosquitto broker: 10 000 sensor inputs (JSON and
COBS payloads, QoS 1) -> MqttSource -> the shipped mlp on onnxruntime -> MqttSink (QoS 1) -> a subscriber
that gets exactly one result per input, none lost, each equal to a direct run of the model."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Dict, List, Tuple

import numpy as np
import pytest

from edged.results import summarize
from edged.sinks import Result, build_sinks, parse_sink_config
from edged.sources.framing import build_cobs_frame
from edged.sources.mqtt import MqttSource, MqttSourceConfig

from .helpers_ingest import wait_until
from .helpers_sinks import record
from .mosquitto import broker_fixture, needs_mosquitto  # noqa: F401  (the 'broker' fixture)

pytestmark = [needs_mosquitto, pytest.mark.slow]
paho = pytest.importorskip("paho.mqtt.client")

N = 10_000
SENDERS = 8


def test_ten_thousand_inputs_in_and_exactly_one_result_each_out(broker, catalogue):
    entry = catalogue.get("mlp")
    x, _ = entry.load_validation()
    specs = {"mlp": entry.input}

    # results subscriber (persistent QoS 1 session)
    got: Dict[Tuple[str, int], Dict] = {}
    dups = [0]
    lock = threading.Lock()
    sub_ready = threading.Event()

    def on_message(c, u, msg) -> None:
        h = json.loads(msg.payload)
        with lock:
            key = (h["sender"], h["seq"])
            if key in got:
                dups[0] += 1
            got[key] = h

    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="results-sub", clean_session=False)
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("edged/results/#", qos=1)
    sub.on_subscribe = lambda *a: sub_ready.set()
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    assert sub_ready.wait(10)

    # edged's side: MQTT source -> queue -> model worker -> MQTT sink
    src = MqttSource(specs, MqttSourceConfig.from_mapping(
        {"type": "mqtt", "host": "127.0.0.1", "port": broker.port, "client_id": "edged-in"}, "sources[0]"))
    sinks = build_sinks([parse_sink_config({"type": "mqtt", "host": "127.0.0.1", "port": broker.port,
                                            "client_id": "edged-out", "qos": 1, "max_queued": 20000},
                                           "sinks[0]")])
    sinks.open()
    inq: queue.Queue = queue.Queue()
    stop = threading.Event()
    src.start(lambda s: inq.put(s) or True, stop)
    assert wait_until(src.subscribed.is_set, 10)
    decided = [0]

    def worker() -> None:
        with catalogue.load("mlp", "onnx") as m:
            while not (stop.is_set() and inq.empty()):
                try:
                    batch = [inq.get(timeout=0.1)]
                except queue.Empty:
                    continue
                while len(batch) < 32:
                    try:
                        batch.append(inq.get_nowait())
                    except queue.Empty:
                        break
                outs = m.run(np.stack([s.array for s in batch]))
                results: List[Result] = []
                for k, s in enumerate(batch):
                    row = {n: v[k] for n, v in outs.items()}
                    rec = record(s.model, s.seq, sender=s.sender, source=s.source,
                                 result=summarize(entry, {n: v[None] for n, v in row.items()}))
                    results.append(Result(rec, row))
                sinks.publish_many(results)
                decided[0] += len(batch)

    wt = threading.Thread(target=worker, daemon=True)
    wt.start()

    # the sensors: JSON and COBS payloads, QoS 1
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sensors")
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    infos = []
    try:
        for i in range(N):
            sender = f"dev-{i % SENDERS}"
            seq = i // SENDERS
            row = x[i % len(x)]
            if i % 2:
                payload = build_cobs_frame({"seq": seq}, row.astype("<f4").tobytes())
            else:
                payload = json.dumps({"seq": seq, "data": row.tolist()}).encode()
            infos.append(pub.publish(f"edged/in/mlp/{sender}", payload, qos=1))
        for info in infos:
            info.wait_for_publish(60)
        assert wait_until(lambda: decided[0] == N, 120), (decided[0], src.stats.snapshot())
        sink = sinks.sinks[0]
        assert sink.wait_delivered(60)  # type: ignore[attr-defined]
        assert wait_until(lambda: len(got) == N, 60), len(got)
        time.sleep(0.3)
        snap = src.stats.snapshot()
        st = sinks.stats()["mqtt-results"]
        assert snap["accepted"] == N and snap["rejected_total"] == 0 and snap["lost_in_transit"] == 0
        assert st["results"] == N and st["delivered"] == N and st["dropped"] == 0 and st["queued"] == 0
        assert len(got) == N and dups[0] == 0
        # each result is the model's own answer for that input
        with catalogue.load("mlp", "onnx") as m:
            direct = m.run(x)["probs"]
        for i in range(N):
            h = got[(f"dev-{i % SENDERS}", i // SENDERS)]
            p = direct[i % len(x)]
            assert h["result"]["probs"]["label"] == int(p.argmax())
            assert h["result"]["probs"]["score"] == pytest.approx(float(p.max()), abs=2e-6)
    finally:
        stop.set()
        wt.join(10)
        sinks.close(2)
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
