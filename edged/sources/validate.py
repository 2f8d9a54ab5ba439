"""Turn wire data into a validated :class:`Sample`, or a rejection reason.

Validation is the same for every transport and runs in one documented order
(``docs/protocol.md`` section 5): header (size, nesting, JSON object), ``model``,
``sender``, ``seq``, ``ts``, ``deadline_ms``, metadata, ``dtype``; then the body
(``shape`` and size, values, finite). Every limit is inclusive. A failure raises
:class:`~edged.sources.framing.FrameError` with a stable reason string:
``bad_header``, ``unknown_model``, ``bad_sender``, ``bad_number``, ``bad_meta``,
``dtype_mismatch``, ``wrong_size``, ``bad_values``, ``non_finite``, ``unparsable``,
and for wire protocol v2 (several named tensors) ``unknown_input``, ``missing_input``,
``missing_shape``. Nothing else escapes these functions for any input a sender can produce.

Models are described to the sources by a :class:`ModelContract` built from a
catalogue ``ModelEntry`` (every input: name, sample shape, dtype, state or data), a
``LoadedModel`` (the same, plus the integer dtype a quantised input also takes) or a
bare ``TensorSpec`` (one input: the v1 form, kept for tests and old callers).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edged.runtime.base import TensorSpec
from edged.sources.framing import FrameError
from edged.sources.sample import Sample

#: Header keys edged interprets; everything else goes to ``Sample.meta``.
KNOWN_HEADER_KEYS = frozenset({"model", "seq", "ts", "dtype", "shape", "deadline_ms", "sender", "tensors"})
_NOT_META = KNOWN_HEADER_KEYS | {"data", "inputs"}
#: Most tensors one v2 message may carry (``tensors`` entries, ``inputs`` keys; inclusive).
MAX_TENSORS = 64
#: Most elements one tensor may hold (inclusive): bounds a dynamic shape before any size arithmetic.
MAX_TENSOR_ELEMENTS = 1 << 24
#: Keys of one ``tensors`` entry.
TENSOR_KEYS = frozenset({"name", "dtype", "shape", "nbytes"})
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
    if "tensors" not in header and "inputs" not in header:  # v2: dtype and shape per tensor
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


def _dims_text(dims: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) if d else "?" for d in dims) + "]"


def missing_shape(spec: TensorSpec, model: str) -> FrameError:
    """``missing_shape``: a dynamic input whose shape the message does not give (says what to send)."""
    dims = spec.sample_shape
    example = [d if d else 32 for d in dims]
    return FrameError("missing_shape", f"model {model!r} input {spec.name!r} has dynamic dimensions "
                                       f"{_dims_text(dims)}: send its 'shape' (one sample, no batch axis), "
                                       f"e.g. \"shape\": {example}")


def resolve_shape(spec: TensorSpec, n_elements: int, model: str) -> _Shape:
    """Concrete sample shape for ``n_elements`` values of a fixed-shape input.

    A dynamic input's shape cannot be told from a count: ``missing_shape`` (send ``shape``).
    """
    dims = spec.sample_shape
    if not all(dims):
        raise missing_shape(spec, model)
    shape = tuple(int(d or 0) for d in dims)
    fixed = 1
    for d in shape:
        fixed *= d
    if n_elements != fixed:
        raise FrameError("wrong_size", f"model {model!r} takes {fixed} values {tuple(dims)}, got {n_elements}")
    return shape


def check_shape(spec: TensorSpec, raw: Any, model: str) -> _Shape:
    """A sender's ``shape`` (one sample, no batch axis) against the declared sample shape.

    A list of positive ints (``bad_header``) of the declared rank, equal to every fixed
    dimension, at most :data:`MAX_TENSOR_ELEMENTS` elements in all (``wrong_size``).
    """
    if not isinstance(raw, list) or len(raw) > 32 or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in raw):
        raise FrameError("bad_header", f"'shape' must be a list of positive ints, got {show(raw)}")
    dims = spec.sample_shape
    if len(raw) != len(dims) or any(d and d != r for d, r in zip(dims, raw)):
        raise FrameError("wrong_size", f"model {model!r} takes shape {_dims_text(dims)}, header says {raw}")
    n = 1
    for d in raw:
        n *= d
        if n > MAX_TENSOR_ELEMENTS:
            raise FrameError("wrong_size", f"shape {raw} holds more than {MAX_TENSOR_ELEMENTS} elements "
                                           f"(the limit per tensor)")
    return tuple(raw)


def _header_shape(spec: TensorSpec, raw: Any, model: str) -> _Shape:
    return check_shape(spec, raw, model)


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


def make_sample(info: HeaderInfo, seq: int, arr: np.ndarray, source: str, t_arrival: Optional[float],
                feeds: Optional[Dict[str, np.ndarray]] = None) -> Sample:
    """The Sample for a validated array (the primary input), its other inputs if any, and its checked header."""
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
        feeds=feeds,
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


def array_from_values(spec: TensorSpec, model: str, values: Any, shape: Optional[_Shape] = None) -> np.ndarray:
    """Validate numbers (list, nested list or array) into the model's sample shape and dtype.

    The shape is ``shape`` if given (already checked by :func:`check_shape`), else the
    declared one (any nesting of the right count), else, for a dynamic input, the nesting
    of the values themselves (``missing_shape`` if they are not nested to the input's rank).
    """
    _check_numbers(values, model)
    try:
        raw = np.asarray(values, dtype=np.float64)
    except OverflowError:
        raise FrameError("non_finite", f"model {model!r}: a value is too large for a float") from None
    except (TypeError, ValueError) as exc:  # ragged nesting
        raise FrameError("bad_values", f"values for model {model!r} are not a regular array: {exc}") from None
    if shape is not None:
        if int(np.prod(shape)) != raw.size:
            raise FrameError("wrong_size", f"shape {list(shape)} needs {int(np.prod(shape))} values, got {raw.size}")
    elif all(spec.sample_shape):
        shape = resolve_shape(spec, int(raw.size), model)
    else:
        dims = spec.sample_shape
        if raw.ndim != len(dims):
            raise missing_shape(spec, model)
        shape = check_shape(spec, [int(d) for d in raw.shape], model)
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
    shape = check_shape(info.spec, header["shape"], info.model) if "shape" in header else None
    return array_from_values(info.spec, info.model, values, shape)


# --------------------------------------------------------------------------- wire protocol v2: the model contract


class InputContract:
    """What the sources check one model input against.

    ``spec`` has a leading batch dimension, so ``spec.sample_shape`` is one sample's shape
    (also for an input the file takes without a batch axis); ``dtypes`` lists every dtype a
    sender may send (the manifest's first; a quantised input's integer type after it).
    """

    __slots__ = ("name", "spec", "state", "dtypes")

    def __init__(self, name: str, sample_shape: Sequence[Any], dtype: str, layout: str = "", state: bool = False,
                 dtypes: Sequence[str] = ()) -> None:
        self.name = name
        self.spec = TensorSpec(name, (None,) + tuple(int(d) if d else None for d in sample_shape), dtype, layout)
        self.state = state
        self.dtypes: Tuple[str, ...] = (dtype,) + tuple(d for d in dtypes if d != dtype)

    @property
    def dynamic(self) -> bool:
        return not all(self.spec.sample_shape)

    def describe(self) -> str:
        state = " (state)" if self.state else ""
        return f"{self.name!r} {self.spec.dtype} {_dims_text(self.spec.sample_shape)}{state}"


class ModelContract:
    """Every input of one catalogue model, as the sources validate a message against it.

    ``primary`` is the first data input (what ``Sample.array`` and a v1 message carry);
    ``v1`` is True when the model has exactly one data input, so a v1 message (one array)
    is complete: state inputs, if any, are kept per sender by edged.
    """

    __slots__ = ("name", "inputs", "primary", "data_names", "v1")

    def __init__(self, name: str, inputs: Sequence[InputContract], primary: str) -> None:
        self.name = name
        self.inputs: Dict[str, InputContract] = {i.name: i for i in inputs}
        self.primary = self.inputs[primary]
        self.data_names: Tuple[str, ...] = tuple(i.name for i in inputs if not i.state)
        self.v1 = len(self.data_names) == 1

    @property
    def spec(self) -> TensorSpec:
        """The primary input's spec (batch dimension first): what v1 messages are checked against."""
        return self.primary.spec

    def describe_inputs(self) -> str:
        """``'x' float32 [16], 'h' float32 [8] (state), 'sr' int64 [1]``."""
        return ", ".join(i.describe() for i in self.inputs.values())

    def state_note(self) -> str:
        states = [n for n, i in self.inputs.items() if i.state]
        if not states:
            return ""
        verb = "is" if len(states) == 1 else "are"
        return f" ({', '.join(map(repr, states))} {verb} state, kept by edged per sender)"


def model_contract(name: str, model: Any) -> ModelContract:
    """The :class:`ModelContract` of ``model``: a ``ModelEntry``, a ``LoadedModel`` (its ``entry``, plus
    ``accepted_dtypes(input)`` if it has that method), a ``TensorSpec`` (one input) or a ModelContract."""
    if isinstance(model, ModelContract):
        return model
    if isinstance(model, TensorSpec):
        return ModelContract(name, [InputContract(model.name, model.sample_shape, model.dtype, model.layout)],
                             model.name)
    entry = getattr(model, "entry", model)
    inputs = getattr(entry, "inputs", None)
    if not inputs:
        raise TypeError(f"model {name!r}: expected a ModelEntry, LoadedModel or TensorSpec, got {type(model).__name__}")
    accepted: Optional[Callable[[str], Sequence[str]]] = getattr(model, "accepted_dtypes", None)
    out = []
    for i in inputs:
        extra: Sequence[str] = ()
        if callable(accepted):
            try:
                extra = tuple(str(d) for d in accepted(i.name))
            except Exception:
                extra = ()
        out.append(InputContract(i.name, i.sample_shape, i.dtype, i.layout, bool(i.state), extra))
    return ModelContract(name, out, entry.primary_input.name)


def _in_input(name: str, err: FrameError) -> FrameError:
    """``err`` with its detail naming the input it is about."""
    err.detail = f"input {name!r}: {err.detail}"
    err.args = (f"{err.reason}: {err.detail}",)
    return err


def _tensor_dtype(inp: InputContract, model: str, raw: Any) -> str:
    """The dtype a ``tensors`` entry names, as one of the input's accepted dtypes (``dtype_mismatch`` else)."""
    if raw is None or raw in inp.dtypes:
        return raw or inp.dtypes[0]
    if not isinstance(raw, str):
        raise FrameError("bad_header", f"input {inp.name!r}: 'dtype' must be a string, got {show(raw)}")
    problem = ""
    for dt in inp.dtypes:
        p = _dtype_problem(raw, dt)
        if p is None:
            return dt
        problem = problem or p
    raise FrameError("dtype_mismatch", f"model {model!r} input {inp.name!r} takes {' or '.join(inp.dtypes)}: {problem}")


class TensorDesc:
    """One checked ``tensors`` entry: the input, the dtype it is sent in, its sample shape and byte size."""

    __slots__ = ("input", "dtype", "shape", "nbytes")

    def __init__(self, inp: InputContract, dtype: str, shape: _Shape, nbytes: int) -> None:
        self.input = inp
        self.dtype = dtype
        self.shape = shape
        self.nbytes = nbytes


def _missing_inputs(contract: ModelContract, given: Sequence[str], form: str) -> None:
    missing = [n for n in contract.data_names if n not in given]
    if missing:
        raise FrameError("missing_input", f"model {contract.name!r} takes data input(s) "
                                          f"{', '.join(map(repr, contract.data_names))}{contract.state_note()}; "
                                          f"{form} lacks {', '.join(map(repr, missing))}")


def _v1_refused(contract: ModelContract, form: str, how: str) -> FrameError:
    return FrameError("missing_input", f"model {contract.name!r} takes data inputs "
                                       f"{', '.join(map(repr, contract.data_names))}{contract.state_note()}; {form} "
                                       f"carries only {contract.primary.name!r}: {how}")


def check_tensors(contract: ModelContract, header: Mapping[str, Any]) -> List[TensorDesc]:
    """The header's ``tensors`` list, checked in order: structure (``bad_header``), names
    (``unknown_input``, duplicates ``bad_header``), every data input present (``missing_input``),
    then per tensor ``dtype`` (``dtype_mismatch``), ``shape`` (``missing_shape`` for a dynamic input
    without one, ``wrong_size``) and ``nbytes`` (``wrong_size`` if not what dtype and shape imply)."""
    model = contract.name
    raw = header.get("tensors")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_TENSORS:
        raise FrameError("bad_header", f"'tensors' must be a list of 1 to {MAX_TENSORS} objects "
                                       f"{{name, dtype, shape}}, got {show(raw)}")
    for key in ("dtype", "shape"):
        if key in header:
            raise FrameError("bad_header", f"a header with 'tensors' gives '{key}' per tensor, not at the top level")
    entries: List[Tuple[InputContract, Dict[str, Any]]] = []
    seen: Dict[str, int] = {}
    for k, t in enumerate(raw):
        if not isinstance(t, dict):
            raise FrameError("bad_header", f"tensors[{k}] must be an object {{name, dtype, shape}}, got {show(t)}")
        extra = [key for key in t if key not in TENSOR_KEYS]
        if extra:
            raise FrameError("bad_header", f"tensors[{k}] has key {show(extra[0], 30)}; allowed: name, dtype, "
                                           f"shape, nbytes")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise FrameError("bad_header", f"tensors[{k}] needs a string 'name', got {show(name)}")
        inp = contract.inputs.get(name)
        if inp is None:
            raise FrameError("unknown_input", f"model {model!r} has no input {show(name, 40)}: its inputs are "
                                              f"{contract.describe_inputs()}")
        if name in seen:
            raise FrameError("bad_header", f"tensors[{k}]: input {name!r} already given in tensors[{seen[name]}]")
        seen[name] = k
        entries.append((inp, t))
    _missing_inputs(contract, list(seen), "the message")
    out: List[TensorDesc] = []
    for inp, t in entries:
        try:
            dtype = _tensor_dtype(inp, model, t.get("dtype"))
            if t.get("shape") is None:
                if inp.dynamic:
                    raise missing_shape(inp.spec, model)
                shape: _Shape = tuple(int(d or 0) for d in inp.spec.sample_shape)
            else:
                shape = check_shape(inp.spec, t["shape"], model)
            n = 1
            for d in shape:
                n *= d
            nbytes = n * np.dtype(dtype).itemsize
            given = t.get("nbytes")
            if given is not None:
                if isinstance(given, bool) or not isinstance(given, int) or given < 0:
                    raise FrameError("bad_header", f"'nbytes' must be an int >= 0, got {show(given)}")
                if given != nbytes:
                    raise FrameError("wrong_size", f"'nbytes' is {given} but {dtype} {list(shape)} is {nbytes} bytes")
        except FrameError as err:
            if err.reason == "missing_shape":
                raise
            raise _in_input(inp.name, err) from None
        out.append(TensorDesc(inp, dtype, shape, nbytes))
    return out


def _array_from_bytes(desc: TensorDesc, model: str, data: Any) -> np.ndarray:
    """One tensor's raw little-endian C-order bytes (size already checked) as an owned native array."""
    native = np.dtype(desc.dtype)
    wire = native.newbyteorder("<")
    arr = np.frombuffer(data, dtype=wire)
    arr = (arr.astype(native) if wire != native else arr.copy()).reshape(desc.shape)
    if native.kind in "fc" and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise FrameError("non_finite", f"model {model!r} input {desc.input.name!r} has {bad} NaN/inf value(s)")
    return arr


_Inputs = Tuple[np.ndarray, Optional[Dict[str, np.ndarray]]]


def _result(contract: ModelContract, feeds: Dict[str, np.ndarray]) -> _Inputs:
    """(primary array, feeds or None): ``feeds`` only when the message carried more than the primary input."""
    arr = feeds[contract.primary.name]
    return arr, (feeds if len(feeds) > 1 else None)


def _desc_list(descs: Sequence[TensorDesc]) -> str:
    return ", ".join(f"{d.input.name!r} ({d.nbytes} B)" for d in descs)


def inputs_from_frames(contract: ModelContract, info: HeaderInfo, header: Mapping[str, Any],
                       payloads: Sequence[bytes]) -> _Inputs:
    """A ZeroMQ message's payload frames (header-checked): v1 ``[payload]`` or v2 one frame per ``tensors`` entry.

    Returns ``(primary array, feeds)``; ``feeds`` (input name -> array) is None when only the
    primary input came. A v1 message for a model with several data inputs is ``missing_input``.
    """
    if "tensors" not in header:
        if len(payloads) != 1:
            raise FrameError("bad_header", f"message has {len(payloads) + 1} frames; expected 1 (JSON), 2 "
                                           "(header+payload) or 1 + the number of 'tensors' in the header")
        if not contract.v1:
            raise _v1_refused(contract, "a two-frame message", "send 'tensors' in the header and one frame per tensor")
        return array_from_payload(info.spec, info.model, header, payloads[0]), None
    descs = check_tensors(contract, header)
    if len(descs) != len(payloads):
        raise FrameError("bad_header", f"header lists {len(descs)} tensor(s) but {len(payloads)} payload frame(s) came")
    feeds: Dict[str, np.ndarray] = {}
    for d, p in zip(descs, payloads):
        if len(p) != d.nbytes:
            raise FrameError("wrong_size", f"model {info.model!r} input {d.input.name!r}: frame of {len(p)} bytes, "
                                           f"{d.dtype} {list(d.shape)} is {d.nbytes}")
        feeds[d.input.name] = _array_from_bytes(d, info.model, p)
    return _result(contract, feeds)


def inputs_from_body(contract: ModelContract, info: HeaderInfo, header: Mapping[str, Any],
                     body: bytes) -> _Inputs:
    """A COBS (or MQTT binary) payload (header-checked): v1 one array, or v2 the ``tensors`` back to back
    in header order, each ``nbytes`` = elements x itemsize (the payload must be exactly their sum)."""
    if "tensors" not in header:
        if not contract.v1:
            raise _v1_refused(contract, "a frame without 'tensors'",
                              "list every input in the header's 'tensors' and put them back to back in the payload")
        return array_from_payload(info.spec, info.model, header, body), None
    descs = check_tensors(contract, header)
    total = sum(d.nbytes for d in descs)
    if len(body) != total:
        raise FrameError("wrong_size", f"model {info.model!r}: payload of {len(body)} bytes, tensors "
                                       f"{_desc_list(descs)} need {total}")
    view = memoryview(body)
    feeds: Dict[str, np.ndarray] = {}
    at = 0
    for d in descs:
        feeds[d.input.name] = _array_from_bytes(d, info.model, view[at:at + d.nbytes])
        at += d.nbytes
    return _result(contract, feeds)


def inputs_from_json(contract: ModelContract, info: HeaderInfo,
                     msg: Mapping[str, Any]) -> _Inputs:
    """A one-frame JSON message (header-checked): ``data`` (one input, v1) or ``inputs`` (v2: input name ->
    numbers; a dynamic input's shape is the nesting of its values)."""
    if "inputs" not in msg:
        if "data" not in msg:
            raise FrameError("bad_header", "a JSON message needs 'data' (one input) or 'inputs' (input name -> values)")
        if not contract.v1:
            raise _v1_refused(contract, "'data'", "send 'inputs': {name: values, ...}")
        return array_from_message(info, msg, msg["data"]), None
    if "data" in msg:
        raise FrameError("bad_header", "a JSON message has either 'data' or 'inputs', not both")
    for key in ("dtype", "shape"):
        if key in msg:
            raise FrameError("bad_header", f"a message with 'inputs' has no top-level '{key}': each input's values "
                                           "are converted to its dtype, and nested in its shape")
    inputs = msg["inputs"]
    if not isinstance(inputs, dict) or not 0 < len(inputs) <= MAX_TENSORS:
        raise FrameError("bad_header", f"'inputs' must be an object of 1 to {MAX_TENSORS} input names -> values, "
                                       f"got {show(inputs)}")
    for name in inputs:
        if name not in contract.inputs:
            raise FrameError("unknown_input", f"model {info.model!r} has no input {show(name, 40)}: its inputs are "
                                              f"{contract.describe_inputs()}")
    _missing_inputs(contract, list(inputs), "'inputs'")
    feeds: Dict[str, np.ndarray] = {}
    for name, values in inputs.items():
        inp = contract.inputs[name]
        try:
            feeds[name] = array_from_values(inp.spec, info.model, values)
        except FrameError as err:
            if err.reason == "missing_shape":
                err.detail += " (or nest its values in that shape)"
                raise
            raise _in_input(name, err) from None
    return _result(contract, feeds)


def inputs_from_values(contract: ModelContract, values: Any) -> np.ndarray:
    """A ``lines`` line's numbers: the one data input of a model (``missing_input`` for several)."""
    if not contract.v1:
        raise _v1_refused(contract, "a line", "a line carries one input; use cobs framing with 'tensors'")
    try:
        return array_from_values(contract.spec, contract.name, values)
    except FrameError as err:
        if err.reason == "missing_shape":
            err.detail += " (a line cannot carry 'shape': use cobs framing)"
        raise


def v1_in_other_dtype(contracts: Mapping[str, ModelContract], header: Dict[str, Any]) -> Dict[str, Any]:
    """A v1 binary header whose ``dtype`` names another dtype the primary input takes (a quantised
    input's integer type) as the equivalent one-tensor v2 header; any other header unchanged."""
    dt = header.get("dtype")
    if dt is None or "tensors" in header:
        return header
    model = header.get("model")
    contract = contracts.get(model) if isinstance(model, str) else None
    if contract is None or len(contract.primary.dtypes) == 1 or not contract.v1:
        return header
    try:
        chosen = _tensor_dtype(contract.primary, contract.name, dt)
    except FrameError:
        return header  # check_header names the problem
    if chosen == contract.primary.dtypes[0]:
        return header
    tensor: Dict[str, Any] = {"name": contract.primary.name, "dtype": dt}
    if "shape" in header:
        tensor["shape"] = header["shape"]
    out = {k: v for k, v in header.items() if k not in ("dtype", "shape")}
    out["tensors"] = [tensor]
    return out
