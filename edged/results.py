"""What a model's outputs mean: compact, task-aware summaries, and recurrent state per sender.

:func:`summarize` turns the outputs of one input into a small JSON-able dict,
one entry per output, chosen by the output's manifest ``kind``:

- ``probabilities`` / ``logits`` (classifiers): ``{"label", "name", "score", "top"}``;
  logits are soft-maxed for the score. The only place an argmax is taken.
- ``regression``: ``{"values": [...], "n": count}`` (rounded, at most
  :data:`MAX_VALUES` values).
- ``tensor`` (boxes, masks, embeddings, ...): ``{"shape", "dtype", "min", "max", "mean"}``.
- ``state``: not summarised; it is fed back through :class:`StateStore`.

:class:`StateStore` keeps the recurrent state of stateful models (a VAD's
hidden state, say) per (sender, model): the ``state`` output of one call is fed
back as its ``state_input`` on that sender's next call. It is bounded (LRU) and
thread-safe. A stateful model must see each sender's inputs in order (one at
a time per sender, whether it runs locally or offloaded); :meth:`StateStore.stack`
and :meth:`StateStore.update_rows` serve a micro-batch of distinct senders.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from edged.models import ModelEntry, ModelOutput

#: At most this many values of a regression output go into a summary.
MAX_VALUES = 16
#: Significant digits kept for scores and values.
DIGITS = 6


#: Vectors up to this size are summarised in plain Python (cheaper than numpy's per-call overhead).
SMALL = 64


def _num(v: Any) -> Optional[float]:
    """A float for JSON: rounded to :data:`DIGITS` significant digits; NaN/inf become None."""
    f = float(v)
    if not math.isfinite(f):
        return None
    return float(f"{f:.{DIGITS}g}")


_SCALE = 10.0 ** DIGITS
_floor = math.floor


def _round_score(f: float) -> float:
    """``f`` (finite) to :data:`DIGITS` decimals, half up: the double nearest ``k / 10**DIGITS``, which JSON
    prints as exactly those digits. Four float operations instead of ``round``'s decimal conversion (~3x
    faster); it can differ from ``round`` only on a value within one ulp of a half-way point."""
    return _floor(f * _SCALE + 0.5) / _SCALE


def _score(f: float) -> Optional[float]:
    """A probability for JSON: rounded to :data:`DIGITS` decimals; NaN becomes None."""
    return _round_score(f) if math.isfinite(f) else None


def _one_sample(arr: np.ndarray, out: ModelOutput) -> np.ndarray:
    """Drop a leading batch axis of size 1 (declared shapes include the batch)."""
    if arr.ndim >= 1 and arr.shape[0] == 1 and (out.shape is None or arr.ndim == len(out.shape) or arr.ndim > 1):
        return arr[0]
    return arr


def summarize_classifier(arr: np.ndarray, out: ModelOutput) -> Dict[str, Any]:
    """{"label": int, "name": str|None, "score": float, "top": [[label, score], ...]} of one sample."""
    v = arr if arr.ndim == 1 else np.asarray(arr).reshape(-1)
    n = int(v.size)
    if n == 0:
        return {"label": None, "name": None, "score": None, "top": []}
    k = min(out.top_k, n)
    if n <= SMALL:
        vals: List[float] = v.tolist()
        if out.kind == "logits":
            m = max(vals)
            ex = [math.exp(z - m) for z in vals]
            total = sum(ex)
            vals = [e / total for e in ex]
        if k == 1:
            top_idx = [max(range(n), key=vals.__getitem__)]
        else:  # stable: ties keep the lower class index first
            top_idx = sorted(range(n), key=vals.__getitem__, reverse=True)[:k]
        top_vals = [vals[i] for i in top_idx]
        if all(map(math.isfinite, top_vals)):  # the common case: no _score() call per value
            label = top_idx[0]
            labels = out.labels
            return {"label": label, "name": labels[label] if label < len(labels) else None,
                    "score": _round_score(top_vals[0]),
                    "top": [[i, _round_score(s)] for i, s in zip(top_idx, top_vals)]}
    else:
        if out.kind == "logits":
            e = np.exp(v.astype(np.float64) - float(v.max()))
            v = e / e.sum()
        if k == 1:
            top_idx = [int(v.argmax())]
        else:
            part = np.argpartition(-v, k - 1)[:k]
            top_idx = [int(i) for i in part[np.argsort(-v[part], kind="stable")]]
        top_vals = v[top_idx].tolist()
    label = top_idx[0]
    labels = out.labels
    return {
        "label": label,
        "name": labels[label] if label < len(labels) else None,
        "score": _score(top_vals[0]),
        "top": [[i, _score(s)] for i, s in zip(top_idx, top_vals)],
    }


def summarize_classifier_rows(rows: np.ndarray, out: ModelOutput) -> List[Dict[str, Any]]:
    """:func:`summarize_classifier` of every row of a batch (``rows``: one sample per row), in a few numpy
    calls instead of a Python pass per row; the same dicts, value for value (``probabilities`` outputs; a
    ``logits`` output, a non-finite score or an empty row takes the per-row path)."""
    n = len(rows)
    flat = rows.reshape(n, -1) if rows.ndim != 2 else rows
    c = flat.shape[1] if n else 0
    if out.kind != "probabilities" or c == 0 or not np.isfinite(flat).all():
        return [summarize_classifier(r, out) for r in flat]
    k = min(out.top_k, c)
    # k == 1: the first maximum; else stable on the negated scores (ties keep the lower class index first),
    # as the per-row path
    top = flat.argmax(axis=1)[:, np.newaxis] if k == 1 else np.argsort(-flat, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(flat, top, axis=1).tolist()
    labels = out.labels
    nl = len(labels)
    res = []
    for idx, vs in zip(top.tolist(), vals):
        label = idx[0]
        score = _round_score(vs[0])
        res.append({"label": label, "name": labels[label] if label < nl else None, "score": score,
                    "top": [[i, _round_score(v)] for i, v in zip(idx, vs)]})
    return res


def summarize_regression(arr: np.ndarray, out: ModelOutput) -> Dict[str, Any]:
    """{"values": [...] (at most MAX_VALUES, rounded), "n": number of values} of one sample."""
    v = np.asarray(arr).reshape(-1)
    return {"values": [_num(x) for x in v[:MAX_VALUES].tolist()], "n": int(v.size)}


def summarize_tensor(arr: np.ndarray, out: Optional[ModelOutput] = None) -> Dict[str, Any]:
    """{"shape", "dtype", "min", "max", "mean"} of one sample's tensor (statistics None when empty)."""
    a = np.asarray(arr)
    s: Dict[str, Any] = {"shape": list(a.shape), "dtype": a.dtype.name}
    if a.size == 0 or a.dtype.kind not in "biuf":
        s.update(min=None, max=None, mean=None)
    elif a.size <= SMALL:
        vals = a.reshape(-1).tolist()
        s.update(min=_num(min(vals)), max=_num(max(vals)), mean=_num(math.fsum(vals) / len(vals)))
    else:
        s.update(min=_num(a.min()), max=_num(a.max()), mean=_num(a.mean(dtype=np.float64)))
    return s


