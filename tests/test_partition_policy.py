"""The pure ``partition`` policy: the cut a table of per-cut costs implies (issue 12)."""

from __future__ import annotations

import json

import pytest

from edged.partition import ALL_FOG, ALL_LOCAL
from edged.partition.policy import (
    CutCost,
    PartitionInputs,
    choose_cut,
    cut_latency_us,
    inputs_from_record,
    inputs_to_record,
)

# A model shaped like rgbcnn: the tensor shrinks early (49152 B input, 8192 B after the first pool),
# the head costs grow with k. Fog tails are 4x faster than the device (a fog node is a bigger box).
CUTS = (
    CutCost(ALL_FOG, 0, 0.0, 250.0, 49152),
    CutCost("p1", 3, 300.0, 175.0, 8192),
    CutCost("p2", 6, 650.0, 87.5, 4096),
    CutCost("p3", 9, 900.0, 25.0, 2048),
    CutCost("d", 13, 980.0, 5.0, 256),
    CutCost.local(15, 1000.0),
)


def inputs(**kw):
    base = dict(cuts=CUTS, t_l_base_us=100.0, t_l_us_per_byte=0.01, out_bytes=40, fog_up=True)
    base.update(kw)
    return PartitionInputs(**base)


@pytest.mark.parametrize("kw, cut, why", [
    # LAN (100 MB/s, 100 us per message): all-fog 100+491.5+250+100.4 = 942 > p1 300+181.9+175+100.4 = 757
    (dict(t_l_us_per_byte=0.01), "p1", "min latency 757us at cut p1"),
    # very fast link (1 GB/s, tiny fixed cost): the raw input costs 49 us, all-fog wins
    (dict(t_l_us_per_byte=0.001, t_l_base_us=5.0), ALL_FOG, "min latency 309us at cut all-fog"),
    # 20 MB/s: the raw input costs 2.5 ms, the 8 KiB after the first pool 430 us: p1 still wins
    (dict(t_l_us_per_byte=0.05, t_l_base_us=20.0), "p1", "min latency 927us at cut p1"),
    # 10 MB/s: every cut costs more than the 1000 us of running it all here
    (dict(t_l_us_per_byte=0.1, t_l_base_us=20.0), ALL_LOCAL, "min latency 1000us at cut all-local"),
    # slow link (1 MB/s): nothing beats running everything here
    (dict(t_l_us_per_byte=1.0), ALL_LOCAL, "min latency 1000us at cut all-local"),
    # fog queue of 2 ms: local
    (dict(fog_queue_us=2000.0), ALL_LOCAL, "at cut all-local"),
    # a busy local queue delays every cut but all-fog
    (dict(t_l_us_per_byte=0.01, local_queue_us=5000.0), ALL_FOG, "at cut all-fog"),
    (dict(fog_up=False), ALL_LOCAL, "fog down"),
    (dict(t_l_base_us=None), ALL_LOCAL, "no link estimate yet"),
])
def test_latency_table(kw, cut, why):
    d = choose_cut(inputs(**kw))
    assert d.cut == cut, d
    assert why in d.reason
    # the chosen cut is the argmin of the table it reports
    if d.table:
        assert min(d.table, key=lambda r: r[1])[1] == pytest.approx(d.expected_us)


def test_expected_latency_formula():
    i = inputs()
    c = CUTS[1]
    # local_queue + head + T_L(8192) + fog_queue + tail + T_L(40)
    assert cut_latency_us(c, i) == pytest.approx(300 + (100 + 81.92) + 0 + 175 + (100 + 0.4))
    assert cut_latency_us(CUTS[0], inputs(local_queue_us=999.0)) == pytest.approx(100 + 491.52 + 250 + 100.4)
    assert cut_latency_us(CUTS[-1], inputs(local_queue_us=7.0)) == pytest.approx(1007.0)


def test_decision_kinds():
    assert choose_cut(inputs(t_l_us_per_byte=0.001, t_l_base_us=5.0)).decision == "offload"
    assert choose_cut(inputs()).decision == "partition"
    assert choose_cut(inputs(fog_up=False)).decision == "local"


def test_ties_go_to_the_more_local_cut():
    cuts = (CutCost(ALL_FOG, 0, 0.0, 100.0, 0), CutCost("m", 2, 50.0, 50.0, 0), CutCost.local(4, 100.0 + 200.0))
    d = choose_cut(PartitionInputs(cuts, t_l_base_us=100.0, t_l_us_per_byte=0.0, fog_up=True))
    # all-fog = 0 + 100 + 100 + 100 = 300; m = 50 + 100 + 50 + 100 = 300; local = 300: all equal
    assert d.cut == ALL_LOCAL
    d = choose_cut(PartitionInputs(cuts[:2] + (CutCost.local(4, 301.0),), t_l_base_us=100.0, t_l_us_per_byte=0.0,
                                   fog_up=True))
    assert d.cut == "m"


def test_unknown_head_or_tail_skips_the_cut():
    cuts = (CutCost(ALL_FOG, 0, 0.0, None, 49152), CutCost("p1", 3, None, 10.0, 10), CutCost("p2", 6, 5.0, 5.0, 10),
            CutCost.local(9, 10_000.0))
    d = choose_cut(PartitionInputs(cuts, t_l_base_us=1.0, t_l_us_per_byte=0.0, fog_up=True))
    assert d.cut == "p2" and [r[0] for r in d.table] == ["p2", ALL_LOCAL]


def test_deadline_restricts_the_choice():
    # latency optimum is p1 (757 us); energy optimum would also be evaluated; a 760 us deadline keeps p1,
    # a deadline of 700 us no cut meets: the fastest still wins and the reason says so
    d = choose_cut(inputs(deadline_us=700.0))
    assert d.cut == "p1" and "no cut meets the deadline 700us" in d.reason


@pytest.mark.parametrize("powers, cut", [
    # radio expensive: sending 8 KiB costs more than computing locally -> all-local (1000us x 1W = 1 mJ)
    (dict(p_active_w=1.0, p_idle_w=0.1, p_radio_w=5.0), ALL_LOCAL),
    # computing expensive, radio cheap: send the raw input
    (dict(p_active_w=5.0, p_idle_w=0.1, p_radio_w=0.5), ALL_FOG),
    # in between: a small interior cut saves both
    (dict(p_active_w=2.0, p_idle_w=0.1, p_radio_w=3.0), "p1"),
])
def test_energy_table(powers, cut):
    d = choose_cut(inputs(objective="energy", **powers))
    assert d.cut == cut, d.table
    assert d.reason.startswith("min energy")
    assert d.expected_mj == min(r[2] for r in d.table)


def test_energy_without_powers_falls_back_to_latency():
    d = choose_cut(inputs(objective="energy"))
    assert d.cut == "p1" and "(powers unknown: latency)" in d.reason


def test_bad_objective_and_missing_local_point_are_named():
    with pytest.raises(ValueError, match="unknown objective 'joules'"):
        choose_cut(inputs(objective="joules"))
    with pytest.raises(ValueError, match="must include the all-local point"):
        choose_cut(inputs(cuts=CUTS[:-1]))


@pytest.mark.parametrize("kw", [dict(), dict(objective="energy", p_active_w=2.0, p_idle_w=0.1, p_radio_w=1.2),
                                dict(fog_up=False), dict(deadline_us=800.0, fog_queue_us=12.5)])
def test_replay_from_the_record_is_exact(kw):
    i = inputs(**kw)
    rec = json.loads(json.dumps(inputs_to_record(i)))
    assert inputs_from_record(rec) == i
    assert choose_cut(inputs_from_record(rec)) == choose_cut(i)
