"""The ``partition`` policy: a pure argmin over cut points (Neurosurgeon's algorithm, on measured numbers).

Nothing here reads a clock, a socket or a global: :func:`choose_cut` is a function of its
arguments only, so a decision can be replayed from the numbers in its record
(:func:`inputs_to_record` / :func:`inputs_from_record`).

Units: times µs, sizes bytes, powers W, energies mJ (``W x µs / 1000``).

For cut ``k`` (``k`` graph nodes run on the device; ``k = 0`` all-fog, ``k = N`` all-local)::

    latency(k) = [k > 0] (local_queue + head(k))
               + [k < N] (T_L(bytes_k) + fog_queue + tail(k) + T_L(out_bytes))
    energy(k)  = p_active x head(k) + [k < N] (p_radio x (T_L(bytes_k) + T_L(out_bytes))
                                               + p_idle x (fog_queue + tail(k)))

with ``T_L(b) = t_l_base_us + t_l_us_per_byte x b`` (the estimator's line: ``intercept / 2``
and ``slope``). Objective ``latency`` picks the smallest latency; ``energy`` the smallest
device energy (latency when a power is unknown). A deadline restricts the choice to the
cuts that meet it when any does. Ties go to the larger ``k`` (less depends on the fog).
Fog down or no link estimate: all-local. A cut with an unknown head or tail time is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from edged.partition import ALL_FOG, ALL_LOCAL

OBJECTIVES: Tuple[str, ...] = ("latency", "energy")


@dataclass(frozen=True)
class CutCost:
    """What one cut point costs, from the profiles (µs, bytes).

    ``head_us`` is the device time of ``nodes[:k]`` (0 for all-fog), ``tail_us`` the fog time of
    ``nodes[k:]`` (0 for all-local), ``bytes_up`` what crosses the link (0 for all-local).
    ``all_local`` marks ``k = N`` (nothing is sent; no fog needed)."""

    name: str
    k: int
    head_us: Optional[float]
    tail_us: Optional[float]
    bytes_up: int
    all_local: bool = False

    @classmethod
    def local(cls, k: int, wcet_us: Optional[float]) -> CutCost:
        return cls(ALL_LOCAL, k, wcet_us, 0.0, 0, True)


@dataclass(frozen=True)
class PartitionInputs:
    """The numbers one partition decision is made from. Unknown estimates are ``None``."""

    cuts: Tuple[CutCost, ...]
    t_l_base_us: Optional[float] = None  #: fixed one-way cost of a message (µs)
    t_l_us_per_byte: Optional[float] = None  #: µs per byte one way
    out_bytes: int = 0  #: bytes of the result sent back
    fog_queue_us: float = 0.0
    fog_up: bool = False
    local_queue_us: float = 0.0  #: wait before the head can start on the device
    deadline_us: Optional[float] = None
    objective: str = "latency"
    p_active_w: Optional[float] = None
    p_idle_w: Optional[float] = None
    p_radio_w: Optional[float] = None


@dataclass(frozen=True)
class PartitionDecision:
    """The chosen cut, why, and what every cut was expected to cost (µs, mJ)."""

    cut: str
    k: int
    reason: str
    expected_us: Optional[float] = None
    expected_mj: Optional[float] = None
    bytes_up: int = 0
    #: (name, expected latency µs, expected energy mJ or None) of every cut considered, by k
    table: Tuple[Tuple[str, float, Optional[float]], ...] = field(default=())

    @property
    def decision(self) -> str:
        """``local`` (all-local), ``offload`` (all-fog) or ``partition`` (an interior cut)."""
        if self.cut == ALL_LOCAL:
            return "local"
        return "offload" if self.cut == ALL_FOG else "partition"


def transfer_us(nbytes: float, base_us: float, per_byte_us: float) -> float:
    """One-way transfer time of ``nbytes`` (µs) on the link line ``base + per_byte x bytes``."""
    return base_us + per_byte_us * nbytes


def cut_latency_us(c: CutCost, i: PartitionInputs) -> Optional[float]:
    """Expected end-to-end latency of cut ``c`` (µs), or None when a number it needs is unknown."""
    if c.head_us is None:
        return None
    local = (i.local_queue_us + c.head_us) if (c.k > 0 or c.all_local) else 0.0
    if c.all_local:
        return local
    if c.tail_us is None or i.t_l_base_us is None or i.t_l_us_per_byte is None:
        return None
    link = (transfer_us(c.bytes_up, i.t_l_base_us, i.t_l_us_per_byte)
            + transfer_us(i.out_bytes, i.t_l_base_us, i.t_l_us_per_byte))
    return local + link + i.fog_queue_us + c.tail_us


def cut_energy_mj(c: CutCost, i: PartitionInputs) -> Optional[float]:
    """Expected device energy of cut ``c`` (mJ), or None when a power or a time is unknown."""
    if i.p_active_w is None or c.head_us is None:
        return None
    mj = i.p_active_w * c.head_us / 1000.0
    if c.all_local:
        return mj
    if (i.p_radio_w is None or i.p_idle_w is None or c.tail_us is None or i.t_l_base_us is None
            or i.t_l_us_per_byte is None):
        return None
    radio = (transfer_us(c.bytes_up, i.t_l_base_us, i.t_l_us_per_byte)
             + transfer_us(i.out_bytes, i.t_l_base_us, i.t_l_us_per_byte))
    return mj + (i.p_radio_w * radio + i.p_idle_w * (i.fog_queue_us + c.tail_us)) / 1000.0


def _fmt(us: Optional[float]) -> str:
    return "?" if us is None else f"{us:.0f}us"


def choose_cut(i: PartitionInputs) -> PartitionDecision:
    """Pick the cut point for one input. Pure: same numbers, same decision."""
    if i.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {i.objective!r}; expected one of {', '.join(OBJECTIVES)}")
    local = next((c for c in i.cuts if c.all_local), None)
    if local is None:
        raise ValueError("the cuts must include the all-local point (CutCost.local(N, wcet_us))")
    local_us = cut_latency_us(local, i)
    if not i.fog_up:
        return PartitionDecision(ALL_LOCAL, local.k, "fog down", local_us, cut_energy_mj(local, i))
    if i.t_l_base_us is None or i.t_l_us_per_byte is None:
        return PartitionDecision(ALL_LOCAL, local.k, "no link estimate yet", local_us, cut_energy_mj(local, i))
    rows: List[Tuple[CutCost, float, Optional[float]]] = []
    for c in sorted(i.cuts, key=lambda c: c.k):
        lat = cut_latency_us(c, i)
        if lat is None:
            continue
        rows.append((c, lat, cut_energy_mj(c, i)))
    if not rows:
        return PartitionDecision(ALL_LOCAL, local.k, "no cut has known head and tail times (no WCET either)",
                                 local_us, None)
    table = tuple((c.name, round(lat, 3), None if e is None else round(e, 6)) for c, lat, e in rows)
    use_energy = i.objective == "energy" and all(e is not None for _, _, e in rows)
    pool = rows
    why_deadline = ""
    if i.deadline_us is not None:
        meeting = [r for r in rows if r[1] <= i.deadline_us]
        if meeting and len(meeting) < len(rows):
            pool = meeting
            why_deadline = f"; {len(meeting)}/{len(rows)} cuts meet the deadline {_fmt(i.deadline_us)}"
        elif not meeting:
            why_deadline = f"; no cut meets the deadline {_fmt(i.deadline_us)}"
            use_energy = False  # every cut misses: at least be as little late as possible

    def key(r: Tuple[CutCost, float, Optional[float]]) -> Tuple[float, int]:
        value = r[2] if use_energy and r[2] is not None else r[1]
        return (value, -r[0].k)  # ties: the larger k

    best = min(pool, key=key)
    c, lat, e = best
    if use_energy:
        reason = f"min energy {e:.3f}mJ at cut {c.name} (k={c.k}, {c.bytes_up} B up, {_fmt(lat)})"
    else:
        suffix = " (powers unknown: latency)" if i.objective == "energy" else ""
        reason = (f"min latency {_fmt(lat)} at cut {c.name} (k={c.k}, {c.bytes_up} B up; all-local "
                  f"{_fmt(local_us)}){suffix}")
    return PartitionDecision(c.name, c.k, reason + why_deadline, round(lat, 3), None if e is None else round(e, 6),
                             c.bytes_up, table)


# ---- records ------------------------------------------------------------------------------------------
def inputs_to_record(i: PartitionInputs) -> Dict[str, Any]:
    """The numbers of a decision, JSON-ready; :func:`inputs_from_record` rebuilds them exactly."""
    return {
        "cuts": [[c.name, c.k, c.head_us, c.tail_us, c.bytes_up, c.all_local] for c in i.cuts],
        "t_l_base_us": i.t_l_base_us, "t_l_us_per_byte": i.t_l_us_per_byte, "out_bytes": i.out_bytes,
        "fog_queue_us": i.fog_queue_us, "fog_up": i.fog_up, "local_queue_us": i.local_queue_us,
        "deadline_us": i.deadline_us, "objective": i.objective,
        "p_active_w": i.p_active_w, "p_idle_w": i.p_idle_w, "p_radio_w": i.p_radio_w,
    }


def _opt(d: Mapping[str, Any], k: str) -> Optional[float]:
    v = d.get(k)
    return None if v is None else float(v)


def inputs_from_record(d: Mapping[str, Any]) -> PartitionInputs:
    cuts = tuple(CutCost(str(n), int(k), None if h is None else float(h), None if t is None else float(t), int(b),
                         bool(loc)) for n, k, h, t, b, loc in d.get("cuts") or ())
    return PartitionInputs(
        cuts=cuts, t_l_base_us=_opt(d, "t_l_base_us"), t_l_us_per_byte=_opt(d, "t_l_us_per_byte"),
        out_bytes=int(d.get("out_bytes") or 0), fog_queue_us=float(d.get("fog_queue_us") or 0.0),
        fog_up=bool(d.get("fog_up")), local_queue_us=float(d.get("local_queue_us") or 0.0),
        deadline_us=_opt(d, "deadline_us"), objective=str(d.get("objective") or "latency"),
        p_active_w=_opt(d, "p_active_w"), p_idle_w=_opt(d, "p_idle_w"), p_radio_w=_opt(d, "p_radio_w"),
    )


def cut_costs(cuts: Sequence[Any], head_us: Mapping[str, float], tail_us: Mapping[str, float]
              ) -> Tuple[CutCost, ...]:
    """:class:`CutCost` per cut from :class:`~edged.partition.graph.Cut` objects and per-cut head/tail times
    (µs; e.g. ``edged profile --layers`` on the device and the fog's ping ``cuts``). All-fog's head is 0 and
    its tail the fog's whole-model time (``tail_us[ALL_FOG]``); all-local's head the local time
    (``head_us[ALL_LOCAL]``)."""
    out: List[CutCost] = []
    for c in cuts:
        if c.name == ALL_LOCAL:
            out.append(CutCost.local(c.k, head_us.get(ALL_LOCAL)))
        elif c.name == ALL_FOG:
            out.append(CutCost(ALL_FOG, 0, 0.0, tail_us.get(ALL_FOG), int(c.bytes or 0)))
        else:
            out.append(CutCost(c.name, c.k, head_us.get(c.name), tail_us.get(c.name), int(c.bytes or 0)))
    return tuple(out)
