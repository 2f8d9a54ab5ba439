"""ZeroMQ PUB sink with real sockets: every published result reaches a SUB that keeps up, outputs
bit-equal; a subscriber that stops reading never blocks the publisher and every drop is counted."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from edged.errors import EdgedError
from edged.sinks import SinkSet, build_sinks, parse_sink_config
from edged.sinks.zmq import ZmqSink, ZmqSinkConfig, decode_result

from .helpers_sinks import model_results, rejected_result, two_output_result


def _sub(endpoint: str, prefix: bytes = b"", rcvhwm: int = 0) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(endpoint)
    s.setsockopt(zmq.SUBSCRIBE, prefix)
    return s


def _sink(**kw) -> ZmqSink:
    cfg = ZmqSinkConfig.from_mapping({"type": "zmq", "endpoint": "tcp://127.0.0.1:*", **kw}, "sinks[0]")
    s = ZmqSink(cfg)
    s.open()
    return s


def test_sub_receives_exactly_one_message_per_result_with_equal_outputs(catalogue):
    results = model_results(catalogue, 3000)
    results += [two_output_result(i) for i in range(50)] + [rejected_result(9000 + i) for i in range(10)]
    sink = _sink(sndhwm=100000)
    sub = _sub(sink.bound_endpoint)
    try:
        assert sink.wait_for_subscribers(1, 5.0)
        sinks = SinkSet([sink])
        i = 0
        while i < len(results):  # batches like the dispatcher's: 1 and 32
            n = 1 if (i // 32) % 2 else 32
            sinks.publish_many(results[i:i + n])
            i += n
        got = [decode_result(sub.recv_multipart()) for _ in range(len(results))]
        with pytest.raises(zmq.Again):
            sub.recv_multipart(zmq.NOBLOCK)
        assert sink.stats()["published"] == len(results) and sink.stats()["dropped"] == 0
        for r, (topic, head, outs) in zip(results, got):
            rec = r.record
            assert topic == f"{rec['model']}/{rec['sender'] or '-'}"
            for k in ("model", "seq", "sender", "source", "decision", "latency_us", "result", "error"):
                assert head[k] == rec[k], k
            want = r.outputs or {}
            assert [d["name"] for d in head["outputs"]] == list(want)
            for name, arr in want.items():
                assert outs[name].dtype == arr.dtype and outs[name].shape == arr.shape
                assert np.array_equal(outs[name], arr)
        # the classifier result the header carries is the model's own argmax
        head = got[0][1]
        assert head["result"]["probs"]["label"] == int(np.argmax(results[0].outputs["probs"]))
    finally:
        sub.close(0)
        sink.close(0)


def test_topic_prefix_selects_model_and_sender(catalogue):
    results = model_results(catalogue, 64, senders=4)
    sink = _sink(sndhwm=1000)
    only = _sub(sink.bound_endpoint, b"mlp/dev-2")
    try:
        assert sink.wait_for_subscribers(1, 5.0)
        sink.publish_many(results)
        want = [r.record["seq"] for r in results if r.record["sender"] == "dev-2"]
        got = [decode_result(only.recv_multipart())[1]["seq"] for _ in want]
        assert got == want
        with pytest.raises(zmq.Again):
            only.recv_multipart(zmq.NOBLOCK)
    finally:
        only.close(0)
        sink.close(0)


def test_a_subscriber_that_stops_reading_never_blocks_and_drops_are_counted(catalogue):
    results = model_results(catalogue, 256)
    sink = _sink(sndhwm=20)
    sub = _sub(sink.bound_endpoint, rcvhwm=20)
    sub.setsockopt(zmq.RCVBUF, 4096)
    try:
        assert sink.wait_for_subscribers(1, 5.0)
        total = 0
        for _ in range(40):  # 10 240 results at a subscriber that reads nothing (pytest timeout = blocked)
            sink.publish_many(results)
            total += len(results)
        st = sink.stats()
        assert st["dropped"] > 0
        assert st["published"] + st["dropped"] == total
        received = 0
        while True:  # everything counted as published does arrive
            try:
                sub.recv_multipart(zmq.NOBLOCK if received else 0)
            except zmq.Again:
                import time

                time.sleep(0.2)
                try:
                    sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
            received += 1
        assert received == st["published"]
    finally:
        sub.close(0)
        sink.close(0)


def test_filters_fan_out_per_sink(catalogue):
    results = model_results(catalogue, 40) + [rejected_result(100 + i) for i in range(5)]
    cfgs = [parse_sink_config({"type": "zmq", "name": "all", "endpoint": "tcp://127.0.0.1:*"}, "sinks[0]"),
            parse_sink_config({"type": "zmq", "name": "dev1-ok", "endpoint": "tcp://127.0.0.1:*",
                               "filter": {"senders": ["dev-1"], "exclude_decisions": ["rejected"]}}, "sinks[1]")]
    sinks = build_sinks(cfgs)
    sinks.open()
    a, b = sinks.sinks
    subs = [_sub(a.bound_endpoint), _sub(b.bound_endpoint)]  # type: ignore[attr-defined]
    try:
        assert a.wait_for_subscribers(1) and b.wait_for_subscribers(1)  # type: ignore[attr-defined]
        sinks.publish_many(results)
        st = sinks.stats()
        n_b = sum(1 for r in results if r.record["sender"] == "dev-1" and r.record["decision"] != "rejected")
        assert st["all"]["published"] == len(results) and st["all"]["filtered"] == 0
        assert st["dev1-ok"]["published"] == n_b and st["dev1-ok"]["filtered"] == len(results) - n_b
        got_b = [decode_result(subs[1].recv_multipart())[1] for _ in range(n_b)]
        assert all(h["sender"] == "dev-1" and h["decision"] == "local" for h in got_b)
    finally:
        for s in subs:
            s.close(0)
        sinks.close(0)


def test_bind_conflict_names_the_endpoint():
    first = _sink()
    try:
        cfg = ZmqSinkConfig(endpoint=first.bound_endpoint or "")
        with pytest.raises(EdgedError, match=r"zmq sink 'zmq-results': cannot bind tcp://127\.0\.0\.1:\d+: "
                                             r"Address already in use"):
            ZmqSink(cfg).open()
    finally:
        first.close(0)


def test_a_result_that_cannot_be_encoded_costs_only_itself(catalogue):
    results = model_results(catalogue, 3)
    bad = model_results(catalogue, 1)[0]
    bad.record = dict(bad.record, result={"x": object()})  # not JSON-able
    sink = _sink()
    sub = _sub(sink.bound_endpoint)
    try:
        assert sink.wait_for_subscribers(1)
        SinkSet([sink]).publish_many([results[0], bad, results[1], results[2]])
        st = sink.stats()
        assert st["published"] == 3 and st["errors"] == 1
        assert [decode_result(sub.recv_multipart())[1]["seq"] for _ in range(3)] == [0, 1, 2]
    finally:
        sub.close(0)
        sink.close(0)


def test_results_before_any_subscription_are_counted_as_no_subscriber(catalogue):
    """PUB semantics: a result sent while nobody subscribed reaches no one. It is counted as such, not as
    published, so published = what subscribers received."""
    sink = _sink()
    try:
        sink.publish_many(model_results(catalogue, 5))
        assert (sink.stats()["published"], sink.stats()["no_subscriber"]) == (0, 5)
        sub = _sub(sink.bound_endpoint or "")
        assert sink.wait_for_subscribers(1, 5.0)
        sink.publish_many(model_results(catalogue, 3))
        got = [sub.recv_multipart() for _ in range(3)]
        assert len(got) == 3 and sink.stats()["published"] == 3 and sink.stats()["no_subscriber"] == 5
        sub.close(0)
    finally:
        sink.close(1.0)
