"""Turn wire data into a validated :class:`Sample`, or a rejection reason.

Validation is the same for every transport and runs in one documented order
(``docs/protocol.md`` section 4): header (size, nesting, JSON object), ``model``,
``sender``, ``seq``, ``ts``, ``deadline_ms``, metadata, ``dtype``; then the body
(``shape`` and size, values, finite). Every limit is inclusive. A failure raises
:class:`~edged.sources.framing.FrameError` with a stable reason string:
``bad_header``, ``unknown_model``, ``bad_sender``, ``bad_number``, ``bad_meta``,
``dtype_mismatch``, ``wrong_size``, ``bad_values``, ``non_finite``, ``unparsable``.
Nothing else escapes these functions for any input a sender can produce.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from edged.runtime.base import TensorSpec
from edged.sources.framing import FrameError
from edged.sources.sample import Sample

#: Header keys edged interprets; everything else goes to ``Sample.meta``.
KNOWN_HEADER_KEYS = frozenset({"model", "seq", "ts", "dtype", "shape", "deadline_ms", "sender"})
_NOT_META = KNOWN_HEADER_KEYS | {"data"}
#: Longest ``sender``, in UTF-8 bytes (inclusive).
MAX_SENDER_BYTES = 128
#: Largest ``seq`` (inclusive): a signed 64-bit integer.
MAX_SEQ = 2**63 - 1
#: Metadata bounds (all inclusive): keys per header, bytes per key, bytes per string value.
MAX_META_KEYS = 16
MAX_META_KEY_BYTES = 64
MAX_META_VALUE_BYTES = 256
#: Integer metadata values must fit a signed 64-bit integer.
_MAX_META_INT = 2**63 - 1

_Shape = Tuple[int, ...]


def show(value: Any, limit: int = 60) -> str:
    """A short, safe description of a sender's value for a log line (never huge, never raises)."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "") + \
            (f" ({len(value)} chars)" if len(value) > limit else "")
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return f"a JSON array of {len(value)}"
    if isinstance(value, dict):
        return f"a JSON object of {len(value)} key(s)"
    return f"a {type(value).__name__}"


class HeaderInfo:
    """The checked fields of one header (see :func:`check_header`)."""

    __slots__ = ("model", "spec", "sender", "seq", "ts", "deadline_ms", "meta")

    def __init__(self, model: str, spec: TensorSpec, sender: Optional[str], seq: Optional[int],
                 ts: Optional[float], deadline_ms: Optional[float], meta: Dict[str, Any]) -> None:
        self.model = model
        self.spec = spec
        self.sender = sender
        self.seq = seq
        self.ts = ts
        self.deadline_ms = deadline_ms
        self.meta = meta


def known_model(specs: Mapping[str, TensorSpec], model: Any) -> TensorSpec:
    """Return the spec of ``model`` or raise ``unknown_model`` / ``bad_header``."""
    if not isinstance(model, str) or not model:
        raise FrameError("bad_header", f"'model' must be a non-empty string, got {show(model)}")
    spec = specs.get(model)
    if spec is None:
        raise FrameError("unknown_model", f"model {show(model)} is not one of {sorted(specs)}")
    return spec


def header_sender(header: Mapping[str, Any]) -> Optional[str]:
    """The header's ``sender`` (None if absent or empty); ``bad_sender`` unless a string of at most
    :data:`MAX_SENDER_BYTES` UTF-8 bytes."""
    sender = header.get("sender")
    if sender is None:
        return None
    if not isinstance(sender, str):
        raise FrameError("bad_sender", f"'sender' must be a string, got {show(sender)}")
    try:
        n = len(sender.encode("utf-8"))
    except UnicodeEncodeError:
        raise FrameError("bad_sender", f"'sender' {show(sender)} is not valid Unicode (lone surrogate)") from None
    if n > MAX_SENDER_BYTES:
        raise FrameError("bad_sender", f"'sender' of {n} bytes; limit {MAX_SENDER_BYTES}")
    return sender or None


