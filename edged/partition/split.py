"""Head and tail sessions of an ONNX model for every usable cut, verified before use.

::

    pm = PartitionedModel(catalogue.get("cnn64"))      # builds and verifies every allowed cut
    t = pm.head("p1", x)                               # on the device: x in the canonical layout
    outs = pm.tail("p1", t)                            # on the fog: {"probs": array}, batch axis first

A cut is *usable* once head + tail reproduce the full model on the validation set (else
``VERIFY_SYNTHETIC`` seeded synthetic inputs) within ``tolerance`` (max |Δ| over every
output, default 1e-5); a cut that does not is listed in :attr:`PartitionedModel.rejected`
with the difference. A manifest's ``partition.cuts`` restricts the interior cuts offered.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from edged.models import ModelEntry, layout_permutation
from edged.partition import ALL_FOG, ALL_LOCAL
from edged.partition.graph import Cut, GraphPlan, PartitionError, analyse

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-5
VERIFY_SYNTHETIC = 64  #: seeded inputs a cut is verified on when the model ships no validation set
VERIFY_BATCH = 64


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    return ort.InferenceSession(bytes(data), sess_options=so, providers=["CPUExecutionProvider"])


class PartitionedModel:
    """Head and tail onnxruntime sessions of one catalogue model for each usable cut.

    Args:
        entry: the catalogue entry; it must have an ``onnx`` artifact with one data input.
        threads: intra-op threads per session.
        verify: check every interior cut against the full model before offering it (default True).
        tolerance: largest |Δ| allowed between head+tail and the full model.
        max_verify: verify on at most this many validation inputs (default: all of them).
        cuts: offer only these interior cuts (default: the manifest's ``partition.cuts``, else all).

    Raises:
        PartitionError: no ONNX artifact, several data inputs or state, or an unknown cut name.
        MissingDependencyError: ``onnx`` is not installed.
    """

    def __init__(self, entry: ModelEntry, threads: int = 1, verify: bool = True,
                 tolerance: float = DEFAULT_TOLERANCE, max_verify: Optional[int] = None,
                 cuts: Optional[Sequence[str]] = None) -> None:
        art = entry.artifacts.get("onnx")
        if art is None:
            raise PartitionError(f"model {entry.name!r} has no onnx artifact: only ONNX models can be partitioned "
                                 f"(it has {', '.join(entry.artifacts) or 'none'})")
        if len(entry.data_inputs) != 1 or entry.stateful:
            raise PartitionError(f"model {entry.name!r}: partitioning needs one data input and no state")
        entry.verify("onnx")
        self.entry = entry
        self.name = entry.name
        self.threads = threads
        self.tolerance = tolerance
        self.plan: GraphPlan = analyse(art.path)
        self._perm = layout_permutation(entry.input.layout, art.layout)
        self._file_in = self.plan.inputs[0].name
        self._outputs = self._map_outputs(entry, art)
        allowed = cuts if cuts is not None else entry.manifest_cuts
        interior = {c.name: c for c in self.plan.interior_cuts}
        if allowed is not None:
            unknown = [c for c in allowed if c not in interior and c not in (ALL_FOG, ALL_LOCAL)]
            if unknown:
                raise PartitionError(
                    f"model {entry.name!r}: cut(s) {', '.join(map(repr, unknown))} named in partition.cuts are not "
                    f"single-tensor cuts of {art.path.name}; its cuts are {', '.join(interior) or 'none'}")
        self.rejected: Dict[str, str] = {}
        self.deltas: Dict[str, float] = {}
        self._heads: Dict[str, Any] = {}
        self._tails: Dict[str, Any] = {}
        self._full = _session(self.plan.model, threads)
        for c in self.plan.interior_cuts:
            if allowed is not None and c.name not in allowed:
                self.rejected[c.name] = "not in the manifest's partition.cuts"
                continue
            self._heads[c.name] = _session(self.plan.head_model(c), threads)
            self._tails[c.name] = _session(self.plan.tail_model(c), threads)
        if verify:
            self.verify(max_verify)
        else:
            self.verified = False

    @staticmethod
    def _map_outputs(entry: ModelEntry, art: Any) -> List[tuple]:
        outs = [o.name for o in entry.outputs]
        return [(o, art.names.get(o, o)) for o in outs]

    # ---- what is offered ---------------------------------------------------------------------------
    @property
    def cuts(self) -> List[Cut]:
        """Usable cuts by ``k``: all-fog, verified interior cuts (allowed by the manifest), all-local."""
        return [c for c in self.plan.cuts if not c.interior or c.name in self._heads]

    @property
    def cut_names(self) -> List[str]:
        return [c.name for c in self.cuts]

    def cut(self, name: str) -> Cut:
        for c in self.cuts:
            if c.name == name:
                return c
        why = self.rejected.get(name)
        raise PartitionError(f"model {self.name!r} has no usable cut {name!r}"
                             + (f" ({why})" if why else "") + f"; usable: {', '.join(self.cut_names)}")

    def sessions(self, cut: str) -> Dict[str, Any]:
        """The raw onnxruntime sessions of ``cut``: ``{"head": (session, input name) or None, "tail": ...}``
        (all-fog's tail and all-local's head are the full model; inputs in the file's layout)."""
        c = self.cut(cut)
        full = (self._full, self._file_in)
        if c.name == ALL_FOG:
            return {"head": None, "tail": full}
        if c.name == ALL_LOCAL:
            return {"head": full, "tail": None}
        return {"head": (self._heads[c.name], self._file_in), "tail": (self._tails[c.name], c.tensor)}

    # ---- running -----------------------------------------------------------------------------------
    def to_file_layout(self, x: Any) -> np.ndarray:
        """A sample or batch in the manifest's canonical layout -> a batch in the file's layout and dtype."""
        arr = np.asarray(x, dtype=np.dtype(self.entry.input.dtype))
        if arr.ndim == len(self.entry.input.sample_shape):
            arr = arr[np.newaxis]
        if self._perm is not None:
            arr = arr.transpose(self._perm)
        return np.ascontiguousarray(arr)

    def head(self, cut: str, x: Any) -> np.ndarray:
        """Run the head of ``cut`` on ``x`` (canonical layout, one sample or a batch): the intermediate
        tensor, batch axis first (for :data:`ALL_FOG`, the input in the file's layout)."""
        if cut == ALL_FOG:
            return self.to_file_layout(x)
        sess = self._heads.get(cut)
        if sess is None:
            self.cut(cut)  # raises, naming the usable cuts
            raise PartitionError(f"model {self.name!r}: cut {cut!r} has no head session")
        return sess.run(None, {self._file_in: self.to_file_layout(x)})[0]

    def tail(self, cut: str, t: Any) -> Dict[str, np.ndarray]:
        """Run the tail of ``cut`` on an intermediate tensor (batch axis first, or one sample without it):
        every declared output by manifest name, batch axis first."""
        if cut == ALL_FOG:  # t is what head(ALL_FOG, x) returns: the input in the file's layout
            arr = np.asarray(t, dtype=np.dtype(self.entry.input.dtype))
            if arr.ndim == len(self.entry.input.sample_shape):
                arr = arr[np.newaxis]
            return self._named(self._full.run(None, {self._file_in: np.ascontiguousarray(arr)}), self._full)
        sess = self._tails.get(cut)
        if sess is None:
            self.cut(cut)
            raise PartitionError(f"model {self.name!r}: cut {cut!r} has no tail session")
        c = self.cut(cut)
        arr = np.asarray(t, dtype=np.dtype(c.dtype))
        if arr.ndim == len(c.shape) - 1:
            arr = arr[np.newaxis]
        if arr.ndim != len(c.shape) or any(w is not None and g != w for g, w in zip(arr.shape[1:], c.shape[1:])):
            raise PartitionError(f"model {self.name!r} cut {cut!r}: the intermediate tensor has shape "
                                 f"{list(arr.shape)}, expected {[d if d is not None else 'N' for d in c.shape]}")
        return self._named(sess.run(None, {c.tensor: np.ascontiguousarray(arr)}), sess)

    def run(self, cut: str, x: Any) -> Dict[str, np.ndarray]:
        """Head then tail in this process (what the edge and the fog compute together)."""
        if cut == ALL_LOCAL:
            return self._named(self._full.run(None, {self._file_in: self.to_file_layout(x)}), self._full)
        return self.tail(cut, self.head(cut, x))

    def _named(self, outs: Sequence[np.ndarray], sess: Any) -> Dict[str, np.ndarray]:
        names = [o.name for o in sess.get_outputs()]
        by_file = dict(zip(names, outs))
        if len(self._outputs) == 1 and len(names) == 1:
            return {self._outputs[0][0]: outs[0]}
        return {m: by_file[f] for m, f in self._outputs if f in by_file}

    # ---- verification ------------------------------------------------------------------------------
    def _verify_inputs(self, max_verify: Optional[int]) -> np.ndarray:
        try:
            x, _ = self.entry.load_validation()
        except Exception:  # no validation set: seeded synthetic inputs of the declared shape
            x = self.entry.make_feeds(seed=0, batch=VERIFY_SYNTHETIC)[self.entry.input.name]
        if max_verify is not None:
            x = x[:max_verify]
        return x

    def verify(self, max_verify: Optional[int] = None) -> Dict[str, float]:
        """Run every interior cut's head + tail against the full model; drop the cuts whose outputs differ
        by more than ``tolerance``. Returns cut -> max |Δ| (also kept in :attr:`deltas`)."""
        x = self._verify_inputs(max_verify)
        batches = [x[i:i + VERIFY_BATCH] for i in range(0, len(x), VERIFY_BATCH)]
        try:
            refs = [self._full.run(None, {self._file_in: self.to_file_layout(b)}) for b in batches]
        except Exception:  # a graph with a fixed batch of 1: one input at a time
            batches = [x[i:i + 1] for i in range(len(x))]
            refs = [self._full.run(None, {self._file_in: self.to_file_layout(b)}) for b in batches]
        t0 = time.perf_counter()
        for name in list(self._heads):
            delta = 0.0
            try:
                for b, ref in zip(batches, refs):
                    mid = self._heads[name].run(None, {self._file_in: self.to_file_layout(b)})[0]
                    outs = self._tails[name].run(None, {self.plan.get(name).tensor: mid})
                    for got, want in zip(outs, ref):
                        delta = max(delta, float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))))
            except Exception as exc:  # a cut whose sessions fail is not offered, the others still are
                self.rejected[name] = f"head+tail failed: {type(exc).__name__}: {exc}"
                del self._heads[name], self._tails[name]
                continue
            self.deltas[name] = delta
            if not delta <= self.tolerance:
                self.rejected[name] = f"head+tail differ from the full model by {delta:.3g} (> {self.tolerance:g})"
                del self._heads[name], self._tails[name]
        log.debug("partition %s: %d cuts verified on %d inputs in %.1f ms", self.name, len(self.deltas), len(x),
                  (time.perf_counter() - t0) * 1e3)
        self.verified = True
        self.verified_on = len(x)
        return dict(self.deltas)

    def describe(self) -> List[Dict[str, Any]]:
        """One dict per cut point (usable or rejected) for tables and exports."""
        usable = set(self.cut_names)
        rows = []
        for c in self.plan.cuts:
            rows.append({**c.to_dict(), "usable": c.name in usable, "max_abs_delta": self.deltas.get(c.name),
                         "why_not": self.rejected.get(c.name)})
        return rows


def cut_table(entry: ModelEntry) -> List[Cut]:
    """The cut points of ``entry``'s ONNX graph, from the graph alone (no sessions, nothing verified)."""
    art = entry.artifacts.get("onnx")
    if art is None:
        raise PartitionError(f"model {entry.name!r} has no onnx artifact")
    return analyse(art.path).cuts


def outputs_equal(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], tolerance: float = DEFAULT_TOLERANCE
                  ) -> bool:
    return set(a) == set(b) and all(float(np.max(np.abs(a[k] - b[k]))) <= tolerance for k in a)
