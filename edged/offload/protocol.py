"""Wire protocol between an edge (ZeroMQ DEALER) and a fog node (ZeroMQ ROUTER).

A v1 message is two frames: ``[header, payload]``. The header is UTF-8 JSON;
the payload is the raw C-order bytes of one array (or padding for a probe).

A v2 message (models with several inputs or outputs, or recurrent state) carries
``tensors`` in the header, ``[{"name", "dtype", "shape"}, ...]``, and one payload
frame per tensor in that order: ``[header, payload_1, ..., payload_n]``. A request
with ``tensors`` gets a reply with every output as ``tensors``; a request without
gets the v1 reply (the first output), so v1 edges keep working.

Request header: ``v`` (protocol version, 1), ``id`` (request id, unique per client),
``kind`` (``"infer"`` | ``"ping"``), ``model``, ``model_hash``, ``dtype``, ``shape``
(one input without the batch dimension), ``sent_ts`` (sender unix time, s);
a ping may carry ``reply_pad`` (bytes of padding wanted in the reply payload);
``cut`` (optional, ``{"name", "hash"}``: the payload is an intermediate tensor of that partition cut,
verified by the tail hash; see :mod:`edged.partition`).

Reply header: ``id``, ``status`` (``"ok"`` | ``"error"`` | ``"refused"``), ``error``
(message or null), ``t_f_us`` (fog execution time, µs), ``queue_us`` (time the request
waited in the fog queue, µs), ``dtype``, ``shape``, ``model_hash``; a ping reply also
carries ``models`` (``{name: {"model_hash", "t_f_us"}}``), ``queue_depth``, ``workers``
and ``queue_est_us``; a reply to a ``cut`` request carries ``cut``, and a ping reply's ``models[name]``
may carry ``cuts`` (``{cut: {"tail_hash", "t_tail_us"}}``). See ``docs/offloading.md``.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from edged._json import dumps_header

PROTOCOL_VERSION = 1
KINDS = ("infer", "ping")
STATUSES = ("ok", "error", "refused")


class ProtocolError(ValueError):
    """A message that does not follow the wire protocol."""


def _json_header(header: Dict[str, Any]) -> str:
    return json.dumps(header, separators=(",", ":"))


def encode_header(header: Dict[str, Any]) -> bytes:
    """Serialise a header dict to compact, ASCII JSON (orjson where it agrees with json: edged._json)."""
    return dumps_header(header, _json_header)


def decode_header(frame: bytes) -> Dict[str, Any]:
    """Parse a header frame; raises :class:`ProtocolError` (and nothing else) if it is not a JSON object
    within the sources' bounds (size and nesting are checked before parsing: no RecursionError)."""
    from edged.sources.framing import FrameError, parse_header_json

    try:
        return parse_header_json(frame)
    except FrameError as exc:
        raise ProtocolError(str(exc)) from None


def array_to_frames(header: Dict[str, Any], array: np.ndarray) -> List[bytes]:
    """Add ``dtype``/``shape`` of ``array`` to ``header`` and return ``[header, payload]``."""
    arr = np.ascontiguousarray(array)
    header = dict(header, dtype=str(arr.dtype), shape=list(arr.shape))
    return [encode_header(header), arr.tobytes()]


def array_from_payload(header: Dict[str, Any], payload: bytes) -> np.ndarray:
    """Rebuild the array a header + payload describe; raises :class:`ProtocolError` on mismatch."""
    try:
        dtype = np.dtype(str(header.get("dtype")))
        shape: Tuple[int, ...] = tuple(int(d) for d in header.get("shape") or ())
        if dtype.hasobject or any(d < 0 for d in shape):
            raise ValueError(f"dtype {dtype} / shape {list(shape)} cannot describe raw bytes")
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"bad dtype/shape in header: {exc}") from None
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(payload):
        raise ProtocolError(f"payload is {len(payload)} bytes but dtype {dtype} shape {list(shape)} "
                            f"needs {expected}")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


#: most tensors one v2 message may carry (inputs or outputs)
MAX_TENSORS = 64


def tensors_to_frames(header: Dict[str, Any], tensors: Mapping[str, np.ndarray]) -> List[bytes]:
    """``[header + tensors spec, payload per tensor]`` for several named arrays (v2)."""
    arrays = [(str(k), np.ascontiguousarray(v)) for k, v in tensors.items()]
    spec = [{"name": k, "dtype": a.dtype.str.lstrip("<=|") if a.dtype.byteorder != ">" else a.dtype.str,
             "shape": list(a.shape)} for k, a in arrays]
    return [encode_header(dict(header, tensors=spec)), *(a.tobytes() for _, a in arrays)]


def tensors_from_frames(header: Dict[str, Any], payloads: Sequence[bytes]) -> Dict[str, np.ndarray]:
    """Rebuild the named arrays of a v2 message; :class:`ProtocolError` on any mismatch."""
    spec = header.get("tensors")
    if not isinstance(spec, list) or not 0 < len(spec) <= MAX_TENSORS:
        raise ProtocolError(f"'tensors' must be a list of 1..{MAX_TENSORS} {{name, dtype, shape}} objects")
    if len(spec) != len(payloads):
        raise ProtocolError(f"header lists {len(spec)} tensors but {len(payloads)} payload frames came")
    out: Dict[str, np.ndarray] = {}
    for t, payload in zip(spec, payloads):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ProtocolError("each tensor needs a string 'name'")
        if t["name"] in out:
            raise ProtocolError(f"tensor {t['name']!r} appears twice")
        try:
            out[t["name"]] = array_from_payload(t, payload)
        except ProtocolError as exc:
            raise ProtocolError(f"tensor {t['name']!r}: {exc}") from None
    return out


def frames_size(frames: Sequence[bytes]) -> int:
    """Total bytes of a multipart message (what crosses the link, ignoring ZMTP framing)."""
    return sum(len(f) for f in frames)
