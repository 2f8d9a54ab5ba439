"""Wire protocol between an edge (ZeroMQ DEALER) and a fog node (ZeroMQ ROUTER).

Every message is two frames: ``[header, payload]``. The header is UTF-8 JSON;
the payload is the raw C-order bytes of one array (or padding for a probe).

Request header: ``v`` (protocol version, 1), ``id`` (request id, unique per client),
``kind`` (``"infer"`` | ``"ping"``), ``model``, ``model_hash``, ``dtype``, ``shape``
(one input without the batch dimension), ``sent_ts`` (sender unix time, s);
a ping may carry ``reply_pad`` (bytes of padding wanted in the reply payload).

Reply header: ``id``, ``status`` (``"ok"`` | ``"error"`` | ``"refused"``), ``error``
(message or null), ``t_f_us`` (fog execution time, µs), ``queue_us`` (time the request
waited in the fog queue, µs), ``dtype``, ``shape``, ``model_hash``; a ping reply also
carries ``models`` (``{name: {"model_hash", "t_f_us"}}``), ``queue_depth``, ``workers``
and ``queue_est_us``. See ``docs/offloading.md``.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

PROTOCOL_VERSION = 1
KINDS = ("infer", "ping")
STATUSES = ("ok", "error", "refused")


class ProtocolError(ValueError):
    """A message that does not follow the wire protocol."""


def encode_header(header: Dict[str, Any]) -> bytes:
    """Serialise a header dict to compact UTF-8 JSON."""
    return json.dumps(header, separators=(",", ":")).encode("utf-8")


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
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad dtype/shape in header: {exc}") from None
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(payload):
        raise ProtocolError(f"payload is {len(payload)} bytes but dtype {dtype} shape {list(shape)} "
                            f"needs {expected}")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def frames_size(frames: Sequence[bytes]) -> int:
    """Total bytes of a multipart message (what crosses the link, ignoring ZMTP framing)."""
    return sum(len(f) for f in frames)
