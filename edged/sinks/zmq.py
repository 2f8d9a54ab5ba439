"""ZeroMQ result sink: a PUB socket, one multipart message per result.

Message frames::

    [topic, header JSON, output 0 bytes, output 1 bytes, ...]

* ``topic``: the ``topic`` template filled in (default ``{model}/{sender}``, e.g.
  ``mlp/dev-7``; ``-`` for a record without a sender). Subscribers prefix-match, so
  ``mlp/`` takes every result of ``mlp`` and ``""`` takes everything.
* ``header``: UTF-8 JSON object: ``model``, ``seq``, ``sender``, ``source``, ``decision``
  (where it ran: ``local``, ``offload``, ``fallback``, or ``rejected``), ``reason``,
  ``latency_us``, ``exec_us``, ``ts``, ``sender_ts``, ``result`` (the summary of the
  record), ``error``, and ``outputs``: ``[{"name", "dtype", "shape"}]``, one entry per
  following frame.
* one frame per output: the raw array, C order, little-endian, batch dimension removed
  (``np.frombuffer(frame, dtype).reshape(shape)`` gives it back; :func:`decode_result`).

The socket is an XPUB with ``ZMQ_XPUB_NODROP``: a message that would exceed a
subscriber's ``SNDHWM`` makes ``send(NOBLOCK)`` fail with EAGAIN instead of being
discarded silently by libzmq, so every drop is counted (``dropped``). The daemon's
writer thread never waits. One slow subscriber therefore makes the results published
while it is behind count as dropped for every subscriber: give dashboards their own
sink if that matters.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import zmq

from edged._json import dumps_header
from edged.endpoints import check_zmq_endpoint
from edged.errors import EdgedError
from edged.sinks.base import Result, ResultSink, SinkConfig, describe_outputs, output_items

log = logging.getLogger("edged.sinks.zmq")

#: Record keys a result header carries (when the record has them), in this order.
HEADER_KEYS = ("model", "seq", "sender", "source", "decision", "reason", "latency_us", "exec_us", "ts",
               "sender_ts", "fog", "result", "error")
#: Placeholders a topic template may use.
TOPIC_FIELDS = ("model", "sender", "decision", "source")
#: Topic text for a record without a sender.
NO_SENDER = "-"
#: How often ``publish_many`` reads the (un)subscription notices XPUB queues (s).
SUBSCRIPTION_POLL_S = 0.1
#: Output frames at least this large are sent zero-copy (bytes).
ZERO_COPY_BYTES = 65536


def check_topic_template(template: str, fields: Sequence[str] = TOPIC_FIELDS) -> Optional[str]:
    """None if ``template`` only uses ``{field}`` placeholders from ``fields``, else what is expected."""
    import string

    try:
        names = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"a topic template like '{{model}}/{{sender}}' ({exc})"
    bad = [n for n in names if n not in fields]
    if bad:
        return f"a topic template using only {', '.join('{' + f + '}' for f in fields)}; not {{{bad[0]}}}"
    return None


def _check_topic(value: str) -> Optional[str]:
    return check_topic_template(value)


@dataclass(frozen=True)
class ZmqSinkConfig(SinkConfig):
    """``[[sinks]] type = "zmq"``.

    Attributes:
        endpoint: where the PUB (XPUB) socket binds, or connects with ``bind = false``.
        bind: bind (default) or connect.
        sndhwm: messages queued per subscriber before publishing counts drops (``ZMQ_SNDHWM``).
        topic: topic template (``{model}``, ``{sender}``, ``{decision}``, ``{source}``).
        outputs: send one raw frame per output (false: header only).
        linger_ms: on close, how long queued results may still be sent (ms).
    """

    type: str = "zmq"
    name: str = "zmq-results"
    endpoint: str = "tcp://*:5557"
    bind: bool = True
    sndhwm: int = field(default=10000, metadata={"min": 1})
    topic: str = field(default="{model}/{sender}", metadata={"check": _check_topic})
    outputs: bool = True
    linger_ms: int = field(default=1000, metadata={"min": 0})

    def problems(self) -> List[str]:
        bad = check_zmq_endpoint(self.endpoint, bind=self.bind)
        return [f"endpoint = {self.endpoint!r}: expected {bad}"] if bad else []


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _make_encoder() -> Any:
    """Compact JSON, NaN refused (summaries hold None for non-finite values), non-ASCII escaped.

    Built once on the C scanner of the json module: ``JSONEncoder.encode`` makes a new one on every
    call, which is a quarter of the cost of a small header. Falls back to it where the C part is absent.
    """
    slow = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default).encode
    try:
        from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - CPython always has it
        return slow
    if c_make_encoder is None:  # pragma: no cover
        return slow
    enc = c_make_encoder(None, _json_default, encode_basestring_ascii, None, ":", ",", False, False, False)

    def encode(o: Any) -> str:
        if isinstance(o, str):
            return slow(o)
        return "".join(enc(o, 0))

    return encode


#: The header encoder (see :func:`_make_encoder`).
_ENCODE = _make_encoder()


def topic_formatter(template: str) -> Any:
    """A fast ``record -> topic str`` for the common templates, ``str.format`` otherwise."""
    if template == "{model}/{sender}":
        return lambda rec: f"{rec.get('model')}/{rec.get('sender') or NO_SENDER}"
    if template == "{model}":
        return lambda rec: str(rec.get("model"))

    def fmt(rec: Dict[str, Any]) -> str:
        return template.format(model=rec.get("model"), sender=rec.get("sender") or NO_SENDER,
                               decision=rec.get("decision"), source=rec.get("source") or "")
    return fmt


#: (name, dtype, shape) of each output -> the ``"outputs":[...]`` JSON fragment (bounded cache)
_OUTPUTS_JSON: Dict[Tuple[Any, ...], bytes] = {}
_MAX_OUTPUTS_JSON = 1024


def encode_result(result: Result, with_outputs: bool = True) -> Tuple[bytes, List[np.ndarray]]:
    """``(header JSON bytes, [arrays])`` of one result: what follows the topic frame."""
    items = output_items(result.outputs) if with_outputs else []
    rec = result.record
    head = {k: rec[k] for k in HEADER_KEYS if k in rec}
    key = tuple((n, a.dtype, a.shape) for n, a in items)
    frag = _OUTPUTS_JSON.get(key)
    if frag is None:
        frag = b'"outputs":' + dumps_header(describe_outputs(items), _ENCODE, _json_default)
        if len(_OUTPUTS_JSON) < _MAX_OUTPUTS_JSON:
            _OUTPUTS_JSON[key] = frag
    # orjson where it gives json's answer (edged._json): else _ENCODE (ASCII; NaN raises)
    text = dumps_header(head, _ENCODE, _json_default)
    return text[:-1] + (b"," if len(text) > 2 else b"") + frag + b"}", [a for _, a in items]


def decode_result(frames: Sequence[bytes]) -> Tuple[str, Dict[str, Any], Dict[str, np.ndarray]]:
    """A subscriber's view of one message: ``(topic, header, {output name: array})``."""
    if len(frames) < 2:
        raise ValueError(f"a result message has at least 2 frames (topic, header), got {len(frames)}")
    topic = bytes(frames[0]).decode("utf-8")
    header = json.loads(bytes(frames[1]))
    descs = header.get("outputs") or []
    if len(descs) != len(frames) - 2:
        raise ValueError(f"header lists {len(descs)} outputs but the message has {len(frames) - 2} output frames")
    outs = {d["name"]: np.frombuffer(bytes(f), dtype=np.dtype(d["dtype"]).newbyteorder("<")).reshape(d["shape"])
            for d, f in zip(descs, frames[2:])}
    return topic, header, outs


