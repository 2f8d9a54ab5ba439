"""Turn wire data into a validated :class:`Sample`, or a rejection reason.

Validation is the same for every transport: model known, element count
matches the model's input, dtype matches, all values finite. Failures raise
:class:`~edged.sources.framing.FrameError` with a stable reason string:
``unknown_model``, ``wrong_size``, ``dtype_mismatch``, ``non_finite``,
``bad_header``, ``unparsable``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from edged.runtime.base import TensorSpec
from edged.sources.framing import FrameError
from edged.sources.sample import Sample

#: Header keys edged interprets; everything else goes to ``Sample.meta``.
KNOWN_HEADER_KEYS = frozenset({"model", "seq", "ts", "dtype", "shape", "deadline_ms", "sender"})

_Shape = Tuple[int, ...]


def known_model(specs: Mapping[str, TensorSpec], model: Any) -> TensorSpec:
    """Return the spec of ``model`` or raise ``unknown_model`` / ``bad_header``."""
    if not isinstance(model, str) or not model:
        raise FrameError("bad_header", f"'model' must be a non-empty string, got {model!r}")
    spec = specs.get(model)
    if spec is None:
        raise FrameError("unknown_model", f"model {model!r} is not one of {sorted(specs)}")
    return spec


def resolve_shape(spec: TensorSpec, n_elements: int, model: str) -> _Shape:
    """Concrete sample shape for ``n_elements`` values (one dynamic dim may absorb the rest)."""
    dims = spec.sample_shape
    fixed = 1
    dynamic = [i for i, d in enumerate(dims) if not d]
    for d in dims:
        fixed *= d if d else 1
    if not dynamic:
        if n_elements != fixed:
            raise FrameError("wrong_size", f"model {model!r} takes {fixed} values {tuple(dims)}, got {n_elements}")
        return tuple(int(d) for d in dims if d)
    if len(dynamic) > 1 or fixed == 0 or n_elements % fixed or n_elements == 0:
        raise FrameError("wrong_size", f"model {model!r} input {tuple(dims)} cannot hold {n_elements} values")
    return tuple(int(d) if d else n_elements // fixed for d in dims)


def _header_shape(spec: TensorSpec, raw: Any, model: str) -> _Shape:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in raw):
        raise FrameError("bad_header", f"'shape' must be a list of positive ints, got {raw!r}")
    dims = spec.sample_shape
    if len(raw) != len(dims) or any(d and d != r for d, r in zip(dims, raw)):
        raise FrameError("wrong_size", f"model {model!r} takes shape {tuple(dims)}, header says {tuple(raw)}")
    return tuple(raw)


def _optional_number(header: Mapping[str, Any], key: str) -> Optional[float]:
    value = header.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FrameError("bad_header", f"'{key}' must be a finite number, got {value!r}")
    return float(value)


def header_seq(header: Mapping[str, Any]) -> Optional[int]:
    """The sender's ``seq`` (non-negative int) or None if absent; ``bad_header`` otherwise."""
    seq = header.get("seq")
    if seq is None:
        return None
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise FrameError("bad_header", f"'seq' must be a non-negative int, got {seq!r}")
    return seq


def _check_finite(arr: np.ndarray, model: str) -> None:
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise FrameError("non_finite", f"model {model!r} input has {bad} NaN/inf value(s)")


def sample_from_payload(
    specs: Mapping[str, TensorSpec],
    header: Mapping[str, Any],
    payload: bytes,
    source: str,
    seq: int,
    t_arrival: Optional[float] = None,
) -> Sample:
    """Validate a binary input (ZeroMQ two-frame or COBS frame) into a Sample.

    ``payload`` is the raw little-endian C-order array; ``header`` the parsed
    JSON header; ``seq`` the sequence number to use (the header's, or a
    source-local counter when the sender sent none).
    """
    model = header.get("model")
    spec = specs.get(model) if isinstance(model, str) else None
    if spec is None:
        spec = known_model(specs, model)
    assert isinstance(model, str)
    layout = _layout(spec)
    dtype_name = header.get("dtype")
    if dtype_name is not None and dtype_name != spec.dtype:
        if not isinstance(dtype_name, str):
            raise FrameError("bad_header", f"'dtype' must be a string, got {dtype_name!r}")
        raise FrameError("dtype_mismatch", f"model {model!r} takes {spec.dtype}, header says {dtype_name!r}")
    nbytes = len(payload)
    if nbytes == layout.nbytes and "shape" not in header:  # the common case: fixed-shape model, no shape field
        shape = layout.shape
    else:
        if nbytes % layout.itemsize:
            raise FrameError("wrong_size", f"payload of {nbytes} bytes is not a whole number of {spec.dtype}")
        n = nbytes // layout.itemsize
        if "shape" in header:
            shape = _header_shape(spec, header["shape"], model)
            if int(np.prod(shape)) != n:
                raise FrameError("wrong_size", f"header shape {shape} needs {int(np.prod(shape))} values, has {n}")
        else:
            shape = resolve_shape(spec, n, model)
    arr = np.frombuffer(payload, dtype=layout.wire)
    arr = arr.astype(layout.native) if layout.swap else arr.copy()  # own, writable, native byte order
    arr = arr.reshape(shape)
    if layout.is_float and not np.isfinite(arr).all():
        _check_finite(arr, model)
    return _sample(model, seq, arr, source, header, t_arrival)


