"""Serial reply sink: the result goes back on the serial port its input came from.

So the MCU that sent a reading can act on it. Two forms (``form``):

``text`` — one ASCII line per result, easy to ``sscanf``::

    <model>[@<seq>]:<values>\\n

  ``<values>`` depends on the kind of the replied output (``output``; default the first
  output the record's ``result`` summarises):

  * classifier (``probabilities`` / ``logits``): ``<label>,<score>`` — ``mlp:1,0.998``;
  * ``regression``: its values — ``depth:0.25,1.5``;
  * ``tensor``: its first ``max_values`` raw values, then ``,...`` if there are more;
  * an input that was rejected or failed: ``!`` then the decision and reason —
    ``mlp:!rejected,non_finite``, ``mlp:!error,<reason>``.

  Numbers have ``digits`` significant digits (``%g``); a non-finite value is ``nan``.
  With ``seq = true`` the input's ``seq`` follows the model: ``mlp@7:1,0.998``.

``cobs`` — one frame of the serial COBS framing (docs/protocol.md §3.2)::

    0x00 | COBS( header_len u16 LE | header JSON | payload | CRC-32 u32 LE ) | 0x00

  header: ``model``, ``seq``, ``sender`` (if any), ``decision``, ``label`` and ``score``
  (first classifier output), ``error`` and ``reason`` (failures), ``outputs``:
  ``[{"name", "dtype", "shape"}]``; payload: those outputs back to back, raw little-endian
  C order (``outputs = false``, or a frame over ``max_frame_bytes``: no payload, and the
  header says ``"outputs_omitted": true``).

The port is written through ``writer_for(source_name)``, a callable the daemon gives
(the serial source's non-blocking, thread-safe ``write_reply(data) -> bool``). A result
from a source without a writer (ZeroMQ, MQTT ...) is not for this sink (``unroutable``);
a write that returns False (port gone, output buffer full) is ``dropped``.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edged.sinks.base import Result, ResultSink, SinkConfig, WriterFor, describe_outputs, output_items
from edged.sinks.zmq import _ENCODE
from edged.sources.framing import cobs_encode

FORMS = ("text", "cobs")
#: Header keys a COBS reply copies from the record (when present and not None).
COBS_HEADER_KEYS = ("model", "seq", "sender", "decision")


@dataclass(frozen=True)
class SerialSinkConfig(SinkConfig):
    """``[[sinks]] type = "serial"``.

    Attributes:
        form: ``text`` (one line) or ``cobs`` (a CRC frame with the raw outputs).
        sources: names of the serial sources to reply on; empty = every source with a writer.
        output: name of the output a ``text`` line shows; empty = the record's first summary.
        seq: ``text``: put ``@<seq>`` after the model name.
        digits: significant digits of numbers in a ``text`` line.
        max_values: most numbers of a ``text`` line (regression / tensor).
        outputs: ``cobs``: carry the raw outputs as the payload.
        max_frame_bytes: ``cobs``: a reply larger than this is sent without its payload (bytes).
    """

    type: str = "serial"
    name: str = "serial-reply"
    form: str = field(default="text", metadata={"choices": FORMS})
    sources: Tuple[str, ...] = ()
    output: str = ""
    seq: bool = False
    digits: int = field(default=6, metadata={"min": 1, "max": 17})
    max_values: int = field(default=16, metadata={"min": 1, "max": 4096})
    outputs: bool = True
    max_frame_bytes: int = field(default=4096, metadata={"min": 64})


def _fmt(v: Any, digits: int) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "nan"
    if not math.isfinite(f):
        return "nan"
    if f == int(f) and abs(f) < 1e15 and isinstance(v, (int, np.integer)):
        return str(int(f))
    return f"{f:.{digits}g}"


def _clean(text: Any, limit: int = 40) -> str:
    """A reason for a text line: letters, digits, ``_ - .`` only (never a comma or a newline)."""
    s = "".join(c if (c.isascii() and (c.isalnum() or c in "_-.")) else "_" for c in str(text)[:limit])
    return s or "_"


def pick_summary(record: Mapping[str, Any], output: str = "") -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """``(output name, its summary)`` a reply shows: ``output`` if given, else the first one.

    Understands the v2 ``result`` (output name -> summary) and the v1 one (``{"label", "score"}``).
    """
    res = record.get("result")
    if not isinstance(res, Mapping) or not res:
        return None, None
    if "label" in res and "score" in res and not isinstance(res.get("label"), Mapping):  # v1 result
        return output or None, dict(res)
    if output:
        s = res.get(output)
        return (output, dict(s)) if isinstance(s, Mapping) else (output, None)
    for name, s in res.items():
        if isinstance(s, Mapping):
            return str(name), dict(s)
    return None, None


def first_classifier(record: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The first classifier summary of the record's result (v1 or v2 form), if any."""
    res = record.get("result")
    if not isinstance(res, Mapping):
        return None
    if "label" in res and not isinstance(res.get("label"), Mapping):
        return dict(res)
    for s in res.values():
        if isinstance(s, Mapping) and "label" in s and "score" in s:
            return dict(s)
    return None


