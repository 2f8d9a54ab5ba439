"""The dispatcher glue: a profiled model's cuts -> PartitionInputs -> choose_cut -> head, fog tail, result."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from edged.partition import ALL_FOG, ALL_LOCAL  # noqa: E402
from edged.partition import neurosurgeon as ns  # noqa: E402
from edged.partition.live import Partitioner, fog_tail_times  # noqa: E402
from edged.partition.policy import choose_cut, inputs_from_record, inputs_to_record  # noqa: E402
from edged.partition.split import PartitionedModel  # noqa: E402
from edged.profile import Profile  # noqa: E402


@pytest.fixture(scope="module")
def part(catalogue):
    entry = catalogue.get("rgbcnn")
    pm = PartitionedModel(entry, max_verify=32)
    x, _ = entry.load_validation()
    rows = ns.profile_cuts(pm, x[:8], repeats=1, warmup=2)
    prof = Profile({}, {"rgbcnn/onnx/1": {"model": "rgbcnn", "backend": "onnx", "threads": 1, "wcet_us": 99.0,
                                          "p50_us": 30.0, "cuts": rows}})
    return Partitioner(entry, prof, pm=pm), x[:4]


def test_fog_tail_times_from_a_ping_reply():
    models = {"rgbcnn": {"model_hash": "h", "t_f_us": 40.0, "cuts": {"p1": {"tail_hash": "x", "t_tail_us": 25.5}}}}
    assert fog_tail_times(models, "rgbcnn") == {"p1": 25.5, ALL_FOG: 40.0}
    assert fog_tail_times(models, "other") == {}


def test_decision_inputs_follow_the_link(part):
    p, x = part
    assert p.head_us[ALL_FOG] == 0.0 and p.head_us["p1"] > 0 and p.out_bytes == 40
    fog = {c.name: 1.0 for c in p.cuts if c.name != ALL_LOCAL}  # a fog far faster than this device
    fast = p.decision_inputs(t_l_base_us=1.0, t_l_us_per_byte=1e-5, fog_tail_us=fog)
    assert choose_cut(fast).cut == ALL_FOG
    slow = p.decision_inputs(t_l_base_us=200.0, t_l_us_per_byte=1.0, fog_tail_us=fog)
    assert choose_cut(slow).cut == ALL_LOCAL
    down = p.decision_inputs(t_l_base_us=1.0, t_l_us_per_byte=1e-5, fog_tail_us=fog, fog_up=False)
    assert choose_cut(down).cut == ALL_LOCAL
    rec = inputs_to_record(fast)
    assert choose_cut(inputs_from_record(rec)) == choose_cut(fast)


def test_head_then_tail_is_the_full_result(part, catalogue):
    p, x = part
    with catalogue.load("rgbcnn", "onnx") as full:
        want = full.predict(x[0])
    mid = p.head("p1", x[0])
    assert mid.shape == (8, 16, 16) and p.cut_ref("p1") == ("p1", p.pm.cut("p1").tail_hash)
    got = p.finish_locally("p1", mid)["probs"][0]
    assert np.max(np.abs(got - want)) <= 1e-5


def test_neurosurgeon_inputs_use_predicted_times(part):
    p, _ = part
    lm = ns.LatencyModel({"conv": [1.0, 0.0, 0.0], "fc": [1.0, 0.0, 0.0], "pool": [1.0, 0.0, 0.0],
                          "activation": [1.0, 0.0], "reshape": [1.0, 0.0]}, 2.0, {})
    pred = p.fit_neurosurgeon(lm)
    assert pred["p1"] == {"head_us": 2.0 + 5, "tail_us": 2.0 + 20}  # 5 of its 25 layers before p1
    i = p.decision_inputs(t_l_base_us=10.0, t_l_us_per_byte=0.0, fog_tail_us={}, predicted=True)
    costs = {c.name: (c.head_us, c.tail_us) for c in i.cuts}
    assert costs["p1"] == (7.0, 22.0) and costs[ALL_FOG] == (0.0, 27.0) and costs[ALL_LOCAL] == (27.0, 0.0)