def _sample(model: str, seq: int, arr: np.ndarray, source: str, header: Mapping[str, Any],
            t_arrival: Optional[float]) -> Sample:
    """The Sample for a validated array: sender time, deadline and the header fields edged does not
    interpret (kept in ``meta``; ``sender`` is kept too, it also keys the sequence-gap counters)."""
    sender_ts = header.get("ts")
    if sender_ts is not None and (type(sender_ts) is not float or not math.isfinite(sender_ts)):
        sender_ts = _optional_number(header, "ts")  # validates (raises bad_header) or converts an int
    deadline = _optional_number(header, "deadline_ms") if "deadline_ms" in header else None
    extra = header.keys() - KNOWN_HEADER_KEYS - {"data"}
    meta = {k: header[k] for k in extra} if extra else {}
    if "sender" in header:
        meta["sender"] = header["sender"]
    return Sample(
        model=model,
        seq=seq,
        array=arr,
        source=source,
        t_arrival=time.monotonic() if t_arrival is None else t_arrival,
        sender_ts=sender_ts,
        deadline_ms=deadline,
        meta=meta,
    )


class _Layout:
    """Precomputed wire facts of one input spec (cached: the hot path must not recompute them)."""

    def __init__(self, spec: TensorSpec) -> None:
        self.native = np.dtype(spec.dtype)
        self.wire = self.native.newbyteorder("<")
        self.swap = self.wire != self.native  # only on big-endian hosts
        self.itemsize = self.native.itemsize
        dims = spec.sample_shape
        self.fixed = all(dims)
        self.shape: _Shape = tuple(int(d or 0) for d in dims) if self.fixed else ()
        self.nbytes = int(np.prod(self.shape)) * self.itemsize if self.fixed else -1
        self.is_float = self.native.kind in "fc"


_LAYOUTS: Dict[TensorSpec, _Layout] = {}


def _layout(spec: TensorSpec) -> _Layout:
    """Cached :class:`_Layout` of ``spec`` (shared with the ZeroMQ burst fast path)."""
    layout = _LAYOUTS.get(spec)
    if layout is None:
        layout = _LAYOUTS[spec] = _Layout(spec)
    return layout


def array_from_values(spec: TensorSpec, model: str, values: Any) -> np.ndarray:
    """Validate numbers (list, nested list or array) into the model's sample shape and dtype."""
    try:
        raw = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FrameError("unparsable", f"values for model {model!r} are not numbers: {exc}") from None
    shape = resolve_shape(spec, int(raw.size), model)
    raw = raw.reshape(shape)
    _check_finite(raw, model)
    target = np.dtype(spec.dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        if not np.array_equal(raw, np.round(raw)) or raw.min() < info.min or raw.max() > info.max:
            raise FrameError("dtype_mismatch", f"model {model!r} takes {spec.dtype}; values are not all in range ints")
        return raw.astype(target)
    if target.kind == "b":
        return raw.astype(target)
    arr = raw.astype(target)
    if target != raw.dtype:
        _check_finite(arr, model)  # e.g. 1e39 overflows float32 to inf
    return arr


def sample_from_values(
    specs: Mapping[str, TensorSpec],
    model: Any,
    values: Any,
    source: str,
    seq: int,
    header: Optional[Mapping[str, Any]] = None,
    t_arrival: Optional[float] = None,
) -> Sample:
    """Validate a text input (``lines`` framing, JSON ``data``, replay rows) into a Sample."""
    spec = known_model(specs, model)
    assert isinstance(model, str)
    arr = array_from_values(spec, model, values)
    return _sample(model, seq, arr, source, header or {}, t_arrival)

