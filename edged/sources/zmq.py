"""ZeroMQ source: a PULL socket receiving wire protocol v1 and v2 messages.

Message forms (see ``docs/protocol.md``):

* two frames ``[header JSON, payload]``: payload is the raw little-endian
  C-order array of the model's one data input (v1);
* ``[header JSON, payload_1, ..., payload_n]`` with ``tensors`` in the header:
  one frame per named input, in the order listed (v2, models with several inputs);
* one frame ``{"model": "mlp", "data": [...]}`` or ``{"model": "vad", "inputs": {...}}``
  (JSON) for simple clients.

With a blocking sink (queue policy ``block``) ``run`` stops reading while the
queue is full; ZeroMQ then queues up to ``rcvhwm`` messages per peer and
pushes back on the senders (their ``send`` blocks or fails with EAGAIN).

Every message is its own failure domain: whatever one message raises is
counted under a reason and costs nothing to the messages around it. On stop
the socket first unbinds (or disconnects), so senders queue on their side,
then every message that already reached the socket is handled before it closes.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import zmq

from edged._json import orjson_loads
from edged.errors import SourceError
from edged.runtime.base import TensorSpec
from edged.sources.base import Sink, Source, batch_sink
from edged.sources.framing import MAX_HEADER_BYTES, FrameError, parse_header_json, parse_json
from edged.sources.sample import Sample
from edged.sources.validate import MAX_SEQ, MAX_TENSORS, _layout

log = logging.getLogger("edged.sources.zmq")

#: Default per-message size limit (bytes); larger frames make libzmq drop the peer.
DEFAULT_MAX_MSG_BYTES = 4 * 1024 * 1024
#: Poll interval (ms): how quickly ``run`` notices ``stop``.
POLL_MS = 100
#: Messages drained per poll wake-up before checking ``stop`` again.
DRAIN_BATCH = 256
#: On stop, after unbinding: the socket counts as drained once it stayed empty this long (ms).
DRAIN_QUIET_MS = 50
#: On stop: the longest the drain may take (s), e.g. if unbinding did not cut the senders off (inproc).
DRAIN_MAX_S = 2.0
#: Longest header the burst fast path parses itself (bytes); longer ones take the general path, which
#: bounds size and nesting before parsing. A header this short cannot nest deep enough to trouble the parser.
_FAST_HEADER_BYTES = 256
#: Header keys the burst fast path handles itself; any other key takes the general path.
_FAST_KEYS = frozenset({"model", "seq", "ts"})
#: A ``ts`` the burst fast path takes (finite, |ts| below this); any other takes the general path. Below
#: 2**63, so an integer literal orjson turned into a float never passes (json.loads keeps it an int).
_FAST_TS_LIMIT = 9.0e18
#: ``(str, index) -> (object, end)``: the C scanner behind ``json.loads`` (without orjson).
_SCAN_JSON = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def errno_name(code: Optional[int]) -> str:
    """``EADDRINUSE`` for 98; libzmq's own codes by their zmq names; ``errno N`` otherwise."""
    if code is None:
        return "no errno"
    name = errno.errorcode.get(code)
    if name:
        return name
    try:
        return zmq.Errno(code).name
    except ValueError:
        return f"errno {code}"