def header_seq(header: Mapping[str, Any]) -> Optional[int]:
    """The sender's ``seq`` or None if absent; ``bad_header`` if not an int >= 0, ``bad_number`` above
    :data:`MAX_SEQ`."""
    seq = header.get("seq")
    if seq is None:
        return None
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise FrameError("bad_header", f"'seq' must be a non-negative int, got {show(seq)}")
    if seq > MAX_SEQ:
        raise FrameError("bad_number", f"'seq' is {show(seq)}; limit {MAX_SEQ} (2**63 - 1)")
    return seq


def header_number(header: Mapping[str, Any], key: str) -> Optional[float]:
    """An optional numeric field (``ts``, ``deadline_ms``) as a float: ``bad_header`` if not a number,
    ``bad_number`` if NaN, infinite or too large for a float."""
    value = header.get(key)
    if value is None:
        return None
    if type(value) is float:
        if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
            return value
        raise FrameError("bad_number", f"'{key}' must be finite, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FrameError("bad_header", f"'{key}' must be a number, got {show(value)}")
    try:
        out = float(value)
    except OverflowError:
        raise FrameError("bad_number", f"'{key}' is {show(value)}: too large for a float") from None
    if not math.isfinite(out):
        raise FrameError("bad_number", f"'{key}' must be finite, got {value!r}")
    return out


def _meta_value_problem(value: Any) -> Optional[str]:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -_MAX_META_INT <= value <= _MAX_META_INT else "an integer beyond 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else "not finite"
    if isinstance(value, str):
        try:
            n = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return "not valid Unicode (lone surrogate)"
        return None if n <= MAX_META_VALUE_BYTES else f"a string of {n} bytes (limit {MAX_META_VALUE_BYTES})"
    return f"{show(value)}, not a JSON scalar (string, number, true/false, null)"


def header_meta(header: Mapping[str, Any], strict: bool = True) -> Dict[str, Any]:
    """The header keys edged does not interpret, checked against the metadata bounds.

    ``strict`` raises ``bad_meta`` on the first key over a bound; otherwise such keys are
    left out (used to describe a rejected input without failing again).
    """
    if header.keys() <= _NOT_META:
        return {}
    meta: Dict[str, Any] = {}
    n = 0
    for key, value in header.items():
        if key in _NOT_META:
            continue
        n += 1
        if n > MAX_META_KEYS:
            if strict:
                extra = len(header.keys() - _NOT_META)
                raise FrameError("bad_meta", f"{extra} metadata keys; limit {MAX_META_KEYS}")
            break
        try:
            kbytes = len(key.encode("utf-8"))
            kproblem = None if kbytes <= MAX_META_KEY_BYTES else f"{kbytes} bytes (limit {MAX_META_KEY_BYTES})"
        except UnicodeEncodeError:
            kproblem = "not valid Unicode"
        problem = f"key {show(key, 30)} is {kproblem}" if kproblem else None
        if problem is None:
            vproblem = _meta_value_problem(value)
            problem = f"value of {show(key, 30)} is {vproblem}" if vproblem else None
        if problem is not None:
            if strict:
                raise FrameError("bad_meta", f"metadata {problem}")
            continue
        meta[key] = value
    return meta


#: (header dtype name, model dtype) -> None if they agree, else the reason; bounded cache.
_DTYPE_VERDICTS: Dict[Tuple[str, str], Optional[str]] = {}
_MAX_DTYPE_VERDICTS = 256


def _dtype_problem(name: str, model_dtype: str) -> Optional[str]:
    if len(name) > 32:
        return f"{show(name, 32)} is not a numpy dtype name"
    if name[:1] in (">", "!"):
        return (f"{name!r} is big-endian, but the payload is little-endian by protocol "
                f"(name it '<{np.dtype(model_dtype).str[1:]}' or '{model_dtype}')")
    try:
        dt = np.dtype(name)
    except Exception:  # TypeError, ValueError, a DeprecationWarning turned error...
        return f"{name!r} is not a numpy dtype name"
    want = np.dtype(model_dtype)
    if dt.fields is not None or dt.subdtype is not None or dt.kind != want.kind or dt.itemsize != want.itemsize:
        return f"header says {name!r} ({dt.kind}{dt.itemsize}), not the model's {model_dtype}"
    return None


def check_dtype(spec: TensorSpec, model: str, name: Any) -> None:
    """``dtype`` absent or naming the model's dtype in little-endian order ("float32", "f4", "<f4", "=f4").

    A big-endian name (">f4") is ``dtype_mismatch``: edged never swaps bytes silently.
    """
    if name is None or name == spec.dtype:
        return
    if not isinstance(name, str):
        raise FrameError("bad_header", f"'dtype' must be a string, got {show(name)}")
    key = (name, spec.dtype)
    if key in _DTYPE_VERDICTS:
        problem = _DTYPE_VERDICTS[key]
    else:
        problem = _dtype_problem(name, spec.dtype)
        if len(_DTYPE_VERDICTS) < _MAX_DTYPE_VERDICTS:
            _DTYPE_VERDICTS[key] = problem
    if problem is not None:
        raise FrameError("dtype_mismatch", f"model {model!r} takes {spec.dtype}: {problem}")


def check_header(specs: Mapping[str, TensorSpec], header: Mapping[str, Any]) -> HeaderInfo:
    """Check a parsed header in protocol order: model, sender, seq, ts, deadline_ms, metadata, dtype."""
    model = header.get("model")
    spec = known_model(specs, model)
    assert isinstance(model, str)
    sender = header_sender(header)
    seq = header_seq(header)
    ts = header_number(header, "ts")
    deadline = header_number(header, "deadline_ms")
    meta = header_meta(header)
    check_dtype(spec, model, header.get("dtype"))
    return HeaderInfo(model, spec, sender, seq, ts, deadline, meta)


def describe_rejected(specs: Mapping[str, TensorSpec], header: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """What can safely be said about a refused input's header, never raising.

    Returns ``model`` (only if in ``specs``), ``sender``, ``seq``, ``sender_ts`` (each only
    if well-formed, else None) and ``meta`` (the keys within bounds).
    """
    out: Dict[str, Any] = {"model": None, "sender": None, "seq": None, "sender_ts": None, "meta": {}}
    if not isinstance(header, Mapping):
        return out
    model = header.get("model")
    if isinstance(model, str) and model in specs:
        out["model"] = model
    for key, fn in (("sender", header_sender), ("seq", header_seq)):
        try:
            out[key] = fn(header)
        except FrameError:
            pass
    try:
        out["sender_ts"] = header_number(header, "ts")
    except FrameError:
        pass
    try:
        out["meta"] = header_meta(header, strict=False)
    except Exception:  # pragma: no cover - header_meta(strict=False) does not raise
        pass
    return out


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
        raise FrameError("bad_header", f"'shape' must be a list of positive ints, got {show(raw)}")
    dims = spec.sample_shape
    if len(raw) != len(dims) or any(d and d != r for d, r in zip(dims, raw)):
        raise FrameError("wrong_size", f"model {model!r} takes shape {tuple(dims)}, header says {show(raw)}")
    return tuple(raw)


def _check_finite(arr: np.ndarray, model: str) -> None:
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise FrameError("non_finite", f"model {model!r} input has {bad} NaN/inf value(s)")


def array_from_payload(spec: TensorSpec, model: str, header: Mapping[str, Any], payload: bytes) -> np.ndarray:
    """The binary payload (raw little-endian C-order array) as the model's input: shape and size, finite."""
    layout = _layout(spec)
    nbytes = len(payload)
    if nbytes == layout.nbytes and "shape" not in header:  # the common case: fixed-shape model, no shape field
        shape = layout.shape
    else:
        if "shape" in header:
            shape = _header_shape(spec, header["shape"], model)
        if nbytes % layout.itemsize:
            raise FrameError("wrong_size", f"payload of {nbytes} bytes is not a whole number of {spec.dtype}")
        n = nbytes // layout.itemsize
        if "shape" in header:
            if int(np.prod(shape)) != n:
                raise FrameError("wrong_size", f"header shape {shape} needs {int(np.prod(shape))} values, has {n}")
        else:
            shape = resolve_shape(spec, n, model)
    arr = np.frombuffer(payload, dtype=layout.wire)
    arr = arr.astype(layout.native) if layout.swap else arr.copy()  # own, writable, native byte order
    arr = arr.reshape(shape)
    if layout.is_float and not np.isfinite(arr).all():
        _check_finite(arr, model)
    return arr


def sample_from_payload(
    specs: Mapping[str, TensorSpec],
    header: Mapping[str, Any],
    payload: bytes,
    source: str,
    seq: int,
    t_arrival: Optional[float] = None,
) -> Sample:
    """Validate a binary input (ZeroMQ two-frame or COBS frame) into a Sample numbered ``seq``."""
    info = check_header(specs, header)
    arr = array_from_payload(info.spec, info.model, header, payload)
    return make_sample(info, seq, arr, source, t_arrival)


def make_sample(info: HeaderInfo, seq: int, arr: np.ndarray, source: str, t_arrival: Optional[float]) -> Sample:
    """The Sample for a validated array and its checked header."""
    return Sample(
        model=info.model,
        seq=seq,
        array=arr,
        source=source,
        t_arrival=time.monotonic() if t_arrival is None else t_arrival,
        sender_ts=info.ts,
        deadline_ms=info.deadline_ms,
        meta=info.meta,
        sender=info.sender,
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


def _check_numbers(values: Any, model: str) -> None:
    """``values`` must be numbers (nested lists of JSON numbers, or a numeric array): ``bad_values``
    otherwise. Strings and booleans are refused, never converted."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iuf":
            raise FrameError("bad_values", f"model {model!r}: values of dtype {values.dtype} are not numbers")
        return
    if not isinstance(values, (list, tuple)):
        raise FrameError("bad_values", f"model {model!r}: 'data' must be a list of numbers, got {show(values)}")
    stack: List[Any] = [values]
    while stack:
        for v in stack.pop():
            t = type(v)
            if t is float or t is int:
                continue
            if t is list or t is tuple:
                stack.append(v)
                continue
            if isinstance(v, (np.integer, np.floating)):
                continue
            raise FrameError("bad_values", f"model {model!r}: 'data' holds {show(v)}; only numbers are "
                                           "accepted (edged never converts strings or booleans)")


def array_from_values(spec: TensorSpec, model: str, values: Any) -> np.ndarray:
    """Validate numbers (list, nested list or array) into the model's sample shape and dtype."""
    _check_numbers(values, model)
    try:
        raw = np.asarray(values, dtype=np.float64)
    except OverflowError:
        raise FrameError("non_finite", f"model {model!r}: a value is too large for a float") from None
    except (TypeError, ValueError) as exc:  # ragged nesting
        raise FrameError("bad_values", f"values for model {model!r} are not a regular array: {exc}") from None
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
    if target == raw.dtype:
        return raw
    with np.errstate(over="ignore"):  # an overflow is reported as non_finite below, not as a RuntimeWarning
        arr = raw.astype(target)
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
    """Validate a text input (``lines`` framing, JSON ``data``, replay rows) into a Sample numbered ``seq``.

    With a ``header`` (one-frame JSON) the header is checked first, then ``shape`` if given.
    """
    if header is None:
        spec = known_model(specs, model)
        assert isinstance(model, str)
        info = HeaderInfo(model, spec, None, None, None, None, {})
        arr = array_from_values(spec, model, values)
    else:
        info = check_header(specs, header)
        arr = array_from_message(info, header, values)
    return make_sample(info, seq, arr, source, t_arrival)


def array_from_message(info: HeaderInfo, header: Mapping[str, Any], values: Any) -> np.ndarray:
    """The values of a one-frame JSON message (already header-checked): ``shape`` if given, then values."""
    shape = _header_shape(info.spec, header["shape"], info.model) if "shape" in header else None
    arr = array_from_values(info.spec, info.model, values)
    if shape is not None and shape != arr.shape:
        raise FrameError("wrong_size", f"header shape {shape} but 'data' holds {arr.size} values {arr.shape}")
    return arr
