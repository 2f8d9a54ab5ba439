"""Glue for the dispatcher: one model's cuts, their profiled times, and the decision inputs.

::

    part = Partitioner(catalogue.get("rgbcnn"), profile)            # at start (builds + verifies cuts)
    ...
    fog_tails = fog_tail_times(ping.models, "rgbcnn")               # from the fog's ping reply
    inputs = part.decision_inputs(t_l_base_us=..., t_l_us_per_byte=..., fog_tail_us=fog_tails,
                                  fog_queue_us=..., fog_up=True, local_queue_us=...)
    d = choose_cut(inputs)                                          # pure; inputs_to_record(inputs) for the log
    if d.decision == "partition":
        mid = part.head(d.cut, x)                                   # one sample, no batch axis
        fut = fog.submit("rgbcnn", mid, entry.model_hash, timeout_s, cut=part.cut_ref(d.cut))
        # on failure: part.finish_locally(d.cut, mid) runs the tail here (never drop the input)

Neurosurgeon's baseline is the same argmin on *predicted* head/tail times:
``part.decision_inputs(..., predicted=True)`` after :meth:`Partitioner.fit_neurosurgeon` (or
with a stored ``neurosurgeon`` block from ``edged profile --layers --predict``).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from edged.models import ModelEntry
from edged.partition import ALL_FOG, ALL_LOCAL
from edged.partition.policy import CutCost, PartitionInputs
from edged.partition.split import PartitionedModel


def fog_tail_times(ping_models: Mapping[str, Any], model: str) -> Dict[str, float]:
    """Cut -> the fog's tail time (µs) from a ping reply's ``models``; all-fog is the model's ``t_f_us``."""
    info = ping_models.get(model) or {}
    out: Dict[str, float] = {}
    for cut, v in (info.get("cuts") or {}).items():
        t = v.get("t_tail_us") if isinstance(v, dict) else None
        if isinstance(t, (int, float)):
            out[str(cut)] = float(t)
    if isinstance(info.get("t_f_us"), (int, float)):
        out[ALL_FOG] = float(info["t_f_us"])
    return out


class Partitioner:
    """One model's usable cuts with the device's head times (``edged profile --layers``), for the policy.

    Args:
        entry: the catalogue entry (ONNX, one data input, no state).
        profile: the stored :class:`~edged.profile.Profile` (its ``cuts`` rows give head times), or None.
        threads: intra-op threads of the head sessions (and the profile entry looked up).
        head_field: which measured head time to use: ``head_p50_us`` (default) or ``head_wcet_us``.
    """

    def __init__(self, entry: ModelEntry, profile: Any = None, threads: int = 1,
                 head_field: str = "head_p50_us", pm: Optional[PartitionedModel] = None) -> None:
        self.entry = entry
        self.pm = pm if pm is not None else PartitionedModel(entry, threads=threads)
        rows = profile.cut_times(entry.name, "onnx", threads) if profile is not None else {}
        self.head_us: Dict[str, float] = {}
        for c in self.pm.cuts:
            r = rows.get(c.name)
            if r is not None and isinstance(r.get(head_field), (int, float)):
                self.head_us[c.name] = float(r[head_field])
        if ALL_LOCAL not in self.head_us and profile is not None:
            w = profile.wcet_us(entry.name, "onnx", threads) if head_field == "head_wcet_us" else \
                profile.p50_us(entry.name, "onnx", threads)
            if w is not None:
                self.head_us[ALL_LOCAL] = float(w)
        self.head_us[ALL_FOG] = 0.0
        self.predicted: Dict[str, Dict[str, float]] = {}
        out = self.pm.plan.cuts[-1]
        self.out_bytes = int(out.bytes or 0)

    @property
    def cuts(self) -> list:
        return self.pm.cuts

    def cut_ref(self, cut: str) -> Tuple[str, str]:
        """``(name, tail hash)``: what :meth:`ZmqFogBackend.submit`'s ``cut`` takes."""
        c = self.pm.cut(cut)
        return c.name, c.tail_hash

    def head(self, cut: str, x: Any) -> np.ndarray:
        """The intermediate tensor of one sample (canonical layout in), batch axis dropped: what is sent."""
        mid = self.pm.head(cut, x)
        return mid[0] if mid.shape[0] == 1 else mid

    def finish_locally(self, cut: str, mid: Any) -> Dict[str, np.ndarray]:
        """Run the tail here (the fog failed after the head ran): every output by name, batch axis first."""
        return self.pm.tail(cut, mid)

    def fit_neurosurgeon(self, latency_model: Any = None, fog_latency_model: Any = None) -> Dict[str, Dict[str, float]]:
        """Predicted head (device model) and tail (fog model, default the same) per cut, from layers only."""
        from edged.partition import neurosurgeon as ns

        lm = latency_model or ns.fit_on_device()
        dev = ns.predict_cuts(self.pm.plan, lm, self.pm.cut_names)
        fog = ns.predict_cuts(self.pm.plan, fog_latency_model, self.pm.cut_names) if fog_latency_model else dev
        self.predicted = {c: {"head_us": dev[c]["head_us"], "tail_us": fog[c]["tail_us"]} for c in dev}
        return self.predicted

    def decision_inputs(self, *, t_l_base_us: Optional[float], t_l_us_per_byte: Optional[float],
                        fog_tail_us: Mapping[str, float], fog_queue_us: float = 0.0, fog_up: bool = True,
                        local_queue_us: float = 0.0, deadline_us: Optional[float] = None,
                        objective: str = "latency", p_active_w: Optional[float] = None,
                        p_idle_w: Optional[float] = None, p_radio_w: Optional[float] = None,
                        predicted: bool = False, digits: int = 1) -> PartitionInputs:
        """:class:`PartitionInputs` for :func:`~edged.partition.policy.choose_cut`, rounded to ``digits`` so a
        replay from the record is exact. ``predicted``: head and tail from the Neurosurgeon regression
        (:meth:`fit_neurosurgeon`) instead of the measured head times and the fog's reported tails."""
        def r(v: Optional[float]) -> Optional[float]:
            return None if v is None else round(float(v), digits)

        costs = []
        for c in self.pm.cuts:
            if predicted:
                p = self.predicted.get(c.name, {})
                head, tail = p.get("head_us"), p.get("tail_us")
                if c.name == ALL_FOG:
                    head = 0.0
                if c.name == ALL_LOCAL:
                    tail = 0.0
            else:
                head = self.head_us.get(c.name)
                tail = 0.0 if c.name == ALL_LOCAL else fog_tail_us.get(c.name)
            if c.name == ALL_LOCAL:
                costs.append(CutCost.local(c.k, r(head)))
            else:
                costs.append(CutCost(c.name, c.k, r(head), r(tail), int(c.bytes or 0)))
        return PartitionInputs(tuple(costs), t_l_base_us=r(t_l_base_us),
                               t_l_us_per_byte=None if t_l_us_per_byte is None else round(float(t_l_us_per_byte), 6),
                               out_bytes=self.out_bytes, fog_queue_us=r(fog_queue_us) or 0.0, fog_up=fog_up,
                               local_queue_us=r(local_queue_us) or 0.0, deadline_us=r(deadline_us),
                               objective=objective, p_active_w=p_active_w, p_idle_w=p_idle_w, p_radio_w=p_radio_w)