class ZmqSource(Source):
    """PULL socket source.

    Args:
        specs: model name -> ``ModelEntry`` (every input), ``LoadedModel`` or a v1 ``TensorSpec``.
        endpoint: ZeroMQ endpoint; ``tcp://*:5555`` binds all interfaces.
        bind: bind (default) or connect to ``endpoint``.
        rcvhwm: receive high-water mark (messages per peer) — the backpressure buffer.
        max_msg_bytes: ``ZMQ_MAXMSGSIZE`` (bytes per frame; a peer sending more is
            disconnected by libzmq) and the limit on a whole message (``oversize``).
        name: source name in stats and logs.
        context: ZeroMQ context to use (default: the process-wide instance).
    """

    def __init__(
        self,
        specs: Mapping[str, Any],
        endpoint: str = "tcp://*:5555",
        bind: bool = True,
        rcvhwm: int = 1000,
        max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES,
        name: str = "zmq",
        context: Optional[zmq.Context] = None,
    ) -> None:
        super().__init__(specs, name)
        self.endpoint = endpoint
        self.bind = bind
        self.rcvhwm = rcvhwm
        self.max_msg_bytes = max_msg_bytes
        self.context = context
        self.bound_endpoint: Optional[str] = None
        self.ready = threading.Event()
        self._sock: Optional[zmq.Socket] = None
        #: models the burst fast path may take: one data input of fixed shape (v1 two-frame messages)
        self._fast_specs: Dict[str, TensorSpec] = {
            n: c.spec for n, c in self.contracts.items() if c.v1 and all(c.spec.sample_shape)}

    def open_socket(self) -> zmq.Socket:
        """Create, configure and bind/connect the PULL socket (also sets ``bound_endpoint``)."""
        ctx = self.context or zmq.Context.instance()
        sock = ctx.socket(zmq.PULL)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_msg_bytes)
            if self.bind:
                sock.bind(self.endpoint)
                self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(self.endpoint)
                self.bound_endpoint = self.endpoint
        except zmq.ZMQError:
            sock.close(0)
            raise
        return sock

    def open(self) -> None:
        """Create the socket and bind (or connect) it now, synchronously. Idempotent.

        Raises :class:`~edged.errors.SourceError` naming the endpoint and the errno, e.g.
        ``zmq source 'zmq': cannot bind tcp://*:5555: Address already in use (EADDRINUSE)``.
        """
        if self._sock is not None:
            return
        try:
            sock = self.open_socket()
        except zmq.ZMQError as exc:
            self.stats.count_error()
            raise SourceError(f"zmq source {self.name!r}: cannot {'bind' if self.bind else 'connect'} "
                              f"{self.endpoint}: {zmq.strerror(exc.errno or 0)} ({errno_name(exc.errno)})") from None
        self._sock = sock
        self.ready.set()
        log.info("source %s: PULL %s %s", self.name, "bound to" if self.bind else "connected to", self.bound_endpoint)

    def close(self) -> None:
        """Close a socket taken by :meth:`open` when the source will not run (a failed start-up)."""
        if self._thread is None and self._sock is not None:
            self._sock.close(0)
            self._sock = None
            self.ready.clear()

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Receive until ``stop`` is set; then unbind, drain what reached the socket, and close it."""
        try:
            self.open()
        except SourceError as exc:  # run() never raises: start() has already raised this to the caller
            log.error("%s", exc)
            return
        sock = self._sock
        assert sock is not None
        try:
            while not stop.is_set():
                try:
                    if not sock.poll(POLL_MS):
                        continue
                    burst = self._recv_burst(sock)
                    # every received message is handled (delivered or counted), even if stop was set meanwhile
                    self.handle_burst(burst, sink)
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.ETERM:
                        return
                    self.stats.count_error()
                    log.error("source %s: receive failed: %s", self.name, exc)
                    stop.wait(0.1)
                except Exception:
                    self.stats.count_error()
                    log.exception("source %s: unexpected error handling a burst", self.name)
            self.drain(sock, sink)
        finally:
            sock.close(0)
            self._sock = None
            self.ready.clear()

    def drain(self, sock: zmq.Socket, sink: Sink) -> int:
        """Stop taking new messages and handle every one already in the socket; returns how many.

        Unbinds (bind mode) or disconnects (connect mode) first: libzmq then closes the
        peers' connections and senders queue on their side (PUSH reconnects later), while
        messages already received stay readable. They are read until the socket stays
        empty for :data:`DRAIN_QUIET_MS` (at most :data:`DRAIN_MAX_S`), each validated and
        delivered or counted like any other.
        """
        try:
            if self.bind:
                if self.bound_endpoint:
                    sock.unbind(self.bound_endpoint)
            else:
                sock.disconnect(self.endpoint)
        except zmq.ZMQError as exc:
            log.warning("source %s: cannot unbind %s before draining: %s", self.name, self.bound_endpoint, exc)
        drained = 0
        deadline = time.monotonic() + DRAIN_MAX_S
        try:
            while time.monotonic() < deadline:
                burst = self._recv_burst(sock)
                if burst:
                    drained += len(burst)
                    try:
                        self.handle_burst(burst, sink)
                    except Exception:
                        self.stats.count_error()
                        log.exception("source %s: unexpected error handling a burst", self.name)
                    continue
                if not sock.poll(DRAIN_QUIET_MS):
                    break
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ETERM:
                self.stats.count_error()
                log.error("source %s: draining failed: %s", self.name, exc)
        log.info("source %s: stopped taking messages on %s; handled %d that had reached the socket",
                 self.name, self.bound_endpoint, drained)
        return drained

    @staticmethod
    def _recv_burst(sock: zmq.Socket) -> List[Tuple[List[bytes], float]]:
        """Up to :data:`DRAIN_BATCH` queued messages with their arrival times, without blocking.

        Same as ``recv_multipart(NOBLOCK)`` in a loop, minus its per-call Python overhead.
        """
        burst: List[Tuple[List[bytes], float]] = []
        recv = sock.recv
        more = sock.get
        noblock = zmq.NOBLOCK
        rcvmore = zmq.RCVMORE
        try:
            for _ in range(DRAIN_BATCH):
                frames = [recv(noblock)]
                while more(rcvmore):  # the remaining parts of a message are already here (atomic delivery)
                    frames.append(recv(noblock))
                burst.append((frames, time.monotonic()))
        except zmq.Again:
            pass
        except zmq.ZMQError:
            if not burst:
                raise
            # e.g. ETERM: hand over what was read; the next call raises it again
        return burst

    def handle_burst(self, burst: Sequence[Tuple[List[bytes], float]], sink: Sink) -> None:
        """Validate and deliver messages received back to back, in order.

        Fixed-size two-frame inputs of the same model whose header holds only ``model``,
        ``seq`` and ``ts`` are converted and checked for NaN/inf together (one numpy call
        per model per burst instead of per message); anything else takes the general
        per-message path. Either way each message is its own failure domain.
        """
        fast: Dict[str, List[int]] = {}
        parsed: List[Optional[Tuple[Dict[str, Any], int]]] = [None] * len(burst)
        specs = self._fast_specs
        max_bytes = self.max_msg_bytes
        try:  # never expected to raise; if it does, every message of the burst takes the general path
            for i, (frames, _) in enumerate(burst):
                if len(frames) != 2:
                    continue
                head, payload = frames
                if len(head) > _FAST_HEADER_BYTES:  # bounded before parsing: <= 128 nesting levels reach the scanner
                    continue
                if orjson_loads is not None:  # orjson: 0.3 us instead of 0.7 on a small header
                    # Where orjson and json.loads differ, the general path (json.loads' answer) decides:
                    # orjson refuses NaN, lone surrogates, a BOM...; an integer literal beyond 64 bits
                    # comes back as a float of magnitude >= 2**63 (seq: not an int; ts: out of range below).
                    try:
                        header = orjson_loads(head)
                    except Exception:  # NaN, lone surrogate, not JSON, not bytes...: the general path judges it
                        continue
                else:
                    try:  # the decoder's scanner without json.loads' wrappers: ~4x faster on a small header
                        text = head.decode("utf-8")
                        header, end = _SCAN_JSON(text, 0)
                    except Exception:  # StopIteration, ValueError (UnicodeDecodeError, JSONDecodeError): general path
                        continue
                    if end != len(text):  # trailing bytes/whitespace: let the general path judge it
                        continue
                if type(header) is not dict or not header.keys() <= _FAST_KEYS:
                    continue
                model = header.get("model")
                spec = specs.get(model) if type(model) is str else None
                seq = header.get("seq")
                if spec is None or (seq is not None and (type(seq) is not int or seq < 0 or seq > MAX_SEQ)):
                    continue
                layout = _layout(spec)
                ts = header.get("ts")
                if len(payload) != layout.nbytes or \
                        (ts is not None and (type(ts) is not float or not -_FAST_TS_LIMIT < ts < _FAST_TS_LIMIT)) or \
                        len(head) + len(payload) > max_bytes:
                    continue
                parsed[i] = (header, -1 if seq is None else seq)
                fast.setdefault(str(model), []).append(i)
        except Exception:
            self.stats.count_error()
            self._log_traceback("fast path pre-scan failed for a burst; handling its messages one by one")
            fast = {}
            parsed = [None] * len(burst)
        rows: Dict[int, Tuple[np.ndarray, bool]] = {}
        try:
            for model, idx in fast.items():
                layout = _layout(specs[model])
                block = np.frombuffer(b"".join([burst[i][0][1] for i in idx]), dtype=layout.wire)
                block = (block.astype(layout.native) if layout.swap else block.copy()).reshape(
                    (len(idx),) + layout.shape)
                finite = np.isfinite(block.reshape(len(idx), -1)).all(axis=1) if layout.is_float else None
                for k, i in enumerate(idx):
                    rows[i] = (block[k], True if finite is None else bool(finite[k]))
        except Exception:  # never expected; the general path then judges every message on its own
            self.stats.count_error()
            self._log_traceback("fast path failed for a burst; handling its messages one by one")
            parsed = [None] * len(burst)
        stats = self.stats
        many = batch_sink(sink)
        ready: List[Sample] = []  # fast-path samples, handed over together (in order) when the sink takes many
        for i, (frames, t_arrival) in enumerate(burst):
            item = parsed[i]
            if item is None:
                self.deliver_many(ready, sink, many)  # what came before it goes first: order holds
                self.handle_message(frames, sink, t_arrival)
                continue
            try:
                header, seq = item
                arr, ok = rows[i]
                model = header["model"]
                if not ok:
                    self.deliver_many(ready, sink, many)  # the inputs before it are recorded before it
                    self.reject("non_finite", f"model {model!r} input has NaN/inf value(s)", header,
                                t_arrival=t_arrival)
                    continue
                if seq < 0:
                    seq = self.next_local_seq(model)
                else:
                    stats.track_seq(("", model), seq)
                sample = Sample(model, seq, arr, self.name, t_arrival=t_arrival, sender_ts=header.get("ts"))
                if many is not None:
                    ready.append(sample)
                    continue
                stats.accepted += 1
                if not sink(sample):
                    stats.count_downstream_refusal()
            except Exception as exc:
                self.reject_unexpected(exc, item[0], t_arrival=t_arrival)
        self.deliver_many(ready, sink, many)

    def handle_message(self, frames: List[bytes], sink: Sink, t_arrival: Optional[float] = None) -> bool:
        """Validate one received message and deliver it; False if rejected or refused downstream.

        Never raises: a refusal is counted under its reason (and reported to ``on_rejected``
        when the header named a catalogue model); anything unexpected is ``internal_error``.
        """
        try:
            sample = self.parse_message(frames, t_arrival)
        except FrameError as err:
            if err.reason == "internal_error":
                self.reject_unexpected(err.__cause__ or err, err.header, t_arrival=t_arrival)
            else:
                self.reject_error(err, t_arrival=t_arrival)
            return False
        except Exception as exc:  # pragma: no cover - parse_message converts every exception
            self.reject_unexpected(exc, t_arrival=t_arrival)
            return False
        try:
            return self.deliver(sample, sink)
        except Exception as exc:
            self.stats.count_error()
            self._log_traceback(f"sink failed for one sample ({type(exc).__name__})", exc)
            return False

    def parse_message(self, frames: List[bytes], t_arrival: Optional[float] = None) -> Sample:
        """One message -> Sample, or :class:`FrameError` with the rejection reason (and the header, if
        it was parsed). Any other exception is converted to FrameError ``internal_error``.

        Order: frame count, message size (``oversize``), header / JSON (size, nesting, object),
        then :func:`~edged.sources.validate.check_header`, the ``tensors`` (v2) and the body checks.
        """
        header: Optional[Dict[str, Any]] = None
        try:
            if not 1 <= len(frames) <= 1 + MAX_TENSORS:
                raise FrameError("bad_header", f"message has {len(frames)} frames; expected 1 (JSON), 2 "
                                               f"(header+payload) or 1 + one per tensor (at most {1 + MAX_TENSORS})")
            size = sum(len(f) for f in frames)
            if size > self.max_msg_bytes:
                raise FrameError("oversize", f"message of {size} bytes; limit {self.max_msg_bytes}",
                                 header=self._header_for_attribution(frames))
            t = time.monotonic() if t_arrival is None else t_arrival
            if len(frames) >= 2:
                header = parse_header_json(frames[0])
                return self.sample_from_frames(header, frames[1:], t)
            msg: Any = parse_json(frames[0], "one-frame message", "unparsable")
            if isinstance(msg, dict) and ("data" in msg or "inputs" in msg):
                header = msg  # attributes whatever goes wrong from here on
            return self.sample_from_json(msg, t)
        except FrameError as err:
            if err.header is None:
                err.header = header
            raise
        except Exception as exc:
            raise FrameError("internal_error", f"{type(exc).__name__}: {str(exc)[:200]}", header=header) from exc

    @staticmethod
    def _header_for_attribution(frames: List[bytes]) -> Optional[Dict[str, Any]]:
        """The header of an oversize multi-frame message, if it is itself small and parses (else None)."""
        if len(frames) < 2 or len(frames[0]) > MAX_HEADER_BYTES:
            return None
        try:
            return parse_header_json(frames[0])
        except FrameError:
            return None