def text_reply(result: Result, cfg: SerialSinkConfig) -> bytes:
    """The ``text`` form of one result (see the module doc), ``\\n``-terminated ASCII."""
    rec = result.record
    model = _clean(rec.get("model"), 64)
    if cfg.seq and rec.get("seq") is not None:
        model = f"{model}@{rec.get('seq')}"
    decision = rec.get("decision")
    if decision == "rejected" or rec.get("error"):
        why = rec.get("reason") if decision == "rejected" else rec.get("error")
        body = f"!{_clean(decision if decision == 'rejected' else 'error')},{_clean(why)}"
        return f"{model}:{body}\n".encode("ascii")
    name, summ = pick_summary(rec, cfg.output)
    d = cfg.digits
    values: List[str]
    if summ is not None and "label" in summ and "score" in summ:
        values = [_fmt(summ.get("label"), d), _fmt(summ.get("score"), d)]
    else:
        arr = None
        if result.outputs:
            if name is not None and name in result.outputs:
                arr = result.outputs[name]
            elif name is None:
                arr = next(iter(result.outputs.values()))
        if arr is not None:
            flat = np.asarray(arr).reshape(-1)
            values = [_fmt(v, d) for v in flat[: cfg.max_values].tolist()]
            if flat.size > cfg.max_values:
                values.append("...")
        elif summ is not None and "values" in summ:
            vals = list(summ["values"])
            values = [_fmt(v, d) for v in vals[: cfg.max_values]]
            if int(summ.get("n", len(vals))) > len(values):
                values.append("...")
        else:
            return f"{model}:!no_outputs\n".encode("ascii")
    return f"{model}:{','.join(values)}\n".encode("ascii")


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _body(head_json: bytes, payload: bytes) -> bytes:
    """``header_len u16 LE | header | payload | CRC-32 u32 LE`` (what framing.build_body makes, without
    re-encoding the header)."""
    body = _U16.pack(len(head_json)) + head_json + payload
    return body + _U32.pack(zlib.crc32(body) & 0xFFFFFFFF)


#: (name, dtype, shape) of each output -> the ``"outputs":[...]`` JSON fragment (bounded cache)
_OUTPUTS_JSON: Dict[Tuple[Any, ...], str] = {}


def cobs_reply(result: Result, cfg: SerialSinkConfig) -> bytes:
    """The ``cobs`` form of one result: a complete frame with both delimiters."""
    rec = result.record
    head: Dict[str, Any] = {k: rec[k] for k in COBS_HEADER_KEYS if rec.get(k) is not None}
    cls = first_classifier(rec)
    if cls is not None:
        head["label"] = cls.get("label")
        head["score"] = cls.get("score")
    if rec.get("decision") == "rejected" and rec.get("reason"):
        head["reason"] = str(rec.get("reason"))[:64]
    if rec.get("error"):
        head["error"] = str(rec.get("error"))[:128]
    items = output_items(result.outputs) if cfg.outputs else []
    key = tuple((n, a.dtype, a.shape) for n, a in items)
    frag = _OUTPUTS_JSON.get(key)
    if frag is None:
        frag = '"outputs":' + _ENCODE(describe_outputs(items))
        if len(_OUTPUTS_JSON) < 1024:
            _OUTPUTS_JSON[key] = frag
    text = _ENCODE(head)
    text = text[:-1] + ("," if len(text) > 2 else "") + frag + "}"
    payload = b"".join([a.tobytes() for _, a in items]) if items else b""
    body = _body(text.encode("utf-8"), payload)
    if payload and len(body) + len(body) // 254 + 3 > cfg.max_frame_bytes:
        text = text[:-1] + ',"outputs_omitted":true}'
        body = _body(text.encode("utf-8"), b"")
    return b"\x00" + cobs_encode(body) + b"\x00"


#: Default bound of a port's unsent replies (bytes): ~5.7 s of 115200 baud.
REPLY_BUFFER_BYTES = 65536