class ZmqSink(ResultSink):
    """PUB (XPUB, NODROP) sink; see the module doc for the message format.

    Args:
        config: the sink's :class:`ZmqSinkConfig`.
        context: ZeroMQ context (default: the process-wide one).
    """

    type_name = "zmq"

    def __init__(self, config: ZmqSinkConfig, context: Optional[zmq.Context] = None) -> None:
        super().__init__(config)
        self.cfg = config
        self.context = context
        self.bound_endpoint: Optional[str] = None
        self.subscriptions = 0
        self.no_subscriber = 0  # results sent while nobody subscribed: ZeroMQ delivers them to no one
        self._sock: Optional[zmq.Socket] = None
        self._lock = threading.Lock()
        self._topic = topic_formatter(config.topic)
        self._drained_at = 0.0

    def open(self) -> None:
        """Create the XPUB socket and bind/connect it now. Raises EdgedError naming the endpoint."""
        if self._sock is not None:
            return
        ctx = self.context or zmq.Context.instance()
        sock = ctx.socket(zmq.XPUB)
        verb = "bind" if self.cfg.bind else "connect"
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, self.cfg.sndhwm)
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            if hasattr(zmq, "XPUB_VERBOSER"):
                sock.setsockopt(zmq.XPUB_VERBOSER, 1)
            if self.cfg.bind:
                sock.bind(self.cfg.endpoint)
                self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(self.cfg.endpoint)
                self.bound_endpoint = self.cfg.endpoint
        except zmq.ZMQError as exc:
            sock.close(0)
            self.errors += 1
            raise EdgedError(f"{self.cfg.label()}: cannot {verb} {self.cfg.endpoint}: "
                             f"{zmq.strerror(exc.errno or 0)}") from None
        self._sock = sock
        log.info("sink %s: PUB %s %s", self.name, "bound to" if self.cfg.bind else "connected to", self.bound_endpoint)

    def _drain_subscriptions(self, sock: zmq.Socket) -> None:
        """Read the (un)subscription messages XPUB queues for us (never blocks)."""
        while int(sock.get(zmq.EVENTS)) & zmq.POLLIN:  # type: ignore[arg-type]
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscriptions += 1
            elif msg[:1] == b"\x00":
                self.subscriptions = max(0, self.subscriptions - 1)

    def wait_for_subscribers(self, n: int = 1, timeout_s: float = 5.0) -> bool:
        """Wait until ``n`` subscriptions reached the socket (ZeroMQ's slow joiner), at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                sock = self._sock
                if sock is None:
                    return False
                self._drain_subscriptions(sock)
                if self.subscriptions >= n:
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.01, left))

    def publish_many(self, results: Sequence[Result]) -> None:
        with self._lock:
            sock = self._sock
            if sock is None:
                self.dropped += len(results)
                self._state = "not open"
                return
            now = time.monotonic()
            if not self.subscriptions or now - self._drained_at >= SUBSCRIPTION_POLL_S:
                self._drained_at = now
                self._drain_subscriptions(sock)
            if not self.subscriptions:  # PUB semantics: no subscriber, no delivery; counted, not called published
                self.no_subscriber += len(results)
                return
            send = sock.send
            more = zmq.SNDMORE | zmq.NOBLOCK
            last = zmq.NOBLOCK
            topic_of = self._topic
            with_outputs = self.cfg.outputs
            for r in results:
                try:
                    head, arrays = encode_result(r, with_outputs)
                    topic = topic_of(r.record).encode("utf-8")
                    try:
                        send(topic, more)
                    except zmq.Again:  # at HWM for a subscriber: counted, never waited for
                        self.dropped += 1
                        continue
                    if arrays:
                        send(head, more)
                        n = len(arrays)
                        for k, a in enumerate(arrays):
                            send(a.data if a.ndim else a.tobytes(), more if k < n - 1 else last,
                                 copy=a.nbytes < ZERO_COPY_BYTES)
                    else:
                        send(head, last)
                    self.published += 1
                except Exception as exc:  # one result's failure costs only that result
                    self.count_error("cannot publish a result", exc)

    def stats(self) -> Dict[str, int]:
        s = super().stats()
        s["subscriptions"] = self.subscriptions
        s["no_subscriber"] = self.no_subscriber
        return s

    def info(self) -> Dict[str, Any]:
        return {**super().info(), "endpoint": self.bound_endpoint or self.cfg.endpoint, "bind": self.cfg.bind,
                "topic": self.cfg.topic}

    def close(self, timeout_s: float = 2.0) -> None:
        """Give queued results up to ``min(linger_ms, timeout_s)`` to reach subscribers, then close."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        linger = int(max(0.0, min(self.cfg.linger_ms / 1000.0, timeout_s)) * 1000)
        try:
            sock.setsockopt(zmq.LINGER, linger)
        finally:
            sock.close()
