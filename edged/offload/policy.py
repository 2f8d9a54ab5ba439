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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from edged.errors import ConfigError

POLICIES: Tuple[str, ...] = ("local", "offload", "threshold", "adaptive")
OBJECTIVES: Tuple[str, ...] = ("latency", "energy")


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


def _us(x: Optional[float]) -> str:
    return "?" if x is None else f"{x:.0f}us"


def check_policy(name: str) -> str:
    """Return ``name`` if it is a known policy, else raise :class:`ConfigError` listing them."""
    if name not in POLICIES:
        raise ConfigError(f"unknown offload policy {name!r}; choose one of {', '.join(POLICIES)}")
    return name


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

    def make(where: str, reason: str) -> Decision:
        return Decision(where, reason, threshold_us=exp_off, expected_local_us=exp_local,
                        expected_offload_us=exp_off, expected_local_mj=local_mj, expected_offload_mj=off_mj)

    if i.deadline_us is not None:
        local_ok = exp_local <= i.deadline_us
        off_ok = exp_off <= i.deadline_us
        if off_ok and not local_ok:
            return make("offload", f"deadline {_us(i.deadline_us)}: local {_us(exp_local)} misses, "
                                   f"offload {_us(exp_off)} meets")
        if local_ok and not off_ok:
            return make("local", f"deadline {_us(i.deadline_us)}: offload {_us(exp_off)} misses, "
                                 f"local {_us(exp_local)} meets")
    if local_mj is not None and off_mj is not None:
        if off_mj < local_mj:
            return make("offload", f"energy offload {off_mj:.3f}mJ < local {local_mj:.3f}mJ")
        return make("local", f"energy local {local_mj:.3f}mJ <= offload {off_mj:.3f}mJ")
    suffix = " (powers unknown: latency)" if i.objective == "energy" else ""
    if exp_off < exp_local:
        return make("offload", f"expected offload {_us(exp_off)} < local {_us(exp_local)}{suffix}")
    return make("local", f"expected local {_us(exp_local)} <= offload {_us(exp_off)}{suffix}")


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
    )
