"""The joint decision's shortcut (issue 13 with 14): when no offload could pay for a burst, the search is
skipped and each input is decided alone, in turn, with the local queue grown by the earlier local inputs;
each decision still replays from its record's numbers."""

from __future__ import annotations

from typing import List

import numpy as np
import pytest

from edged.offload.dispatcher import Dispatcher, _Job
from edged.offload.policy import DecisionInputs, decide, decide_batch
from edged.sources.sample import Sample


def _jobs(offload_us: float, runs: List[float], backlog: float = 0.0, fog_up: bool = True) -> List[_Job]:
    out = []
    for k, run in enumerate(runs):
        i = DecisionInputs(wcet_us=run, local_exec_us=run, local_queue_us=backlog, t_l_in_us=offload_us / 2,
                           t_l_out_us=10.0, t_f_us=offload_us / 2 - 10.0, fog_queue_us=0.0, fog_up=fog_up)
        out.append(_Job(sample=Sample("m", k, np.zeros(1, np.float32), "t"), policy="adaptive", ts=0.0, inputs=i))
    return out


@pytest.mark.parametrize("offload_us, runs, backlog, fog_up, skip", [
    (40_000.0, [5.0] * 32, 0.0, True, True),       # a far fog, a tiny model: nothing to gain
    (40_000.0, [5.0] * 32, 50_000.0, True, False),  # a long local backlog: offloading may pay
    (400.0, [100.0] * 4, 0.0, True, False),         # 4 x 100 us here vs 400 us there: the search decides
    (800.0, [100.0] * 4, 0.0, True, True),          # 800 >= 400 + 4 x 100: never worth it
    (10.0, [100.0] * 4, 0.0, False, True),          # the fog is down: everything here
])
def test_local_dominates_only_when_no_offload_could_pay(offload_us: float, runs: List[float], backlog: float,
                                                        fog_up: bool, skip: bool) -> None:
    assert Dispatcher._local_dominates(_jobs(offload_us, runs, backlog, fog_up)) is skip


def test_decided_in_turn_equals_the_joint_plan_where_local_dominates() -> None:
    jobs = _jobs(40_000.0, [5.0, 7.0, 5.0, 9.0])
    assert Dispatcher._local_dominates(jobs)
    d = Dispatcher({}, {"*": "adaptive"}, lambda r: None)
    try:
        decided = d._decide_in_turn(jobs)
    finally:
        d.close(1.0)
    planned = decide_batch("adaptive", [j.inputs for j in _jobs(40_000.0, [5.0, 7.0, 5.0, 9.0])])
    assert [j.decision.decision for j in decided] == [p[1].decision for p in planned] == ["local"] * 4
    assert [j.inputs.local_queue_us for j in decided] == [0.0, 5.0, 12.0, 17.0]
    for j in decided:  # each replays alone from the numbers it carries
        assert decide("adaptive", j.inputs) == j.decision
