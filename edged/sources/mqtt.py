"""MQTT source: subscribe to sensor topics; each message is one input.

Payload forms (docs/protocol.md, "MQTT"), told apart by the first byte:

* ``{`` — the **JSON** form: the ZeroMQ one-frame message, ``{"model": "mlp", "seq": 7,
  "data": [...]}`` (or wire v2 ``"inputs": {name: values}``) plus any header field;
* ``0x00`` — the **binary** form: one serial COBS frame (``0x00 | COBS(header_len |
  header JSON | payload | CRC-32) | 0x00``; the trailing ``0x00`` is optional; wire v2:
  the header's ``tensors`` back to back), so an MCU reuses its serial encoder unchanged;
* with ``format = "raw"`` every payload is a bare array (raw little-endian C order),
  for the simplest publishers (``client.publish("edged/in/mlp/dev7", x, sizeof x)``).

``model`` and ``sender`` missing from a header are read from the topic through
``topic_pattern`` (default ``edged/in/{model}/{sender}``); a header's own fields win.
Everything after that is the same validation as every other transport
(:mod:`edged.sources.validate`), and every message is its own failure domain.

A broker that is down at start is not an error: ``open()`` records why and ``run``
reconnects with backoff (0.1 s doubling to ``reconnect_max_s``), saying so in
:meth:`state`; a broker that refuses the login says so too (and is retried, in case
it is being fixed). Subscriptions are made again after every reconnect.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from edged.errors import EdgedError, SourceError
from edged.sinks.mqtt_broker import (
    BrokerConfig,
    connect_kwargs,
    describe_os_error,
    describe_reason,
    is_failure,
    make_client,
)
from edged.sources.base import Sink, Source
from edged.sources.framing import FrameError, cobs_decode, parse_body, parse_json
from edged.sources.sample import Sample
from edged.sources.stats import OutageLog

log = logging.getLogger("edged.sources.mqtt")

FORMATS = ("auto", "raw")
#: Default per-message size limit (bytes).
DEFAULT_MAX_MSG_BYTES = 4 * 1024 * 1024
#: How long one ``loop()`` call may wait for network traffic (s): how quickly ``run`` notices ``stop``.
LOOP_S = 0.1
BACKOFF_START_S = 0.1
_WHAT = "source 'mqtt'"
_PATTERN_FIELDS = ("model", "sender")


def _check_topics(value: Tuple[str, ...]) -> Optional[str]:
    if not value:
        return "at least one topic filter, e.g. ['edged/in/#']"
    for t in value:
        levels = t.split("/")
        if not t or any(("#" in lv and (lv != "#" or i != len(levels) - 1)) or ("+" in lv and lv != "+")
                        for i, lv in enumerate(levels)):
            return f"MQTT topic filters ('+' a whole level, '#' the last level); not {t!r}"
    return None


def _check_pattern(value: str) -> Optional[str]:
    if not value:
        return None
    for lv in value.split("/"):
        if lv.startswith("{") and lv.endswith("}") and lv[1:-1] not in _PATTERN_FIELDS:
            return f"a pattern whose '{{...}}' levels are {{model}} or {{sender}}; not {lv}"
    return None


@dataclass(frozen=True)
class MqttSourceConfig(BrokerConfig):
    """``[[sources]] type = "mqtt"``: the broker keys of :class:`~edged.sinks.mqtt_broker.BrokerConfig` plus:

    Attributes:
        topics: topic filters to subscribe to (``+``/``#`` wildcards).
        qos: subscription QoS (1: the broker re-sends what edged did not acknowledge).
        topic_pattern: reads ``{model}`` / ``{sender}`` from topic levels when the header
            lacks them (``+`` matches any level, ``#`` the rest); empty = never.
        format: ``auto`` (JSON or COBS frame by the first byte) or ``raw`` (bare arrays).
        max_msg_bytes: larger payloads are ``oversize``.
        clean_session: false (default) keeps edged's subscription and its unacknowledged
            QoS >= 1 inputs at the broker while edged restarts (needs a stable client_id).
    """

    type: str = "mqtt"
    name: str = "mqtt"
    topics: Tuple[str, ...] = field(default=("edged/in/#",), metadata={"check": _check_topics})
    qos: int = field(default=1, metadata={"choices": (0, 1, 2)})
    topic_pattern: str = field(default="edged/in/{model}/{sender}", metadata={"check": _check_pattern})
    format: str = field(default="auto", metadata={"choices": FORMATS})
    max_msg_bytes: int = field(default=DEFAULT_MAX_MSG_BYTES, metadata={"min": 64})
    clean_session: bool = False
    reconnect_min_s: float = field(default=BACKOFF_START_S, metadata={"min": 0.01})
    reconnect_max_s: float = field(default=5.0, metadata={"min": 0.01})


def topic_fields(pattern: str, topic: str) -> Dict[str, str]:
    """``{"model": ..., "sender": ...}`` read from ``topic`` by ``pattern`` ({} if it does not match)."""
    if not pattern:
        return {}
    p = pattern.split("/")
    t = topic.split("/")
    out: Dict[str, str] = {}
    for i, lv in enumerate(p):
        if lv == "#":
            return out
        if i >= len(t):
            return {}
        if lv.startswith("{") and lv.endswith("}"):
            if t[i]:
                out[lv[1:-1]] = t[i]
        elif lv != "+" and lv != t[i]:
            return {}
    return out if len(t) == len(p) else {}


class MqttSource(Source):
    """Subscribes to ``config.topics`` and delivers each valid message as a Sample (see the module doc).

    Args:
        specs: model name -> the model's contract (a catalogue ``ModelEntry`` or ``LoadedModel``, or
            a bare ``TensorSpec``; see :class:`~edged.sources.base.Source`).
        config: the source's :class:`MqttSourceConfig`.
    """

    def __init__(self, specs: Mapping[str, Any], config: MqttSourceConfig, name: Optional[str] = None) -> None:
        super().__init__(specs, name or config.name or "mqtt")
        self.cfg = config
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._client: Any = None
        self._sink: Optional[Sink] = None
        self._state: Optional[str] = None
        self._socket_up = False
        self._was_connected = False
        self._outage = OutageLog(self.name)
        self._refused: Optional[str] = None
        self._tried = False

    # ------------------------------------------------------------------ life cycle

    def open(self) -> None:
        """Create the client and try to connect once. Idempotent.

        Raises :class:`~edged.errors.SourceError` without paho-mqtt or with unreadable
        credentials/TLS files; a broker that is down does not raise (see :meth:`state`).
        """
        if self._client is not None:
            return
        try:
            client = make_client(self.cfg, _WHAT, clean=self.cfg.clean_session)
        except EdgedError as exc:  # names the source and what to do (install paho, fix a file)
            raise SourceError(str(exc)) from None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.connect_timeout = 5.0
        self._client = client
        self._connect_once()

    def _connect_once(self) -> bool:
        client = self._client
        try:
            if self._tried:  # connect() stored host and port even when it failed
                client.reconnect()
            else:
                self._tried = True
                client.connect(**connect_kwargs(self.cfg, self.cfg.clean_session))
        except (OSError, ValueError) as exc:
            self._socket_up = False
            self._state = f"waiting for broker {self.cfg.url}: {describe_os_error(exc)}"
            self._outage.down(f"connecting to {self.cfg.url}", exc)
            return False
        self._socket_up = True
        return True

    def state(self) -> Optional[str]:
        """Why the source is not receiving (broker down, login refused), else None."""
        return self._state

    def close(self) -> None:
        """Disconnect a client made by :meth:`open` when the source will not run."""
        if self._thread is None and self._client is not None:
            self._shutdown()

    def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self.connected.clear()  # a disconnect we asked for is not an outage
        self.subscribed.clear()
        try:
            client.disconnect()
            client.loop(0.05)
        except Exception:
            pass
        self.connected.clear()

    # ------------------------------------------------------------------ paho callbacks (source thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        if is_failure(reason_code):
            self._refused = describe_reason(reason_code)
            self._state = f"broker {self.cfg.url} refused the connection: {self._refused}"
            self._outage.down(f"logging in to {self.cfg.url}", RuntimeError(self._refused))
            return
        self._refused = None
        self._state = None
        self._outage.up()
        if self._was_connected:
            self.stats.count_reconnect()
        self._was_connected = True
        self.connected.set()
        client.subscribe([(t, self.cfg.qos) for t in self.cfg.topics])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any = None) -> None:
        bad = [str(rc) for rc in (reason_codes or []) if is_failure(rc)]
        if bad:
            self._state = f"broker {self.cfg.url} refused the subscription: {', '.join(bad)}"
            log.error("source %s: %s", self.name, self._state)
        else:
            self.subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any = None,
                       properties: Any = None) -> None:
        self._socket_up = False
        if self.connected.is_set() and self._client is not None:
            self.connected.clear()
            self.subscribed.clear()
            self._state = f"waiting for broker {self.cfg.url}: disconnected ({describe_reason(reason_code)})"
            self._outage.down(f"connection to {self.cfg.url}", RuntimeError(str(reason_code)))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        sink = self._sink
        if sink is not None:
            self.handle_message(msg.topic, msg.payload, sink)

    # ------------------------------------------------------------------ loop

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Receive until ``stop``; reconnect with backoff whenever the broker is away."""
        try:
            self.open()
        except SourceError as exc:  # start() raised it already
            log.error("%s", exc)
            return
        self._sink = sink
        client = self._client
        start = self.cfg.reconnect_min_s
        backoff = start
        try:
            while not stop.is_set():
                if not self._socket_up and not self._connect_once():
                    stop.wait(backoff)
                    backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                    continue
                rc = client.loop(timeout=LOOP_S)
                if rc != 0:  # connection lost or refused: the next turn reconnects
                    self._socket_up = False
                    self.connected.clear()
                    if self._state is None:
                        self._state = f"waiting for broker {self.cfg.url}: connection lost ({rc})"
                    stop.wait(backoff)
                    backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                    continue
                if self.connected.is_set():
                    backoff = start
        except Exception:
            self.stats.count_error()
            log.exception("source %s: MQTT loop failed", self.name)
        finally:
            self._shutdown()
            self._sink = None

    # ------------------------------------------------------------------ messages

    def handle_message(self, topic: str, payload: bytes, sink: Sink, t_arrival: Optional[float] = None) -> bool:
        """Validate one message and deliver it; False if refused. Never raises."""
        t = time.monotonic() if t_arrival is None else t_arrival
        model = None
        fields: Dict[str, str] = {}
        try:
            fields = topic_fields(self.cfg.topic_pattern, topic)
            model = fields.get("model")
            sample = self.parse_message(payload, fields, t)
        except FrameError as err:
            if err.header is None and fields:  # refused before a header was read: the topic still attributes it
                err.header = dict(fields)
            if err.reason == "internal_error":
                self.reject_unexpected(err.__cause__ or err, err.header, model=model, t_arrival=t)
            else:
                self.reject_error(err, t_arrival=t, model=model)
            return False
        except Exception as exc:  # pragma: no cover - parse_message converts everything
            self.reject_unexpected(exc, model=model, t_arrival=t)
            return False
        try:
            return self.deliver(sample, sink)
        except Exception as exc:
            self.stats.count_error()
            self._log_traceback(f"sink failed for one sample ({type(exc).__name__})", exc)
            return False

    def parse_message(self, payload: bytes, fields: Mapping[str, str], t_arrival: float) -> Sample:
        """One payload -> Sample, or FrameError (with the header when parsed; ``internal_error`` for
        anything unexpected). Order: size, form, header/JSON, then the validation every source shares
        (wire v1 and v2: a JSON ``inputs`` object, a COBS header with ``tensors``)."""
        header: Optional[Dict[str, Any]] = None
        try:
            data = bytes(payload)
            if len(data) > self.cfg.max_msg_bytes:
                raise FrameError("oversize", f"message of {len(data)} bytes; limit {self.cfg.max_msg_bytes}")
            if self.cfg.format == "raw":
                header = self._with_topic({}, fields)
                return self.sample_from_body(header, data, t_arrival)
            if data.lstrip()[:1] == b"{":
                msg: Any = parse_json(data, "JSON message", "unparsable")
                if isinstance(msg, dict):
                    header = self._with_topic(msg, fields)
                return self.sample_from_json(msg, t_arrival)
            if data[:1] == b"\x00":
                seg = data[1:-1] if len(data) > 1 and data[-1:] == b"\x00" else data[1:]
                header, body = parse_body(cobs_decode(seg))
                header = self._with_topic(header, fields)
                return self.sample_from_body(header, body, t_arrival)
            raise FrameError("bad_header", "payload is neither a JSON object (first byte '{') nor a COBS frame "
                                           "(first byte 0x00); bare arrays need format = 'raw'")
        except FrameError as err:
            if err.header is None:
                err.header = header
            raise
        except Exception as exc:
            raise FrameError("internal_error", f"{type(exc).__name__}: {str(exc)[:200]}", header=header) from exc

    @staticmethod
    def _with_topic(header: Dict[str, Any], fields: Mapping[str, str]) -> Dict[str, Any]:
        for k, v in fields.items():
            if k not in header:
                header[k] = v
        return header

