"""Risk and joint decisions (issue 14): pure functions, hand-computed tables, exact replay."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any, Dict, List, Sequence, Tuple

import pytest

from edged.errors import ConfigError
from edged.offload.policy import (
    RECORD_FIELDS_14,
    Decision,
    DecisionInputs,
    _simulate,
    decide,
    decide_batch,
    inputs_from_record,
    parse_risk,
    start_order,
)

BASE = DecisionInputs(wcet_us=800, local_exec_us=700, local_queue_us=0, t_l_in_us=300, t_l_out_us=100,
                      t_f_us=200, fog_queue_us=0, fog_up=True)

# ---- risk: a dispersion changes the decision --------------------------------------------------------
# expected local 700, offload 600 (as in test_offload_policy); (changes, decision, reason must contain)
RISK: List[Tuple[Dict[str, Any], str, str]] = [
    ({"t_l_dev_us": 80, "t_f_dev_us": 30}, "offload", "expected offload 600us < local 700us"),  # k = 0: means
    ({"t_l_dev_us": 80, "t_f_dev_us": 30, "risk_k": 1}, "local", "local 700us <= offload 710us"),
    ({"t_l_dev_us": 80, "t_f_dev_us": 30, "risk_k": 1, "local_dev_us": 50}, "offload", "offload 710us < local 750us"),
    ({"t_l_dev_us": 40, "risk_k": 2}, "offload", "+2dev 80us/0us"),
    ({"t_l_dev_us": 60, "risk_k": 2}, "local", "local 700us <= offload 720us"),
    ({"t_l_dev_us": 40, "risk_k": 2, "local_dev_us": 11}, "offload", "offload 680us < local 722us"),
    ({"t_l_dev_us": None, "t_f_dev_us": None, "risk_k": 3}, "offload", "expected offload 600us"),  # unknown: 0
    # deadlines use the tail, mean + max(k, 2) dev: offload's tail 600 + 2 x 110 = 820
    ({"t_l_dev_us": 80, "t_f_dev_us": 30, "deadline_us": 800}, "local", "offload 820us misses"),
    ({"t_l_dev_us": 80, "t_f_dev_us": 30, "deadline_us": 850}, "offload", "expected offload"),  # both meet: k = 0
    ({"t_l_dev_us": 80, "t_f_dev_us": 30, "deadline_us": 900, "risk_k": 3}, "local", "offload 930us misses"),
    ({"t_l_dev_us": 80, "t_f_dev_us": 30, "deadline_us": 650}, "offload", "expected offload"),  # both miss
    # the joint costs on the others count like the path's own time
    ({"joint_local_us": 0, "joint_offload_us": 150}, "local", "local 700us <= offload 750us"),
    ({"joint_local_us": 50, "joint_offload_us": 0}, "offload", "on the others 0us/50us"),
]


@pytest.mark.parametrize("changes,expected,reason", RISK)
def test_risk_table(changes: Dict[str, Any], expected: str, reason: str) -> None:
    d = decide("adaptive", replace(BASE, **changes))
    assert d.decision == expected
    assert reason in d.reason, d.reason


def test_what_adaptive_compared_is_in_the_decision() -> None:
    d = decide("adaptive", replace(BASE, t_l_dev_us=80, t_f_dev_us=30, risk_k=1, joint_local_us=5))
    assert (d.expected_local_us, d.expected_offload_us) == (700, 600)  # the means, as before
    assert (d.compared_local_us, d.compared_offload_us) == (705, 710)
    assert decide("adaptive", BASE).compared_local_us is None


def test_risk_does_not_touch_threshold() -> None:
    assert decide("threshold", replace(BASE, t_l_dev_us=1e6, risk_k=5)) == decide("threshold", BASE)


@pytest.mark.parametrize("text,k", [("mean", 0.0), ("mean+1dev", 1.0), ("mean + 1.5 dev", 1.5), ("MEAN+2dev", 2.0),
                                    ("mean+0.5*dev", 0.5), (" mean+3xdev ", 3.0)])
def test_parse_risk(text: str, k: float) -> None:
    assert parse_risk(text) == k


@pytest.mark.parametrize("text", ["p90", "mean-1dev", "1dev", "", "mean+dev", "mean+-1dev", "median"])
def test_parse_risk_names_the_bad_value_and_the_forms(text: str) -> None:
    with pytest.raises(ConfigError, match=r"mean\+<k>dev") as err:
        parse_risk(text)
    assert repr(text) in str(err.value)


# ---- joint decisions ----------------------------------------------------------------------------------
HEAVY = DecisionInputs(local_exec_us=10_000, t_l_in_us=3000, t_l_tx_us=2500, t_f_us=8000, t_l_out_us=500,
                       fog_queue_us=0, fog_up=True)
SMALL = DecisionInputs(local_exec_us=1000, t_l_in_us=2000, t_l_tx_us=100, t_f_us=400, t_l_out_us=2000,
                       fog_queue_us=0, fog_up=True)
H2 = DecisionInputs(local_exec_us=10_000, t_l_in_us=1000, t_l_tx_us=500, t_f_us=7000, t_l_out_us=1000,
                    fog_queue_us=0, fog_up=True)

# (batch, decisions, per input: (local_queue_us, t_l_in_us, fog_queue_us, joint_local_us, joint_offload_us))
JOINT: List[Tuple[List[DecisionInputs], List[str], List[Tuple[float, float, float, float, float]]]] = [
    # The issue's burst: alone the heavy input stays local (10 000 <= 11 500) and the small ones wait behind it.
    # Together: offload it (done at 11 500) and run the small ones at 1000, 2000, 3000: 17 500 in all, against
    # 24 400 for greedy (heavy local, the three small ones offloaded behind each other on the fog). Shortest
    # first: run here, the heavy one would start after the small ones (3000). A small one offloaded goes first
    # on the uplink and the fog (done 4400; the heavy one 100 us later) and frees the local worker for the
    # others: 1900 (first) or 900 (second) less for them; the last one delays only the heavy one (100).
    ([HEAVY, SMALL, SMALL, SMALL], ["offload", "local", "local", "local"],
     [(3000, 3000, 0, 0, 0), (0, 2000, 0, 1900, 0), (1000, 2000, 0, 900, 0), (2000, 2000, 0, 0, 100)]),
    # Two heavy inputs: the second sees the fog busy with the first (t_l_in 1500 behind its 500 us of bytes,
    # fog queue 8000 - 1500), so it runs here: 9000 + 10 000 instead of 9000 + 16 000.
    ([H2, H2], ["offload", "local"], [(0, 1000, 0, 10_000, 0), (0, 1500, 6500, 0, 0)]),
    # One input: the same as decide() alone, joint costs 0.
    ([HEAVY], ["local"], [(0, 3000, 0, 0, 0)]),
    # A local backlog of 9000 before the batch: both go; the small one first on the uplink and the fog (4400),
    # the heavy one 100 us later behind its bytes (11 600): 16 000, against 21 500 with the small one local.
    ([replace(HEAVY, local_queue_us=9000), replace(SMALL, local_queue_us=9000)], ["offload", "offload"],
     [(9000, 3100, 0, 0, 0), (9000, 2000, 0, 0, 100)]),
]


@pytest.mark.parametrize("batch,decisions,seen", JOINT)
def test_joint_schedule_hand_computed(batch: List[DecisionInputs], decisions: List[str],
                                      seen: List[Tuple[float, float, float, float, float]]) -> None:
    out = decide_batch("adaptive", batch)
    assert [d.decision for _, d in out] == decisions, [d.reason for _, d in out]
    got = [(i.local_queue_us, i.t_l_in_us, i.fog_queue_us, i.joint_local_us, i.joint_offload_us) for i, _ in out]
    if len(batch) == 1:
        assert out[0][1] == decide("adaptive", batch[0])
        return
    assert got == seen


def test_the_issues_burst_greedy_against_joint() -> None:
    batch = [HEAVY, SMALL, SMALL, SMALL]
    assert decide("adaptive", HEAVY).reason == "expected local 10000us <= offload 11500us"  # alone
    joint = decide_batch("adaptive", batch)
    assert joint[0][1].reason == "expected offload 11500us < local 13000us"  # behind the small ones, shortest first
    assert [d.decision for _, d in joint] == ["offload", "local", "local", "local"]


def test_start_order_is_shortest_first_per_resource() -> None:
    batch = [HEAVY, SMALL, replace(SMALL, local_exec_us=500), H2]
    assert start_order(batch, [True, True, False, False]) == [1, 0, 2, 3]
    assert start_order(batch, [False, False, False, False]) == [2, 1, 0, 3]  # ties (10 000) in arrival order


def _record(i: DecisionInputs, policy: str) -> Dict[str, Any]:
    rec: Dict[str, Any] = {
        "policy": policy, "wcet_us": i.wcet_us, "local_exec_us": i.local_exec_us, "local_queue_us": i.local_queue_us,
        "t_l_us": i.t_l_in_us, "t_l_out_us": i.t_l_out_us, "t_f_us": i.t_f_us, "fog_queue_us": i.fog_queue_us,
        "fog_up": i.fog_up, "deadline_us": i.deadline_us, "objective": i.objective, "p_active_w": i.p_active_w,
        "p_idle_w": i.p_idle_w, "p_radio_w": i.p_radio_w}
    rec.update({k: getattr(i, k) for k in RECORD_FIELDS_14})
    return rec


def _random_batch(rng: random.Random, n: int) -> List[DecisionInputs]:
    out = []
    for _ in range(n):
        heavy = rng.random() < 0.4
        exec_us = rng.uniform(8000, 30000) if heavy else rng.uniform(200, 3000)
        tx = rng.uniform(500, 5000) if heavy else rng.uniform(20, 300)
        out.append(DecisionInputs(
            wcet_us=round(exec_us * 1.3, 1), local_exec_us=round(exec_us, 1), local_queue_us=2000.0,
            t_l_in_us=round(1000 + tx, 1), t_l_tx_us=round(tx, 1), t_l_out_us=round(rng.uniform(500, 3000), 1),
            t_f_us=round(exec_us / rng.uniform(2, 6), 1), fog_queue_us=round(rng.choice([0, 0, 3000]), 1),
            fog_up=rng.random() > 0.05, t_l_dev_us=round(rng.uniform(0, 4000), 1), local_dev_us=round(rng.uniform(0, 500), 1),
            risk_k=rng.choice([0.0, 1.0]) if n else 0.0,
            deadline_us=rng.choice([None, None, None, 15000.0])))
    return out


@pytest.mark.parametrize("policy", ["adaptive", "threshold", "local", "offload"])
def test_every_batch_decision_replays_alone_from_its_record(policy: str) -> None:
    rng = random.Random(14)
    for _ in range(60):
        batch = _random_batch(rng, rng.randint(1, 14))
        for seen, d in decide_batch(policy, batch):
            rebuilt = inputs_from_record(_record(seen, policy))
            assert rebuilt == seen
            assert decide(policy, rebuilt) == d


def _objective(batch: Sequence[DecisionInputs], decisions: Sequence[Decision]) -> float:
    return _simulate(batch, [d.decision == "offload" for d in decisions], (0.0, 0.0, 0.0), 0.0)[0]


def test_joint_never_worse_than_deciding_one_by_one_and_usually_optimal() -> None:
    rng = random.Random(7)
    optimal = cases = 0
    for _ in range(150):
        batch = [replace(i, deadline_us=None, fog_up=True) for i in _random_batch(rng, rng.randint(2, 7))]
        joint = _objective(batch, [d for _, d in decide_batch("adaptive", batch)])
        # one by one, as the dispatcher decides without decide_batch: each sees the local inputs before it
        one_by_one = []
        extra = 0.0
        for i in batch:
            d = decide("adaptive", replace(i, local_queue_us=i.local_queue_us + extra))
            extra += (i.local_exec_us or 0.0) if d.decision == "local" else 0.0
            one_by_one.append(d)
        best = min(_simulate(batch, list(a), (0.0, 0.0, 0.0), 0.0)[0]
                   for a in itertools.product([False, True], repeat=len(batch)))
        assert best - 1e-6 <= joint <= _objective(batch, one_by_one) + 1e-6
        cases += 1
        optimal += joint <= best + 1e-6
    print(f"joint schedule optimal in {optimal}/{cases} random batches")
    assert optimal >= 0.9 * cases, f"optimal in {optimal}/{cases}"


def test_fog_down_or_unknown_estimates_force_the_path() -> None:
    out = decide_batch("adaptive", [replace(HEAVY, fog_up=False), replace(SMALL, t_f_us=None),
                                    replace(SMALL, local_exec_us=None)])
    assert [d.decision for _, d in out] == ["local", "local", "offload"]
    assert out[0][1].reason == "fog down" and "no link estimate" in out[1][1].reason
    assert (out[0][0].local_queue_us, out[1][0].local_queue_us) == (1000, 0)  # the shorter one first


def test_other_policies_and_energy_decide_alone_with_the_local_queue_growing() -> None:
    out = decide_batch("threshold", [replace(HEAVY, wcet_us=5000), replace(HEAVY, wcet_us=50_000)])
    assert [d.decision for _, d in out] == ["local", "offload"]
    assert out[1][0].local_queue_us == 10_000 and out[1][0].joint_local_us is None
    powers = {"objective": "energy", "p_active_w": 2.0, "p_idle_w": 0.5, "p_radio_w": 1.0}
    e = decide_batch("adaptive", [replace(HEAVY, **powers), replace(SMALL, **powers)])
    assert all("energy" in d.reason for _, d in e)
    assert decide_batch("adaptive", []) == []


def test_windows_carry_the_schedule_on() -> None:
    batch = [SMALL] * 30  # 1000 us each locally; three windows of 12, 12, 6
    out = decide_batch("adaptive", [replace(s, t_l_out_us=1e6) for s in batch])  # offloading never pays
    assert [i.local_queue_us for i, _ in out] == [1000.0 * n for n in range(30)]
