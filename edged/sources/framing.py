"""Wire protocol framing (v1 and v2): COBS codec, CRC-32 frames, line splitting, v2 tensor encoders.

Pure functions and small stateful deframers, no I/O, so every transport
(serial, pty, socket, tests) shares exactly the same byte handling.

COBS frame on the wire (see ``docs/protocol.md``)::

    0x00 | COBS( header_len u16 LE | header JSON | payload | CRC-32 u32 LE ) | 0x00

The CRC is ``zlib.crc32`` of everything before it in the decoded body.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from edged._json import loads as _loads

#: Smallest decoded COBS body: u16 header length + u32 CRC (bytes).
MIN_BODY_BYTES = 6
#: Default limit on one frame or line between delimiters (bytes).
DEFAULT_MAX_FRAME_BYTES = 65536
#: Longest header accepted, in bytes (inclusive): the range of the COBS ``header_len`` field.
MAX_HEADER_BYTES = 65535
#: Deepest JSON nesting accepted (inclusive), counted in ``[``/``{`` levels; checked before parsing,
#: so a nesting bomb is a counted rejection and never reaches the recursive parser.
MAX_JSON_DEPTH = 32

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class FrameError(Exception):
    """A frame or line that cannot become an input.

    ``reason`` is a short stable snake_case string (the counter key),
    ``detail`` a human explanation for the log line.
    """

    def __init__(self, reason: str, detail: str = "", nbytes: int = 0,
                 header: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        #: bytes of stream discarded with this error (oversize runs), else 0
        self.nbytes = nbytes
        #: the parsed header of the refused input, when parsing got that far (attributes the rejection)
        self.header = header


# --------------------------------------------------------------------------- COBS


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode ``data`` (no delimiters added). Output never contains ``0x00``.

    Byte-identical to the ``cobs`` package's ``cobs.cobs.encode``; works on
    zero-separated runs with slicing rather than a per-byte loop.
    """
    out = bytearray()
    chunks = bytes(data).split(b"\x00")
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        start = 0
        n = len(chunk)
        emitted_full_block = False
        while n - start >= 254:
            out.append(0xFF)
            out += chunk[start : start + 254]
            start += 254
            emitted_full_block = True
        rest = n - start
        if i < last or rest or not emitted_full_block:
            out.append(rest + 1)
            out += chunk[start:]
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS block sequence (no delimiters).

    Raises :class:`FrameError` ``bad_cobs`` if a code byte is zero, a block
    contains a zero byte, or a code points past the end of the data.
    """
    out = bytearray()
    idx = 0
    n = len(data)
    while idx < n:
        code = data[idx]
        if code == 0:
            raise FrameError("bad_cobs", f"zero code byte at offset {idx}")
        end = idx + code
        if end > n:
            raise FrameError("bad_cobs", f"code 0x{code:02x} at offset {idx} runs {end - n} byte(s) past the end")
        block = data[idx + 1 : end]
        if b"\x00" in block:
            raise FrameError("bad_cobs", f"zero byte inside block at offset {idx}")
        out += block
        idx = end
        if code < 0xFF and idx < n:
            out.append(0)
    return bytes(out)


# --------------------------------------------------------------------------- CRC frames


def build_body(header: Dict[str, Any], payload: bytes = b"") -> bytes:
    """Decoded frame body: ``header_len u16 LE | header JSON | payload | CRC-32 u32 LE``."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if len(head) > 0xFFFF:
        raise ValueError(f"header is {len(head)} bytes; the limit is 65535")
    body = _U16.pack(len(head)) + head + bytes(payload)
    return body + _U32.pack(zlib.crc32(body) & 0xFFFFFFFF)


def build_cobs_frame(header: Dict[str, Any], payload: bytes = b"") -> bytes:
    """A complete wire frame: ``0x00 | COBS(body) | 0x00`` (bytes)."""
    return b"\x00" + cobs_encode(build_body(header, payload)) + b"\x00"


