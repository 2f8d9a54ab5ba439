"""Policies (table-tested), estimators and the circuit breaker: pure logic, no sockets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

import pytest

from edged.errors import ConfigError
from edged.offload.estimator import LinkEstimator, LocalEstimator
from edged.offload.fog_client import CircuitBreaker
from edged.offload.policy import POLICIES, DecisionInputs, decide, inputs_from_record

BASE = DecisionInputs(wcet_us=800, local_exec_us=700, local_queue_us=0, t_l_in_us=300, t_l_out_us=100,
                      t_f_us=200, fog_queue_us=0, fog_up=True)

# (policy, changes to BASE, expected decision, text the reason must contain)
TABLE: List[Tuple[str, Dict[str, Any], str, str]] = [
    ("local", {}, "local", "policy local"),
    ("local", {"fog_up": False}, "local", "policy local"),
    ("offload", {}, "offload", "policy offload"),
    ("offload", {"fog_up": False}, "local", "fog down"),
    # threshold: offload iff wcet > T_L(in) + T_F
    ("threshold", {}, "offload", "wcet 800us > T_L+T_F 500us"),
    ("threshold", {"wcet_us": 500}, "local", "<="),  # equal: not greater
    ("threshold", {"wcet_us": 499}, "local", "<="),
    ("threshold", {"t_l_in_us": 5000}, "local", "T_L+T_F 5200us"),
    ("threshold", {"t_l_out_us": 99999, "fog_queue_us": 99999}, "offload", ">"),  # the paper ignores both
    ("threshold", {"fog_up": False}, "local", "fog down"),
    ("threshold", {"wcet_us": None}, "local", "no WCET"),
    ("threshold", {"t_l_in_us": None}, "local", "no link estimate"),
    ("threshold", {"t_f_us": None}, "local", "no link estimate"),
    # adaptive: local = queue + exec (700); offload = 300 + 0 + 200 + 100 = 600
    ("adaptive", {}, "offload", "expected offload 600us < local 700us"),
    ("adaptive", {"local_exec_us": 600}, "local", "expected local 600us <= offload 600us"),
    ("adaptive", {"local_exec_us": 100, "local_queue_us": 600}, "offload", "< local 700us"),
    ("adaptive", {"fog_queue_us": 200}, "local", "offload 800us"),
    ("adaptive", {"t_l_out_us": None}, "offload", "expected offload 500us"),
    ("adaptive", {"local_exec_us": None}, "offload", "< local 800us"),  # falls back to the WCET
    ("adaptive", {"local_exec_us": None, "wcet_us": 550}, "local", "expected local 550us"),
    ("adaptive", {"local_exec_us": None, "wcet_us": None}, "offload", "no local estimate"),
    ("adaptive", {"fog_up": False}, "local", "fog down"),
    ("adaptive", {"t_f_us": None}, "local", "no link estimate"),
    ("adaptive", {"local_exec_us": 5000, "fog_up": False}, "local", "fog down"),
    # deadlines: the path that meets it wins even if it is slower on average
    ("adaptive", {"deadline_us": 650}, "offload", "local 700us misses"),
    ("adaptive", {"deadline_us": 650, "local_exec_us": 400, "t_l_in_us": 400}, "local", "offload 700us misses"),
    ("adaptive", {"deadline_us": 10}, "offload", "expected offload"),  # both miss: latency decides
    ("adaptive", {"deadline_us": 10000, "local_exec_us": 650}, "offload", "expected offload"),  # both meet
    # energy objective: 2 W x 700 us = 1.4 mJ local; 1 W x 400 us + 0.5 W x 200 us = 0.5 mJ offload
    ("adaptive", {"objective": "energy", "p_active_w": 2.0, "p_idle_w": 0.5, "p_radio_w": 1.0}, "offload",
     "energy offload 0.500mJ < local 1.400mJ"),
    ("adaptive", {"objective": "energy", "p_active_w": 0.5, "p_idle_w": 0.5, "p_radio_w": 1.0}, "local",
     "energy local 0.350mJ <= offload 0.500mJ"),
    ("adaptive", {"objective": "energy", "p_active_w": 2.0, "p_idle_w": None, "p_radio_w": 1.0}, "offload",
     "powers unknown"),
    ("adaptive", {"objective": "energy", "local_exec_us": 100, "p_active_w": 9.0, "p_idle_w": 0.5,
                  "p_radio_w": 1.0, "deadline_us": 300}, "local", "offload 600us misses"),
]


@pytest.mark.parametrize("policy,changes,expected,reason", TABLE)
def test_policy_table(policy: str, changes: dict, expected: str, reason: str) -> None:
    d = decide(policy, replace(BASE, **changes))
    assert d.decision == expected
    assert reason in d.reason, d.reason


def test_threshold_reports_numbers() -> None:
    d = decide("threshold", BASE)
    assert (d.threshold_us, d.expected_local_us, d.expected_offload_us) == (500, 800, 500)


def test_adaptive_reports_energies_only_for_energy() -> None:
    powers: Dict[str, Any] = {"p_active_w": 2.0, "p_idle_w": 0.5, "p_radio_w": 1.0}
    assert decide("adaptive", replace(BASE, **powers)).expected_local_mj is None
    d = decide("adaptive", replace(BASE, objective="energy", **powers))
    assert d.expected_local_mj == pytest.approx(1.4) and d.expected_offload_mj == pytest.approx(0.5)


def test_unknown_policy_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        decide("greedy", BASE)
    assert POLICIES == ("local", "offload", "threshold", "adaptive")


def test_decisions_are_pure_and_replayable_from_a_record() -> None:
    for policy, changes, _, _ in TABLE:
        inputs = replace(BASE, **changes)
        rec = {"policy": policy, "wcet_us": inputs.wcet_us, "local_exec_us": inputs.local_exec_us,
               "local_queue_us": inputs.local_queue_us, "t_l_us": inputs.t_l_in_us, "t_l_out_us": inputs.t_l_out_us,
               "t_f_us": inputs.t_f_us, "fog_queue_us": inputs.fog_queue_us, "fog_up": inputs.fog_up,
               "deadline_us": inputs.deadline_us, "objective": inputs.objective, "p_active_w": inputs.p_active_w,
               "p_idle_w": inputs.p_idle_w, "p_radio_w": inputs.p_radio_w}
        assert inputs_from_record(rec) == inputs
        assert decide(policy, inputs_from_record(rec)) == decide(policy, inputs)


# ---- estimators ------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _feed(est: LinkEstimator, latency_us: float, bw_Bps: float, sizes: List[int],
          outlier_every: Optional[int] = None) -> None:
    for i, n in enumerate(sizes):
        transfer = 2 * latency_us + n / bw_Bps * 1e6
        if outlier_every and i % outlier_every == 0:
            transfer += 500_000  # a retransmission stall
        est.observe_round_trip(n // 2, n - n // 2, transfer + 300 + 50, t_f_us=300, queue_us=50, model="cnn")


def test_link_estimator_learns_latency_and_bandwidth_despite_outliers() -> None:
    clock = FakeClock()
    est = LinkEstimator(clock=clock)
    sizes = [400, 8600, 1200, 400, 8600, 3000, 400, 8600] * 4
    _feed(est, latency_us=2000, bw_Bps=1_000_000, sizes=sizes, outlier_every=7)
    assert est.latency_us() == pytest.approx(2000, rel=0.02)
    assert est.bandwidth_bps() == pytest.approx(1_000_000, rel=0.02)
    assert est.t_l_us(10_000) == pytest.approx(2000 + 10_000, rel=0.02)
    assert est.t_f_us("cnn") == pytest.approx(300)
    assert est.t_f_us("mlp") is None
    # a reply's queue_us is the wait that request saw, long drained by the time its reply is here: not a report
    assert est.fog_queue_us() == 0.0


def test_link_estimator_tracks_a_change_and_forgets_old_data() -> None:
    clock = FakeClock()
    est = LinkEstimator(window=32, max_age_s=10, stale_after_s=1.0, clock=clock)
    _feed(est, 1000, 10_000_000, [400, 8600] * 16)
    assert (est.t_l_us(400) or 0) < 2000
    _feed(est, 50_000, 10_000_000, [400, 8600] * 16)  # link got slow: the window follows
    assert (est.t_l_us(400) or 0) > 40_000
    assert not est.is_stale()
    clock.t += 2
    assert est.is_stale()
    clock.t += 20
    assert est.t_l_us(400) is None and est.t_f_us("cnn") is None  # too old: unknown, not wrong
    assert est.fog_queue_us() == 0.0
    snap = est.snapshot()
    assert snap["latency_us"] is None and snap["observations"] == 64


def test_link_estimator_keeps_slope_when_sizes_stop_varying() -> None:
    clock = FakeClock()
    est = LinkEstimator(window=8, clock=clock)
    _feed(est, 1000, 1_000_000, [400, 8600] * 4)
    _feed(est, 1000, 1_000_000, [400] * 8)  # window now holds one size only
    assert est.bandwidth_bps() == pytest.approx(1_000_000, rel=0.05)


def test_local_estimator_seed_then_observations() -> None:
    est = LocalEstimator({"cnn": 900.0}, window=4)
    assert est.exec_us("cnn") == 900 and est.exec_us("mlp") is None
    for v in (100, 110, 120, 130):
        est.observe("cnn", v)
    assert est.exec_us("cnn") == pytest.approx(115)
    for v in (400, 400, 400):  # throttling shows within a few runs
        est.observe("cnn", v)
    assert est.exec_us("cnn") == 400
    est.seed("mlp", 50)
    assert est.snapshot() == {"cnn": 400.0, "mlp": 50.0}


# ---- circuit breaker -------------------------------------------------------------------------
def test_breaker_trips_after_k_failures_and_recovers_after_m_probes() -> None:
    clock = FakeClock()
    br = CircuitBreaker(failure_threshold=3, recovery_probes=2, probe_interval_s=0.5, clock=clock)
    assert br.is_up()
    br.record_failure("a")
    br.record_failure("b")
    br.record_success()  # consecutive failures only
    br.record_failure("c")
    br.record_failure("d")
    assert br.is_up()
    assert br.record_failure("e") is True
    assert br.state == "down" and br.last_error == "e"
    assert not br.probe_due()
    clock.t += 0.5
    assert br.probe_due()
    br.record_probe(True)
    assert not br.probe_due() and br.state == "down"
    clock.t += 0.5
    br.record_probe(False)  # a failed probe restarts the count
    clock.t += 0.5
    br.record_probe(True)
    assert br.state == "down"
    br.record_success()  # real successes while down do not count
    clock.t += 0.5
    br.record_probe(True)
    assert br.is_up()
    assert br.snapshot()["transitions"] == 2


def test_link_estimator_follows_a_lasting_change_within_a_few_round_trips() -> None:
    clock = FakeClock()
    est = LinkEstimator(window=64, change_window=4, clock=clock)
    _feed(est, 1000, 10_000_000, [400, 8600] * 30)
    _feed(est, 1000, 10_000_000, [400], outlier_every=1)  # one stall: ignored
    assert (est.t_l_us(400) or 0) < 2000
    _feed(est, 40_000, 10_000_000, [400, 8600, 400, 8600])  # the link got slow and stays slow
    assert (est.t_l_us(400) or 0) > 30_000
    assert est.changes == 1


def test_fog_reports_replace_t_f_only_while_no_real_replies() -> None:
    clock = FakeClock()
    est = LinkEstimator(stale_after_s=1.0, clock=clock)
    est.observe_fog_report("cnn", 50_000)
    est.observe_fog_report("cnn", 12_000)  # replaces: the fog's current median, not an average of reports
    assert est.t_f_us("cnn") == 12_000
    est.observe_round_trip(300, 300, 20_000, t_f_us=11_000, model="cnn")
    assert est.t_f_us("cnn") == 11_500  # median of the report and the reply
    est.observe_fog_report("cnn", 90_000)  # real replies are recent: ignored
    assert est.t_f_us("cnn") == 11_500
    clock.t += 5
    est.observe_fog_report("cnn", 30_000)
    assert est.t_f_us("cnn") == 30_000


def test_forget_link_keeps_t_f() -> None:
    est = LinkEstimator(clock=FakeClock())
    _feed(est, 1000, 1_000_000, [400, 8600] * 4)
    est.forget_link()
    assert est.t_l_us(400) is None and est.t_f_us("cnn") == 300 and est.is_stale()
