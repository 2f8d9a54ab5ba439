"""Joint decisions and the estimator's in-flight bookkeeping through a real dispatcher, a real ``edged fog``
subprocess and the link proxy (issue 14)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import pytest

from edged.offload.policy import decide, inputs_from_record
from edged.sources.sample import Sample
from tests.linkproxy import LinkProxy

from . import test_offload_fog as fogtests
from .test_offload_fog import (
    FogProcess,
    Recorder,
    assert_one_record_each,
    link_ready,
    make_dispatcher,
    shutdown,
    wait_for,
)

# the module-scoped fixtures of test_offload_fog: one fog subprocess, the shipped cnn and mlp
catalogue, fog, edge_models, inputs = fogtests.catalogue, fogtests.fog, fogtests.edge_models, fogtests.inputs


@pytest.mark.timeout(90)
def test_bursts_are_decided_together_and_every_record_replays(fog: FogProcess, edge_models: Dict[str, Any],
                                                              inputs: Dict[str, np.ndarray]) -> None:
    rec = Recorder()
    with LinkProxy(0, "127.0.0.1", fog.port, latency_ms=2.0, bandwidth_Bps=1.25e6) as proxy:
        # cnn looks heavy here (its local estimate), mlp light: the joint plan has a real choice
        d = make_dispatcher(edge_models, proxy.endpoint, {"*": "adaptive"}, rec, risk_k=1.0,
                            wcet_us={"cnn": 20_000, "mlp": 300}, local_exec_us={"cnn": 15_000, "mlp": 200})
        wait_for(link_ready(d, "cnn", "mlp"))
        seq = 0
        for _ in range(4):
            samples = []
            for k in range(10):
                model = "cnn" if k % 3 == 0 else "mlp"
                samples.append(Sample(model=model, seq=seq, array=inputs[model][seq % 40], source="test"))
                seq += 1
            d.submit_many(samples)
            wait_for(lambda n=seq: len(rec.records) == n, 30)  # type: ignore[misc]
        shutdown(d)
        assert d.link.in_flight() == (0, 0)  # every offload announced was ended (reply or failure)
    assert_one_record_each(rec, 40)
    for r in rec.records:
        assert r["joint_n"] == 10 and 0 <= r["joint_index"] < 10
        assert r["risk_k"] == 1.0 and "joint_local_us" in r and "joint_offload_us" in r
        replay = decide(r["policy"], inputs_from_record(r))
        assert replay.decision == ("offload" if r["decision"] == "fallback" else r["decision"]), r
        assert replay.reason == r["reason"].split("; fallback:")[0]
    assert sorted(r["joint_index"] for r in rec.records) == sorted(list(range(10)) * 4)
    offloaded = [r for r in rec.records if r["decision"] == "offload"]
    assert offloaded and all(r["model"] == "cnn" for r in offloaded), [r["reason"] for r in rec.records]


@pytest.mark.timeout(60)
def test_one_input_at_a_time_is_not_joint(fog: FogProcess, edge_models: Dict[str, Any],
                                          inputs: Dict[str, np.ndarray]) -> None:
    rec = Recorder()
    with LinkProxy(0, "127.0.0.1", fog.port) as proxy:
        d = make_dispatcher(edge_models, proxy.endpoint, {"*": "adaptive"}, rec)
        wait_for(link_ready(d, "cnn", "mlp"))
        for i in range(5):
            d.submit(Sample(model="mlp", seq=i, array=inputs["mlp"][i], source="test"))
        shutdown(d)
    assert_one_record_each(rec, 5)
    assert all("joint_n" not in r and "joint_local_us" not in r for r in rec.records)
    assert all(decide("adaptive", inputs_from_record(r)).decision == r["decision"] for r in rec.records)
