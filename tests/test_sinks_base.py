"""The sink contract: filters, config schemas that name the bad key, a fan-out that never raises."""

from __future__ import annotations

from typing import List, Sequence

import pytest

from edged.errors import ConfigError, EdgedError
from edged.sinks import Result, ResultSink, SinkConfig, SinkFilter, SinkSet, build_sinks, parse_sink_config

from .helpers_sinks import record


class Recording(ResultSink):
    type_name = "test"

    def __init__(self, name: str, flt: SinkFilter = SinkFilter(), fail_on: int = -1, fail_open: bool = False) -> None:
        super().__init__(SinkConfig(type="test", name=name, filter=flt))
        self.got: List[int] = []
        self.fail_on = fail_on
        self.fail_open = fail_open
        self.closed = False

    def open(self) -> None:
        if self.fail_open:
            raise EdgedError(f"test sink {self.name!r}: cannot bind tcp://*:1")

    def publish_many(self, results: Sequence[Result]) -> None:
        for r in results:
            if r.record["seq"] == self.fail_on:
                raise RuntimeError("boom")
            self.got.append(r.record["seq"])
            self.published += 1

    def close(self, timeout_s: float = 2.0) -> None:
        self.closed = True


def _results() -> List[Result]:
    rs = []
    for i in range(12):
        decision = "rejected" if i % 4 == 3 else ("offload" if i % 2 else "local")
        rs.append(Result(record("mlp" if i < 8 else "cnn", i, decision=decision,
                                sender=None if i == 0 else f"dev-{i % 3}")))
    return rs


def test_filter_semantics():
    rs = _results()
    f = SinkFilter(models=("mlp",), exclude_decisions=("rejected",), senders=("dev-[12]",))
    assert [r.record["seq"] for r in rs if f.matches(r.record)] == [1, 2, 4, 5]
    assert [r.record["seq"] for r in rs if SinkFilter(decisions=("offload",)).matches(r.record)] == [1, 5, 9]
    assert SinkFilter(senders=("",)).matches(rs[0].record)  # no sender matches ""
    assert SinkFilter(senders=("*",)).matches(rs[0].record)  # "*" matches "" too
    assert not SinkFilter(senders=("dev-*",)).matches(rs[0].record)
    assert SinkFilter().matches_all and not f.matches_all


def test_fan_out_is_per_sink_and_never_raises():
    rs = _results()
    a = Recording("a")
    b = Recording("b", SinkFilter(exclude_decisions=("rejected",)))
    bad = Recording("bad", fail_on=2)
    sinks = SinkSet([a, bad, b])
    sinks.publish_many(rs[:6])
    sinks.publish_many(rs[6:])
    assert a.got == list(range(12))
    assert b.got == [i for i in range(12) if i % 4 != 3] and b.filtered == 3
    assert bad.got == [0, 1] + list(range(6, 12)) and bad.errors == 1 and sinks.failures == 1
    st = sinks.stats()
    assert st["a"]["published"] == 12 and st["b"]["filtered"] == 3 and st["bad"]["errors"] == 1
    assert all(isinstance(v, int) for s in st.values() for v in s.values())


def test_open_failure_closes_the_sinks_already_open():
    a, b, c = Recording("a"), Recording("b", fail_open=True), Recording("c")
    with pytest.raises(EdgedError, match="cannot bind"):
        SinkSet([a, b, c]).open()
    assert a.closed and not c.closed


def test_config_errors_name_every_bad_key_at_once():
    with pytest.raises(ConfigError) as e:
        parse_sink_config({"type": "zmq", "endpont": "tcp://*:1", "sndhwm": "10", "bind": 1,
                           "filter": {"model": ["mlp"], "senders": "dev-*"}}, "sinks[3]")
    lines = str(e.value).splitlines()
    assert "sinks[3].endpont: unknown key (did you mean 'endpoint'?)" in lines
    assert "sinks[3].sndhwm = '10': expected an integer" in lines
    assert "sinks[3].bind = 1: expected true or false" in lines
    assert "sinks[3].filter.model: unknown key (did you mean 'models'?)" in lines
    assert "sinks[3].filter.senders = 'dev-*': expected a list of strings" in lines
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.endpoint = 'tcp://\*:99999': expected"):
        parse_sink_config({"type": "zmq", "endpoint": "tcp://*:99999"}, "sinks[0]")
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.type = 'kafka': expected one of 'zmq', 'serial', 'mqtt'"):
        parse_sink_config({"type": "kafka"}, "sinks[0]")
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.topic = '\{model\}/\{device\}': expected a topic template"):
        parse_sink_config({"type": "zmq", "topic": "{model}/{device}"}, "sinks[0]")


def test_duplicate_sink_names_are_refused():
    cfgs = [parse_sink_config({"type": "zmq"}, "sinks[0]"), parse_sink_config({"type": "zmq"}, "sinks[1]")]
    with pytest.raises(ConfigError, match=r"sinks\[1\]\.name = 'zmq-results': expected a name no other sink has"):
        build_sinks(cfgs)


def test_defaults_are_usable_as_is():
    for t in ("zmq", "serial", "mqtt"):
        cfg = parse_sink_config({"type": t}, "sinks[0]")
        assert cfg.type == t and cfg.name and cfg.filter.matches_all
