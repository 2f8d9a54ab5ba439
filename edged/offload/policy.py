"""Offloading policies: pure functions from numbers to a decision and a reason.

Nothing here reads a clock, a socket or a global: ``decide(policy, inputs)`` is a
function of its arguments only, so every decision in the decision log can be
replayed from the numbers stored in its record (see :func:`inputs_from_record`).

All times are microseconds (µs), all powers watts (W), all energies millijoules
(mJ). ``W × µs = µJ``, so energies are ``W × µs / 1000``.

Policies (``POLICIES``):

``local``
    always run on the device.
``offload``
    always offload while the fog node is up; fog down → local.
``threshold`` (the paper)
    offload iff ``wcet > T_L + T_F`` with ``T_L = t_l_in`` (transfer time of the
    input to the fog node) and ``T_F`` the fog's execution time for the model.
    Fog down, or a missing WCET / T_L / T_F → local, with that reason.
``adaptive``
    expected local = ``local_queue + local_exec`` (online estimate, falls back to
    the WCET); expected offload = ``t_l_in + fog_queue + t_f + t_l_out``; a
    deadline that one path meets and the other misses decides; otherwise the
    smaller expected latency wins (objective ``latency``) or the smaller expected
    device energy (objective ``energy``: ``p_active × local_exec`` against
    ``p_radio × (t_l_in + t_l_out) + p_idle × (fog_queue + t_f)``, falling back to
    latency when a power is unknown). Fog down → local.

    **Risk** (``risk_k``, default 0 = the means): each path is compared at
    ``mean + k × dispersion``: local adds ``k × local_dev``, offload adds
    ``k × (t_l_dev + t_f_dev)`` (EWMA absolute deviations from the estimators),
    so a jittery link stops attracting inputs whose gain is smaller than its
    jitter. A deadline is checked against the tail, ``mean + max(k, 2) ×
    dispersion``. :func:`parse_risk` reads the config form ``"mean+1dev"``.

    **Joint** (``joint_local_us`` / ``joint_offload_us``): what running this
    input locally / offloading it adds to the completion times of the other
    inputs decided with it (:func:`decide_batch`); each path is compared with
    its own cost added. Unset (``None``) for an input decided alone.

``decide_batch(policy, inputs)``
    decides the inputs that are waiting *together*: a list schedule over two
    resources, the local worker and the link + fog, that minimises their total
    (optionally makespan-weighted) risk-adjusted completion time, each resource
    taking its inputs shortest first (:func:`start_order`). It returns,
    per input, the numbers as the schedule saw them (local queue including the
    batch's earlier local inputs, T_L including the batch's earlier offloads on
    the uplink, fog queue including their fog work, and the joint costs) and
    ``decide(policy, those numbers)``: each record replays alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from edged.errors import ConfigError

POLICIES: Tuple[str, ...] = ("local", "offload", "threshold", "adaptive")
OBJECTIVES: Tuple[str, ...] = ("latency", "energy")
#: a deadline is checked against mean + max(risk_k, DEADLINE_TAIL_K) x dispersion
DEADLINE_TAIL_K = 2.0
#: decide_batch plans at most this many inputs at once (the rest in further windows): cost is O(n^2)
MAX_JOINT = 12


@dataclass(frozen=True)
class DecisionInputs:
    """The numbers one decision is made from. Unknown estimates are ``None``.

    Attributes:
        wcet_us: the model's worst-case local execution time from the stored profile (µs).
        local_exec_us: online estimate of the local execution time (µs).
        local_queue_us: expected wait in the local queue before execution starts (µs).
        t_l_in_us: expected transfer time of this input to the fog node (µs).
        t_l_out_us: expected transfer time of the reply back (µs).
        t_f_us: expected fog execution time for this model (µs).
        fog_queue_us: expected wait in the fog node's queue (µs).
        fog_up: the fog node is reachable and accepts this model.
        deadline_us: latency budget left for this input (µs), or ``None``.
        objective: ``"latency"`` or ``"energy"``.
        p_active_w / p_idle_w / p_radio_w: device power while computing, idle, transmitting (W).
        local_dev_us: dispersion of the local execution time (µs), or ``None``.
        t_l_dev_us: dispersion of the round trip's transfer time, both directions (µs), or ``None``.
        t_f_dev_us: dispersion of the fog execution time (µs), or ``None``.
        risk_k: each path is compared at mean + ``risk_k`` × its dispersion (0 = the means).
        t_l_tx_us: the part of ``t_l_in_us`` this input holds the uplink for (its bytes / bandwidth), µs;
            used by :func:`decide_batch` to queue the batch's offloads behind each other.
        joint_local_us / joint_offload_us: what this input running locally / offloaded adds to the completion
            time of the inputs decided with it (µs; :func:`decide_batch`), ``None`` when decided alone.
    """

    wcet_us: Optional[float] = None
    local_exec_us: Optional[float] = None
    local_queue_us: float = 0.0
    t_l_in_us: Optional[float] = None
    t_l_out_us: Optional[float] = None
    t_f_us: Optional[float] = None
    fog_queue_us: Optional[float] = None
    fog_up: bool = False
    deadline_us: Optional[float] = None
    objective: str = "latency"
    p_active_w: Optional[float] = None
    p_idle_w: Optional[float] = None
    p_radio_w: Optional[float] = None
    local_dev_us: Optional[float] = None
    t_l_dev_us: Optional[float] = None
    t_f_dev_us: Optional[float] = None
    risk_k: float = 0.0
    t_l_tx_us: Optional[float] = None
    joint_local_us: Optional[float] = None
    joint_offload_us: Optional[float] = None


@dataclass(frozen=True)
class Decision:
    """Outcome of a policy: where to run, why, and the expectations compared (µs, mJ)."""

    decision: str  # "local" | "offload"
    reason: str
    threshold_us: Optional[float] = None
    expected_local_us: Optional[float] = None
    expected_offload_us: Optional[float] = None
    expected_local_mj: Optional[float] = None
    expected_offload_mj: Optional[float] = None
    #: what adaptive compared when a risk or joint term applies: mean + k·dev (+ joint cost), µs
    compared_local_us: Optional[float] = None
    compared_offload_us: Optional[float] = None


def _us(x: Optional[float]) -> str:
    return "?" if x is None else f"{x:.0f}us"


def check_policy(name: str) -> str:
    """Return ``name`` if it is a known policy, else raise :class:`ConfigError` listing them."""
    if name not in POLICIES:
        raise ConfigError(f"unknown offload policy {name!r}; choose one of {', '.join(POLICIES)}")
    return name


_RISK = re.compile(r"^mean(?:\s*\+\s*(\d+(?:\.\d+)?)\s*(?:x|\*)?\s*dev)?$")


def parse_risk(text: str) -> float:
    """The ``k`` of a risk setting: ``"mean"`` → 0, ``"mean+1dev"`` → 1, ``"mean+1.5dev"`` → 1.5.

    Raises :class:`ConfigError` naming the bad value and the accepted forms."""
    m = _RISK.match(str(text).strip().lower())
    if m is None:
        raise ConfigError(f"offload risk {text!r}: expected \"mean\" or \"mean+<k>dev\" with k >= 0, "
                          "e.g. \"mean+1dev\"")
    return float(m.group(1)) if m.group(1) else 0.0


def decide(policy: str, inputs: DecisionInputs) -> Decision:
    """Decide where one input runs under ``policy``. Pure: same numbers, same decision."""
    check_policy(policy)
    if policy == "local":
        return Decision("local", "policy local", expected_local_us=_expected_local(inputs))
    if policy == "offload":
        if not inputs.fog_up:
            return Decision("local", "fog down", expected_local_us=_expected_local(inputs))
        return Decision("offload", "policy offload", expected_offload_us=_expected_offload(inputs))
    if policy == "threshold":
        return _threshold(inputs)
    return _adaptive(inputs)


def _expected_local(i: DecisionInputs) -> Optional[float]:
    exec_us = i.local_exec_us if i.local_exec_us is not None else i.wcet_us
    if exec_us is None:
        return None
    return i.local_queue_us + exec_us


def _expected_offload(i: DecisionInputs) -> Optional[float]:
    if i.t_l_in_us is None or i.t_f_us is None:
        return None
    return i.t_l_in_us + (i.fog_queue_us or 0.0) + i.t_f_us + (i.t_l_out_us or 0.0)


def _threshold(i: DecisionInputs) -> Decision:
    if not i.fog_up:
        return Decision("local", "fog down", expected_local_us=i.wcet_us)
    if i.wcet_us is None:
        return Decision("local", "no WCET in profile")
    if i.t_l_in_us is None or i.t_f_us is None:
        return Decision("local", f"no link estimate yet (T_L {_us(i.t_l_in_us)}, T_F {_us(i.t_f_us)})",
                        expected_local_us=i.wcet_us)
    threshold = i.t_l_in_us + i.t_f_us
    if i.wcet_us > threshold:
        return Decision("offload", f"wcet {_us(i.wcet_us)} > T_L+T_F {_us(threshold)}", threshold_us=threshold,
                        expected_local_us=i.wcet_us, expected_offload_us=threshold)
    return Decision("local", f"wcet {_us(i.wcet_us)} <= T_L+T_F {_us(threshold)}", threshold_us=threshold,
                    expected_local_us=i.wcet_us, expected_offload_us=threshold)


def _energies(i: DecisionInputs) -> Tuple[Optional[float], Optional[float]]:
    """Expected device energy (mJ) of the local and the offload path, or ``None`` when a power is unknown."""
    exec_us = i.local_exec_us if i.local_exec_us is not None else i.wcet_us
    if (i.p_active_w is None or i.p_idle_w is None or i.p_radio_w is None or exec_us is None
            or i.t_l_in_us is None or i.t_f_us is None):
        return None, None
    local_mj = i.p_active_w * exec_us / 1000.0
    radio_us = i.t_l_in_us + (i.t_l_out_us or 0.0)
    wait_us = (i.fog_queue_us or 0.0) + i.t_f_us
    offload_mj = (i.p_radio_w * radio_us + i.p_idle_w * wait_us) / 1000.0
    return local_mj, offload_mj


def _dev_local(i: DecisionInputs) -> float:
    return i.local_dev_us or 0.0


def _dev_offload(i: DecisionInputs) -> float:
    return (i.t_l_dev_us or 0.0) + (i.t_f_dev_us or 0.0)


def _adaptive(i: DecisionInputs) -> Decision:
    exp_local = _expected_local(i)
    exp_off = _expected_offload(i)
    if not i.fog_up:
        return Decision("local", "fog down", expected_local_us=exp_local)
    if exp_off is None:
        return Decision("local", f"no link estimate yet (T_L {_us(i.t_l_in_us)}, T_F {_us(i.t_f_us)})",
                        expected_local_us=exp_local)
    if exp_local is None:
        return Decision("offload", "no local estimate (no WCET, no runs yet)", threshold_us=exp_off,
                        expected_offload_us=exp_off)
    local_mj, off_mj = _energies(i) if i.objective == "energy" else (None, None)
    k = max(0.0, i.risk_k)
    risk_local = exp_local + k * _dev_local(i)
    risk_off = exp_off + k * _dev_offload(i)
    cmp_local = risk_local + (i.joint_local_us or 0.0)
    cmp_off = risk_off + (i.joint_offload_us or 0.0)
    plain = cmp_local == exp_local and cmp_off == exp_off

    def make(where: str, reason: str) -> Decision:
        return Decision(where, reason, threshold_us=exp_off, expected_local_us=exp_local,
                        expected_offload_us=exp_off, expected_local_mj=local_mj, expected_offload_mj=off_mj,
                        compared_local_us=None if plain else cmp_local,
                        compared_offload_us=None if plain else cmp_off)

    if i.deadline_us is not None:
        tail_k = max(k, DEADLINE_TAIL_K)
        tail_local = exp_local + tail_k * _dev_local(i)
        tail_off = exp_off + tail_k * _dev_offload(i)
        local_ok = tail_local <= i.deadline_us
        off_ok = tail_off <= i.deadline_us
        if off_ok and not local_ok:
            return make("offload", f"deadline {_us(i.deadline_us)}: local {_us(tail_local)} misses, "
                                   f"offload {_us(tail_off)} meets")
        if local_ok and not off_ok:
            return make("local", f"deadline {_us(i.deadline_us)}: offload {_us(tail_off)} misses, "
                                 f"local {_us(tail_local)} meets")
    if local_mj is not None and off_mj is not None:
        if off_mj < local_mj:
            return make("offload", f"energy offload {off_mj:.3f}mJ < local {local_mj:.3f}mJ")
        return make("local", f"energy local {local_mj:.3f}mJ <= offload {off_mj:.3f}mJ")
    suffix = " (powers unknown: latency)" if i.objective == "energy" else ""
    if plain:
        if exp_off < exp_local:
            return make("offload", f"expected offload {_us(exp_off)} < local {_us(exp_local)}{suffix}")
        return make("local", f"expected local {_us(exp_local)} <= offload {_us(exp_off)}{suffix}")
    detail = f" (mean {_us(exp_off)}/{_us(exp_local)}"
    if k:
        detail += f", +{k:g}dev {_us(k * _dev_offload(i))}/{_us(k * _dev_local(i))}"
    if i.joint_local_us is not None or i.joint_offload_us is not None:
        detail += f", on the others {_us(i.joint_offload_us or 0.0)}/{_us(i.joint_local_us or 0.0)}"
    detail += ")"
    if cmp_off < cmp_local:
        return make("offload", f"expected offload {_us(cmp_off)} < local {_us(cmp_local)}{detail}{suffix}")
    return make("local", f"expected local {_us(cmp_local)} <= offload {_us(cmp_off)}{detail}{suffix}")


# ---- joint decisions for the inputs that wait together -------------------------------------------------
@dataclass
class _Plan:
    """Per input of a batch: what the schedule saw (µs from now) for the chosen path."""

    local_queue_us: float = 0.0
    t_l_in_us: float = 0.0
    fog_queue_us: float = 0.0
    done_us: float = 0.0


_PLAN0 = _Plan()


def start_order(batch: Sequence[DecisionInputs], offload: Sequence[bool]) -> List[int]:
    """The order in which to start a jointly decided batch: shortest first on each resource (offloads by
    uplink + fog time, local inputs by execution time; ties in arrival order), so a heavy input never
    holds up the light ones decided with it. The dispatcher sends / enqueues in this order."""
    def key(n: int) -> Tuple[int, float, int]:
        i = batch[n]
        if offload[n]:
            return 0, (i.t_l_tx_us or 0.0) + (i.t_f_us or 0.0), n
        exec_us = i.local_exec_us if i.local_exec_us is not None else (i.wcet_us or 0.0)
        return 1, exec_us, n
    return sorted(range(len(batch)), key=key)


def _choices(i: DecisionInputs) -> Tuple[bool, bool]:
    """(may run local, may offload) in a joint plan: what adaptive could choose at all."""
    can_off = i.fog_up and _expected_offload(i) is not None
    can_local = _expected_local(i) is not None or not can_off
    return can_local, can_off


class _Rows:
    """A window's numbers as plain floats, and each resource's shortest-first rank (the search runs hundreds
    of simulations: attribute reads on the frozen dataclasses would dominate). Row: (t_l_in, t_l_tx, fog busy
    until, t_f, t_l_out, k·offload dev, local queue, local exec, k·local dev), µs."""

    __slots__ = ("rows", "off_rank", "loc_rank")

    def __init__(self, batch: Sequence[DecisionInputs]) -> None:
        rows = []
        for i in batch:
            k = max(0.0, i.risk_k)
            t_l_in = i.t_l_in_us or 0.0
            exec_us = i.local_exec_us if i.local_exec_us is not None else (i.wcet_us or 0.0)
            rows.append((t_l_in, i.t_l_tx_us or 0.0, t_l_in + (i.fog_queue_us or 0.0), i.t_f_us or 0.0,
                         i.t_l_out_us or 0.0, k * _dev_offload(i), i.local_queue_us, exec_us, k * _dev_local(i)))
        self.rows = rows
        self.off_rank = sorted(range(len(rows)), key=lambda j: (rows[j][1] + rows[j][3], j))
        self.loc_rank = sorted(range(len(rows)), key=lambda j: (rows[j][7], j))


_State = Tuple[float, float, float]


def _objective(rows: _Rows, offload: Sequence[bool], start: _State, makespan_weight: float) -> Tuple[float, _State]:
    """(objective, end state) of :func:`_simulate`, without the per-input plans (the search's inner loop)."""
    local_free, link_extra, fog_free = start
    total = latest = 0.0
    r = rows.rows
    for n in rows.off_rank:
        if offload[n]:
            t_l_in, tx, busy, t_f, t_l_out, dev, _, _, _ = r[n]
            arrive = t_l_in + link_extra
            link_extra += tx
            fog_free = max(arrive, busy, fog_free) + t_f
            done = fog_free + t_l_out
            total += done + dev
            latest = done if done > latest else latest
    for n in rows.loc_rank:
        if not offload[n]:
            row = r[n]
            local_free = max(row[6], local_free) + row[7]
            total += local_free + row[8]
            latest = local_free if local_free > latest else latest
    return total + makespan_weight * latest, (local_free, link_extra, fog_free)


def _simulate(batch: Sequence[DecisionInputs], offload: Sequence[bool], start: _State, makespan_weight: float,
              rows: Optional[_Rows] = None) -> Tuple[float, List[float], List[_Plan], _State]:
    """List-schedule ``batch`` on the local worker and on uplink → fog, each input where ``offload`` says,
    each resource in :func:`start_order` (shortest first). ``start`` = (local worker free, uplink busy
    extra, fog free), µs from now.

    Returns (objective, per-input risk-adjusted completion, per-input plan, end state). The objective is the
    sum of the risk-adjusted completion times + ``makespan_weight`` × the latest completion.
    """
    rows = rows or _Rows(batch)
    local_free, link_extra, fog_free = start
    total = latest = 0.0
    costs: List[float] = [0.0] * len(batch)
    plans: List[_Plan] = [_PLAN0] * len(batch)
    for n in rows.off_rank:
        if offload[n]:
            t_l_in, tx, busy, t_f, t_l_out, dev, local_q, _, _ = rows.rows[n]
            arrive = t_l_in + link_extra
            link_extra += tx
            fog_start = max(arrive, busy, fog_free)
            fog_free = fog_start + t_f
            done = fog_free + t_l_out
            costs[n] = done + dev
            plans[n] = _Plan(local_q, arrive, fog_start - arrive, done)
            latest = max(latest, done)
    for n in rows.loc_rank:
        if not offload[n]:
            t_l_in, _, busy, _, _, _, local_q, exec_us, dev = rows.rows[n]
            begin = max(local_q, local_free)
            local_free = begin + exec_us
            costs[n] = local_free + dev
            plans[n] = _Plan(begin, t_l_in, busy - t_l_in, local_free)
            latest = max(latest, local_free)
    total = sum(costs)
    return total + makespan_weight * latest, costs, plans, (local_free, link_extra, fog_free)


def _plan_window(batch: Sequence[DecisionInputs], start: _State, makespan_weight: float,
                 rows: Optional[_Rows] = None) -> List[bool]:
    """The offload choices of one window. Four starts: list scheduling (each input, in order, where it
    completes first), each input decided alone (as without a joint plan), everything local, everything
    offloaded (where allowed); from each, single changes while one lowers the objective; the best local
    optimum wins (ties: the earlier start). So it is never worse than deciding one by one; the all-local
    start finds "send the heavy one, keep the small ones" that greedy misses."""
    rows = rows or _Rows(batch)
    allowed = [_choices(i) for i in batch]
    greedy: List[bool] = []
    local_free, link_extra, fog_free = start
    for row, (can_local, can_off) in zip(rows.rows, allowed):
        t_l_in, tx, busy, t_f, t_l_out, dev_off, local_q, exec_us, dev_local = row
        off_free = max(t_l_in + link_extra, busy, fog_free) + t_f
        loc_free = max(local_q, local_free) + exec_us
        choice = (off_free + t_l_out + dev_off < loc_free + dev_local) if can_local and can_off else can_off
        greedy.append(choice)
        if choice:
            fog_free, link_extra = off_free, link_extra + tx
        else:
            local_free = loc_free
    alone: List[bool] = []  # each decided alone, the local queue growing with the local ones (no joint plan)
    extra = 0.0
    for i in batch:
        d = decide("adaptive", replace(i, local_queue_us=i.local_queue_us + extra))
        alone.append(d.decision == "offload")
        if not alone[-1]:
            extra += (i.local_exec_us if i.local_exec_us is not None else i.wcet_us) or 0.0
    starts = [greedy, alone, [not can_local for can_local, _ in allowed], [can_off for _, can_off in allowed]]
    free = [n for n, (can_local, can_off) in enumerate(allowed) if can_local and can_off]
    best_assign: List[bool] = greedy
    best_obj = float("inf")
    for assign in starts:
        assign = list(assign)
        obj = _objective(rows, assign, start, makespan_weight)[0]
        for _ in range(len(batch)):
            improved = False
            for n in free:
                assign[n] = not assign[n]
                t_obj = _objective(rows, assign, start, makespan_weight)[0]
                if t_obj < obj - 1e-6:
                    obj, improved = t_obj, True
                else:
                    assign[n] = not assign[n]
            if not improved:
                break
        if obj < best_obj - 1e-6:
            best_assign, best_obj = assign, obj
    return best_assign


def _r1(x: float) -> float:
    return round(x, 1)


def decide_batch(policy: str, inputs: Sequence[DecisionInputs],
                 makespan_weight: float = 0.0) -> List[Tuple[DecisionInputs, Decision]]:
    """Decide several waiting inputs together. Pure: same numbers, same decisions.

    Each ``inputs[n]`` holds that input's numbers *before* the batch: ``local_queue_us`` the local backlog,
    ``t_l_in_us`` its T_L if it were sent now (this edge's bytes already in flight included), ``t_l_tx_us`` its
    own time on the uplink, ``fog_queue_us`` the fog queue it would meet. For ``adaptive`` (latency objective)
    the batch is list-scheduled on two resources, the local worker and uplink → fog, in order, choosing for
    each input local or offload so that the sum of the risk-adjusted completion times (+ ``makespan_weight`` ×
    the latest) is minimal under single changes (windows of :data:`MAX_JOINT`).

    Returns, per input, ``(numbers, decision)``: the numbers as the schedule saw them (rounded to 0.1 µs:
    local queue after the batch's earlier local inputs, T_L after its earlier offloads, the fog queue behind
    them, and ``joint_local_us``/``joint_offload_us``: what each path of this input costs the others), and
    ``decision == decide(policy, numbers)``. Record the numbers: each decision replays alone. Other
    policies, and the energy objective, decide each input alone; only the local queue grows with the batch's
    local inputs (as the dispatcher did input by input).
    """
    check_policy(policy)
    out: List[Tuple[DecisionInputs, Decision]] = []
    if not inputs:
        return out
    joint = policy == "adaptive" and all(i.objective == "latency" for i in inputs) and len(inputs) > 1
    if not joint:
        extra = 0.0
        for i in inputs:
            seen = replace(i, local_queue_us=_r1(i.local_queue_us + extra)) if extra else i
            d = decide(policy, seen)
            if d.decision == "local":
                exec_us = i.local_exec_us if i.local_exec_us is not None else i.wcet_us
                extra += exec_us or 0.0
            out.append((seen, d))
        return out
    state: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    for w0 in range(0, len(inputs), MAX_JOINT):
        window = list(inputs[w0:w0 + MAX_JOINT])
        rows = _Rows(window)
        assign = _plan_window(window, state, makespan_weight, rows)
        # decide each input from the numbers the plan gives it (earlier inputs as actually decided)
        actual: List[bool] = []
        for n, i in enumerate(window):
            costs: List[float] = []
            seen_plans: List[_Plan] = []
            for choice in (False, True):
                trial = actual + [choice] + assign[n + 1:]
                obj, per, plans, _ = _simulate(window, trial, state, makespan_weight, rows)
                costs.append(obj - per[n])  # what the others (and the makespan term) cost with this choice
                seen_plans.append(plans[n])
            floor = min(costs)
            loc_plan, off_plan = seen_plans
            seen = replace(
                i, local_queue_us=_r1(loc_plan.local_queue_us),
                t_l_in_us=None if i.t_l_in_us is None else _r1(off_plan.t_l_in_us),
                fog_queue_us=_r1(off_plan.fog_queue_us) if i.fog_queue_us is not None or off_plan.fog_queue_us
                else None,
                joint_local_us=_r1(costs[0] - floor), joint_offload_us=_r1(costs[1] - floor))
            d = decide(policy, seen)
            actual.append(d.decision == "offload")
            out.append((seen, d))
        state = _objective(rows, actual, state, makespan_weight)[1]
    return out


def _opt(record: Mapping[str, Any], key: str) -> Optional[float]:
    v = record.get(key)
    return None if v is None else float(v)


def inputs_from_record(record: Mapping[str, Any]) -> DecisionInputs:
    """Rebuild the :class:`DecisionInputs` a decision-log record was decided from.

    ``decide(record["policy"], inputs_from_record(record)).decision`` equals the
    record's decision (``fallback`` records were decided ``offload``). The
    dispatcher rounds the inputs *before* deciding, so the replay is exact.
    """
    return DecisionInputs(
        wcet_us=_opt(record, "wcet_us"),
        local_exec_us=_opt(record, "local_exec_us"),
        local_queue_us=float(record.get("local_queue_us") or 0.0),
        t_l_in_us=_opt(record, "t_l_us"),
        t_l_out_us=_opt(record, "t_l_out_us"),
        t_f_us=_opt(record, "t_f_us"),
        fog_queue_us=_opt(record, "fog_queue_us"),
        fog_up=bool(record.get("fog_up")),
        deadline_us=_opt(record, "deadline_us"),
        objective=str(record.get("objective") or "latency"),
        p_active_w=_opt(record, "p_active_w"),
        p_idle_w=_opt(record, "p_idle_w"),
        p_radio_w=_opt(record, "p_radio_w"),
        local_dev_us=_opt(record, "local_dev_us"),
        t_l_dev_us=_opt(record, "t_l_dev_us"),
        t_f_dev_us=_opt(record, "t_f_dev_us"),
        risk_k=float(record.get("risk_k") or 0.0),
        t_l_tx_us=_opt(record, "t_l_tx_us"),
        joint_local_us=_opt(record, "joint_local_us"),
        joint_offload_us=_opt(record, "joint_offload_us"),
    )


#: the record fields (beyond the original ones) that :func:`inputs_from_record` reads: write them when set
RECORD_FIELDS_14: Tuple[str, ...] = ("local_dev_us", "t_l_dev_us", "t_f_dev_us", "risk_k", "t_l_tx_us",
                                     "joint_local_us", "joint_offload_us")
