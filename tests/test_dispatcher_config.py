"""Dispatcher settings as one object (issue 13): validated with errors that name the setting, overridable by
keyword, and the policies-only shorthand still means every other setting at its default."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from edged.errors import ConfigError
from edged.models import Catalogue
from edged.offload.dispatcher import Dispatcher
from edged.offload.types import DispatcherConfig
from edged.sources.sample import Sample
from tests.helpers_ingest import mlp_rows


@pytest.mark.parametrize("changes, names", [
    ({"policies": {"*": "fastest"}}, "fastest"),
    ({"objective": "speed"}, "objective 'speed'"),
    ({"local_workers": 0}, "local_workers = 0"),
    ({"max_batch": 2.5}, "max_batch = 2.5"),
    ({"max_local_queue": -1}, "max_local_queue = -1"),
    ({"fog_timeout_s": 0}, "fog_timeout_s = 0"),
    ({"probe_interval_s": "1"}, "probe_interval_s = '1'"),
    ({"probe_pad_bytes": -5}, "probe_pad_bytes = -5"),
])
def test_a_bad_setting_is_refused_naming_it(changes: Dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("(", r"\(").replace("[", r"\[")):
        DispatcherConfig(**changes)
    with pytest.raises(ConfigError):
        DispatcherConfig().replace(**changes)


def test_an_unknown_override_names_the_known_settings() -> None:
    with pytest.raises(ConfigError, match=r"unknown dispatcher setting\(s\) max_bacth; expected some of .*max_batch"):
        DispatcherConfig().replace(max_bacth=4)
    with pytest.raises(ConfigError, match="max_bacth"):
        Dispatcher({}, {"*": "local"}, lambda r: None, max_bacth=4)


def test_the_config_is_a_frozen_copy_of_what_it_was_given() -> None:
    wcet = {"mlp": 10.0}
    c = DispatcherConfig(policies={"*": "local", "cnn": "adaptive"}, wcet_us=wcet)
    wcet["mlp"] = 99.0
    assert c.wcet_us == {"mlp": 10.0}
    assert c.policy_for("cnn") == "adaptive" and c.policy_for("mlp") == "local" and c.default_policy == "local"
    assert DispatcherConfig().default_policy == "threshold"
    with pytest.raises(AttributeError):
        c.max_batch = 3  # type: ignore[misc]


def test_config_object_shorthand_and_overrides_build_the_same_dispatcher() -> None:
    mlp = Catalogue.discover().load("mlp", backend="onnx", threads=1)
    rows = mlp_rows(3)
    runs: List[List[Dict[str, Any]]] = []
    for how in ("object", "shorthand"):
        recs: List[Dict[str, Any]] = []
        if how == "object":
            d = Dispatcher({"mlp": mlp}, DispatcherConfig(policies={"*": "local"}, wcet_us={"mlp": 77.0},
                                                          max_batch=2), recs.append)
        else:
            d = Dispatcher({"mlp": mlp}, {"*": "local"}, recs.append, wcet_us={"mlp": 77.0}, max_batch=2)
        assert d.config.max_batch == 2 and d.config.wcet_us == {"mlp": 77.0} and d.policy_for("mlp") == "local"
        try:
            d.submit_many([Sample("mlp", i, rows[i], "t") for i in range(3)])
            assert d.close(5.0)
        finally:
            d.close(1.0)
        runs.append(recs)
    for recs in runs:
        assert [r["seq"] for r in recs] == [0, 1, 2]
        assert [r["batch"] for r in recs] == [2, 2, 1]
        assert all(r["wcet_us"] == 77.0 and r["policy"] == "local" for r in recs)
    assert [r["result"] for r in runs[0]] == [r["result"] for r in runs[1]]


def test_a_dispatcher_needs_a_sink() -> None:
    with pytest.raises(ConfigError, match="sink"):
        Dispatcher({}, DispatcherConfig())