class ReplyBuffer:
    """The non-blocking, thread-safe ``write_reply(data) -> bool`` of one serial port.

    For the serial source to own (one per port): ``attach(port)`` when the port opens,
    ``detach()`` when it closes, ``flush()`` from its read loop (so bytes the port could not
    take at once go out within one read timeout), and ``write`` as its ``write_reply``.
    ``write`` takes a reply whole into a bounded buffer (False, nothing queued, if the port
    is closed or ``max_bytes`` are already waiting) and writes what the port takes now,
    never waiting: on a port with a file descriptor (ttys, ptys; pyserial opens them
    ``O_NONBLOCK``) through ``os.write``, because pyserial's own ``write`` with
    ``write_timeout = 0`` spins while the output buffer is full; other ports (``loop://``)
    through ``port.write``. Bytes still waiting when the port closes are dropped and counted
    in ``lost_bytes``.
    """

    def __init__(self, max_bytes: int = REPLY_BUFFER_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.lost_bytes = 0
        self.written_bytes = 0
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._port: Any = None
        self._fd: Optional[int] = None

    def attach(self, port: Any) -> None:
        with self._lock:
            self._port = port
            try:
                fd = port.fileno()
                self._fd = fd if isinstance(fd, int) and fd >= 0 else None
            except Exception:  # loop://, socket:// ... have no usable fd
                self._fd = None

    def detach(self) -> int:
        """Forget the port (closed or lost); returns the unsent bytes dropped."""
        with self._lock:
            self._port = None
            self._fd = None
            n = len(self._pending)
            self._pending.clear()
            self.lost_bytes += n
            return n

    @property
    def pending(self) -> int:
        return len(self._pending)

    def write(self, data: bytes) -> bool:
        with self._lock:
            if self._port is None or len(self._pending) + len(data) > self.max_bytes:
                return False
            self._pending += data
            self._flush_locked()
            return True

    def flush(self) -> int:
        """Write what the port takes now; returns bytes still waiting."""
        with self._lock:
            if self._pending and self._port is not None:
                self._flush_locked()
            return len(self._pending)

    def _flush_locked(self) -> None:
        buf = self._pending
        try:
            n = os.write(self._fd, buf) if self._fd is not None else (self._port.write(bytes(buf)) or 0)
        except BlockingIOError:
            n = 0
        except Exception:  # the port went away: the source's loop notices and detaches
            n = 0
        if n:
            del buf[:n]
            self.written_bytes += n


class SerialReplySink(ResultSink):
    """Writes each result back to the serial port its input came from (see the module doc).

    Args:
        config: the sink's :class:`SerialSinkConfig`.
        writer_for: ``source name -> write(bytes) -> bool`` (non-blocking), or None for a
            source that cannot be replied to. Called once per source name, then cached.
    """

    type_name = "serial"

    def __init__(self, config: SerialSinkConfig, writer_for: Optional[WriterFor] = None) -> None:
        super().__init__(config)
        self.cfg = config
        self.writer_for = writer_for
        self.unroutable = 0
        self.bytes_written = 0
        self._writers: Dict[str, Optional[Callable[[bytes], bool]]] = {}
        self._encode = cobs_reply if config.form == "cobs" else text_reply

    def _writer(self, source: str) -> Optional[Callable[[bytes], bool]]:
        try:
            return self._writers[source]
        except KeyError:
            pass
        w = None
        if self.writer_for is not None and (not self.cfg.sources or source in self.cfg.sources):
            w = self.writer_for(source)
        self._writers[source] = w
        return w

    def publish_many(self, results: Sequence[Result]) -> None:
        """Encode each result and write the replies of one batch for one port with one call.

        A write that the port cannot take now (False) drops every reply of that call: a reply
        is written whole or not at all, never cut.
        """
        encode = self._encode
        cfg = self.cfg
        pending: Dict[int, Tuple[Callable[[bytes], bool], List[bytes]]] = {}
        for r in results:
            try:
                write = self._writer(str(r.record.get("source") or ""))
                if write is None:
                    self.unroutable += 1
                    continue
                data = encode(r, cfg)
                slot = pending.get(id(write))
                if slot is None:
                    pending[id(write)] = (write, [data])
                else:
                    slot[1].append(data)
            except Exception as exc:
                self.count_error("cannot encode a reply", exc)
        for write, chunks in pending.values():
            try:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                if write(data):
                    self.published += len(chunks)
                    self.bytes_written += len(data)
                else:
                    self.dropped += len(chunks)
            except Exception as exc:
                self.errors += len(chunks) - 1  # count_error adds the last one
                self.count_error(f"cannot write {len(chunks)} repl{'y' if len(chunks) == 1 else 'ies'}", exc)

    def stats(self) -> Dict[str, int]:
        s = super().stats()
        s.update(unroutable=self.unroutable, bytes_written=self.bytes_written)
        return s

    def info(self) -> Dict[str, Any]:
        return {**super().info(), "form": self.cfg.form, "sources": list(self.cfg.sources)}