def tensor_entries(tensors: Mapping[str, Any]) -> Tuple[List[Dict[str, Any]], List[bytes]]:
    """Wire protocol v2, sender side: the header's ``tensors`` list and each tensor's payload bytes.

    ``tensors`` maps input names to arrays of ONE sample (no batch axis); each becomes
    ``{"name", "dtype", "shape"}`` (numpy dtype name, e.g. ``"float32"``) and its raw
    little-endian C-order bytes, in the mapping's order.
    """
    import numpy as np  # only senders call this

    entries: List[Dict[str, Any]] = []
    payloads: List[bytes] = []
    for name, value in tensors.items():
        arr = np.asarray(value)
        entries.append({"name": str(name), "dtype": arr.dtype.name, "shape": [int(d) for d in arr.shape]})
        payloads.append(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
    return entries, payloads


def build_tensor_frames(header: Dict[str, Any], tensors: Mapping[str, Any]) -> List[bytes]:
    """A v2 ZeroMQ message: ``[header JSON with "tensors", one frame per tensor]`` (see :func:`tensor_entries`)."""
    entries, payloads = tensor_entries(tensors)
    head = json.dumps(dict(header, tensors=entries), separators=(",", ":")).encode("utf-8")
    return [head, *payloads]


def build_tensor_body(header: Dict[str, Any], tensors: Mapping[str, Any]) -> bytes:
    """A v2 decoded COBS body: the header with ``tensors``, then the tensors back to back, then the CRC."""
    entries, payloads = tensor_entries(tensors)
    return build_body(dict(header, tensors=entries), b"".join(payloads))


def build_tensor_cobs_frame(header: Dict[str, Any], tensors: Mapping[str, Any]) -> bytes:
    """A complete v2 serial frame ``0x00 | COBS(body) | 0x00`` carrying several named tensors."""
    return b"\x00" + cobs_encode(build_tensor_body(header, tensors)) + b"\x00"


def parse_body(body: bytes) -> Tuple[Dict[str, Any], bytes]:
    """Split a decoded body into ``(header dict, payload bytes)``.

    Checks, in order: length (``truncated``), CRC (``bad_crc``), header JSON
    (``bad_header``). Raises :class:`FrameError`.
    """
    n = len(body)
    if n < MIN_BODY_BYTES:
        raise FrameError("truncated", f"decoded frame is {n} bytes; at least {MIN_BODY_BYTES} needed")
    (head_len,) = _U16.unpack_from(body, 0)
    if 2 + head_len + 4 > n:
        raise FrameError("truncated", f"header_len {head_len} needs {2 + head_len + 4} bytes, frame has {n}")
    (crc,) = _U32.unpack_from(body, n - 4)
    actual = zlib.crc32(memoryview(body)[: n - 4]) & 0xFFFFFFFF
    if crc != actual:
        raise FrameError("bad_crc", f"frame CRC 0x{crc:08x}, computed 0x{actual:08x} over {n - 4} bytes")
    header = parse_header_json(body[2 : 2 + head_len])
    return header, body[2 + head_len : n - 4]


def parse_header_json(raw: bytes) -> Dict[str, Any]:
    """Parse a UTF-8 JSON object header; ``bad_header`` if it is not one.

    Checks, in order: size (at most :data:`MAX_HEADER_BYTES`), nesting (at most
    :data:`MAX_JSON_DEPTH` levels), UTF-8 JSON, a JSON object. Never raises anything
    but :class:`FrameError`.
    """
    if len(raw) > MAX_HEADER_BYTES:
        raise FrameError("bad_header", f"header of {len(raw)} bytes; limit {MAX_HEADER_BYTES}")
    header = parse_json(raw, "header", "bad_header")
    if not isinstance(header, dict):
        raise FrameError("bad_header", f"header is a JSON {_json_kind(header)}, not an object")
    return header


def parse_json(raw: bytes, what: str, reason: str) -> Any:
    """Parse UTF-8 JSON whose nesting is first checked against :data:`MAX_JSON_DEPTH`.

    Any failure is a :class:`FrameError` ``reason`` naming ``what``: over-deep nesting,
    invalid UTF-8 or JSON, an integer literal too long for Python (4300+ digits).
    """
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise FrameError(reason, f"{what} nests {depth} levels deep; limit {MAX_JSON_DEPTH}")
    try:
        return _loads(raw)  # orjson where it agrees with json.loads, json.loads otherwise (edged._json)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: belt and braces
        raise FrameError(reason, f"{what} is not UTF-8 JSON: {str(exc)[:120]}") from None


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


#: A JSON string literal (the unrolled-loop form: linear time, no backtracking blow-up).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def json_depth(raw: bytes) -> int:
    """Deepest ``[``/``{`` nesting of ``raw`` outside string literals, without parsing it.

    An upper bound of the parser's recursion for any input (a valid prefix is counted
    exactly; invalid JSON may be over-counted, and is refused by the parser anyway).
    Costs two ``bytes.count`` calls when there are few brackets; otherwise one regex pass
    and one numpy cumulative sum (linear, C speed).
    """
    data = bytes(raw)
    opens = data.count(b"[") + data.count(b"{")
    if opens <= MAX_JSON_DEPTH:
        return opens
    import numpy as np  # only for headers/messages with many brackets

    if b'"' in data:
        data = _JSON_STRING.sub(b'""', data)
    codes = np.frombuffer(data, dtype=np.uint8)
    step = (codes == 0x5B).astype(np.int32)
    step += codes == 0x7B
    step -= codes == 0x5D
    step -= codes == 0x7D
    return int(np.cumsum(step).max(initial=0))


# --------------------------------------------------------------------------- stream deframers


class _DelimitedDeframer:
    """Splits a byte stream on a one-byte delimiter, with a size limit.

    ``feed(chunk)`` yields ``(segment, error)`` pairs: ``error`` is None for a
    segment to use, or a :class:`FrameError` ``oversize`` (with ``nbytes``
    discarded) for a run longer than ``max_frame_bytes``: such a run is dropped
    until the next delimiter without being buffered, and ``segment`` is ``b""``.
    Empty segments are skipped. Subclasses set the delimiter and may clean a
    segment (:meth:`_segment`) and name what they split (:attr:`_unit`).
    """

    _delimiter: bytes = b"\0"
    _unit = "run"

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._skipping = False  # inside an oversize run: drop until the next delimiter
        self._skipped = 0

    def reset(self) -> int:
        """Forget any partial frame (e.g. after a reconnect); returns bytes discarded."""
        dropped = len(self._buf) + self._skipped
        self._buf.clear()
        self._skipping = False
        self._skipped = 0
        return dropped

    def _segment(self, raw: bytes) -> bytes:
        return raw

    def feed(self, chunk: bytes) -> Iterator[Tuple[bytes, Optional[FrameError]]]:
        """Consume ``chunk``; yield complete segments (see class doc)."""
        buf = self._buf
        buf += chunk
        start = 0
        delim = self._delimiter
        limit = self.max_frame_bytes
        while True:
            end = buf.find(delim, start)
            if end < 0:
                break
            if self._skipping:
                skipped = self._skipped + (end - start)
                self._skipping = False
                self._skipped = 0
                yield b"", FrameError("oversize", f"{self._unit} of {skipped} bytes without a delimiter; "
                                                  f"limit {limit}", skipped)
            elif end > start:
                seg = self._segment(bytes(buf[start:end]))
                if len(seg) > limit:
                    yield b"", FrameError("oversize", f"{self._unit} of {len(seg)} bytes; limit {limit}", len(seg))
                elif seg:
                    yield seg, None
            start = end + 1
        del buf[:start]
        if len(buf) > limit:
            self._skipping = True
            self._skipped += len(buf)
            buf.clear()

    @property
    def pending(self) -> int:
        """Bytes held waiting for a delimiter."""
        return len(self._buf)


class CobsDeframer(_DelimitedDeframer):
    """Splits a byte stream on ``0x00`` into COBS segments to decode (see :class:`_DelimitedDeframer`)."""

    _delimiter = b"\0"
    _unit = "frame"


class LineDeframer(_DelimitedDeframer):
    """Splits a byte stream into lines ended by ``\\n``, ``\\r\\n`` or a bare ``\\r``; blank lines are skipped.

    A ``\\r`` is a line end of its own (old Mac / some terminals), never part of a value;
    ``\\r\\n`` therefore ends one line and leaves an empty one, which is skipped.
    """

    _delimiter = b"\n"
    _unit = "line"

    def feed(self, chunk: bytes) -> Iterator[Tuple[bytes, Optional[FrameError]]]:
        return super().feed(bytes(chunk).replace(b"\r", b"\n"))

    def _segment(self, raw: bytes) -> bytes:
        return raw if raw.strip() else b""


# --------------------------------------------------------------------------- lines


def parse_line(line: bytes) -> Tuple[Optional[str], List[float]]:
    """Parse ``[name:] v1, v2 ...`` into ``(model name or None, values)``.

    Numbers are separated by commas and/or whitespace. ``nan``/``inf`` parse
    (validation rejects them as ``non_finite``). Raises ``unparsable``.
    """
    model: Optional[str] = None
    colon = line.find(b":")
    if colon >= 0:
        name = line[:colon].strip()
        try:
            model = name.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError("unparsable", f"model prefix is not ASCII: {name[:40]!r}") from None
        if not model:
            raise FrameError("unparsable", "empty model prefix before ':'")
        line = line[colon + 1 :]
    tokens = line.replace(b",", b" ").split()
    if not tokens:
        raise FrameError("unparsable", "no values on the line")
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        bad = next((t for t in tokens if not _is_float(t)), b"")
        raise FrameError("unparsable", f"not a number: {bad[:40]!r}") from None
    return model, values


def _is_float(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def format_line(values: Any, model: Optional[str] = None, precision: int = 9) -> bytes:
    """One ``lines``-framed input: ``[model:]v1,v2,...\\n``.

    ``precision`` is in significant digits; 9 round-trips float32 exactly.
    """
    body = ",".join(f"{float(v):.{precision}g}" for v in values)
    return ((f"{model}:" if model else "") + body + "\n").encode("ascii")