def summarize_output(arr: np.ndarray, out: ModelOutput) -> Optional[Dict[str, Any]]:
    """The summary of one output of one sample by its kind; None for a state output."""
    if out.kind == "state":
        return None
    a = _one_sample(np.asarray(arr), out)
    if out.kind in ("probabilities", "logits"):
        return summarize_classifier(a, out)
    if out.kind == "regression":
        return summarize_regression(a, out)
    return summarize_tensor(a, out)


def summarize(entry: ModelEntry, outputs: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """Summaries of one input's outputs: output name -> summary (state outputs left out).

    ``outputs`` is what :meth:`edged.models.LoadedModel.run` returned for one
    sample (a leading batch axis of 1 is dropped) or one row of a batch.
    Outputs the manifest does not declare are summarised as tensors; declared
    outputs missing from ``outputs`` are skipped. Everything is JSON-able.
    """
    res: Dict[str, Any] = {}
    seen = 0
    for o in entry.outputs:
        arr = outputs.get(o.name)
        if arr is None:
            continue
        seen += 1
        if o.kind != "state":
            res[o.name] = summarize_output(arr, o)
    if len(outputs) > seen:
        from edged.models import ModelOutput

        declared = {o.name for o in entry.outputs}
        for name, arr in outputs.items():
            if name not in declared:
                res[name] = summarize_tensor(_one_sample(np.asarray(arr), ModelOutput(name, "tensor")))
    return res


def primary_summary(entry: ModelEntry, summary: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The first classifier's summary, if the model has one (what a one-line reply like ``mlp:1,0.998`` shows)."""
    for o in entry.outputs:
        if o.is_classifier and o.name in summary:
            s = summary[o.name]
            return dict(s) if isinstance(s, Mapping) else None
    return None


def split_batch(outputs: Mapping[str, np.ndarray], i: int) -> Dict[str, np.ndarray]:
    """Row ``i`` of every output of a batch (keeping a batch axis of 1), to summarise one input of a batch."""
    return {k: v[i : i + 1] if v.ndim and v.shape[0] > i else v for k, v in outputs.items()}


# --------------------------------------------------------------------------- recurrent state


class StateStore:
    """Recurrent state per (sender, model), bounded LRU, thread-safe.

    Per call: ``feeds = store.feeds(sender, entry, feeds)`` adds the sender's
    current state inputs (its initial state on a first call, or after
    eviction/reset); after inference ``store.update(sender, entry, outputs)``
    keeps each ``state`` output as the state input it feeds. A sender that sends
    a state input itself overrides the stored one for that call (that is how a
    fog node runs an offloaded input with the edge's state). Stored arrays are
    the outputs as the model returned them (batch axis of 1) and are never
    mutated in place.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError(f"StateStore max_entries is {max_entries}, expected >= 1")
        self.max_entries = int(max_entries)
        self._lock = threading.Lock()
        self._state: OrderedDict[Tuple[str, str], Dict[str, np.ndarray]] = OrderedDict()
        #: number of (sender, model) states dropped to stay within max_entries
        self.evictions = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._state)

    def get(self, sender: str, entry: ModelEntry) -> Dict[str, np.ndarray]:
        """The state inputs for ``sender``'s next call of ``entry`` (initial values if none is stored)."""
        key = (str(sender), entry.name)
        with self._lock:
            cur = self._state.get(key)
            if cur is not None:
                self._state.move_to_end(key)
                return dict(cur)
        return {i.name: i.initial_value(1) for i in entry.state_inputs}

    def feeds(self, sender: str, entry: ModelEntry, feeds: Mapping[str, Any]) -> Dict[str, Any]:
        """``feeds`` plus the sender's state inputs that ``feeds`` does not give itself."""
        out = dict(feeds)
        if entry.stateful:
            for name, arr in self.get(sender, entry).items():
                out.setdefault(name, arr)
        return out

    def update(self, sender: str, entry: ModelEntry, outputs: Mapping[str, np.ndarray]) -> None:
        """Keep the state outputs of ``sender``'s call as its next state inputs."""
        new = {o.state_input: outputs[o.name] for o in entry.state_outputs if o.name in outputs and o.state_input}
        if not new:
            return
        key = (str(sender), entry.name)
        with self._lock:
            cur = self._state.get(key, {})
            cur = {**cur, **new}
            self._state[key] = cur
            self._state.move_to_end(key)
            while len(self._state) > self.max_entries:
                self._state.popitem(last=False)
                self.evictions += 1

    def stack(self, senders: Sequence[str], entry: ModelEntry) -> Dict[str, np.ndarray]:
        """The state inputs of a micro-batch: row i is ``senders[i]``'s state (batch axis 0).

        A sender may appear once per batch only: its second input needs the first one's new state.
        """
        if len(set(senders)) != len(senders):
            raise ValueError("StateStore.stack: a sender appears twice in one batch; run its inputs in order")
        rows = [self.get(s, entry) for s in senders]
        return {i.name: np.concatenate([r[i.name] for r in rows], axis=0) for i in entry.state_inputs}

    def update_rows(self, senders: Sequence[str], entry: ModelEntry, outputs: Mapping[str, np.ndarray]) -> None:
        """Keep row i of a micro-batch's state outputs as ``senders[i]``'s next state."""
        for k, s in enumerate(senders):
            self.update(s, entry, {o.name: outputs[o.name][k : k + 1] for o in entry.state_outputs
                                   if o.name in outputs})

    def reset(self, sender: Optional[str] = None, model: Optional[str] = None) -> int:
        """Forget the state of one sender and/or model (all if both None); returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._state if (sender is None or k[0] == sender) and (model is None or k[1] == model)]
            for k in keys:
                del self._state[k]
            return len(keys)

    def stats(self) -> Dict[str, int]:
        with self._lock:
            return {"entries": len(self._state), "max_entries": self.max_entries, "evictions": self.evictions}
