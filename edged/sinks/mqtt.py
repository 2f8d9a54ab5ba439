"""MQTT result sink: one message per result, published through paho-mqtt's own queue.

Topic: the ``topic`` template (default ``edged/results/{model}/{sender}``; a record
without a sender uses ``-``; ``/ + #`` and NUL in a sender or model become ``_`` so a
sender can never add topic levels or wildcards). Payload: the UTF-8 JSON result header
of the ZeroMQ sink (``model``, ``seq``, ``sender``, ``source``, ``decision``, ``reason``,
``latency_us``, ``exec_us``, ``ts``, ``sender_ts``, ``result``, ``error``, ``outputs``:
``[{"name", "dtype", "shape"}]``); with ``include_outputs = true`` each output entry also
holds ``data`` (nested lists) when it has at most ``max_output_values`` values.

Never blocking, never silently losing: ``publish_many`` only appends to a bounded
hand-off queue; the sink's publisher thread encodes each result and gives it to paho
(whose locks its network thread may hold for a while, e.g. re-queueing thousands of
messages on a reconnect), and paho's network thread does the I/O. Every result handed to
the sink ends in exactly one of

* ``delivered``: QoS 0 written to the broker's socket; QoS 1/2 acknowledged (PUBACK/PUBCOMP);
* ``dropped``: refused (``max_queued`` results already waiting, or QoS 0 while
  disconnected), or QoS 0 results that were queued when the connection broke;
* ``queued``: handed over and still waiting (QoS >= 1 while the broker is down: delivered
  after the reconnect; counted as dropped if still waiting at ``close``),

so ``results == delivered + dropped + queued`` at any time. With ``protocol = "5"`` a result
the broker refuses (PUBACK reason code, e.g. an ACL forbidding its topic) counts as dropped;
MQTT 3.1.1 has no such code: brokers acknowledge and discard it. QoS 1 may deliver a result
twice to a subscriber after a reconnect (at-least-once): the header's ``model``,
``sender`` and ``seq`` identify duplicates.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Optional, Sequence, Set

from edged._json import dumps_header
from edged.sinks.base import Result, ResultSink, SinkConfig, describe_outputs, header_of, output_items
from edged.sinks.mqtt_broker import (
    BrokerConfig,
    connect_kwargs,
    describe_os_error,
    describe_reason,
    is_failure,
    make_client,
)
from edged.sinks.zmq import HEADER_KEYS, _json_default, check_topic_template

log = logging.getLogger("edged.sinks.mqtt")

_WHAT = "sink 'mqtt'"
#: paho's message ids are 16-bit: at most this many results may wait at once.
MAX_QUEUED_LIMIT = 60000
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default).encode
_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


def topic_level(value: Any) -> str:
    """``value`` as one MQTT topic level: never empty, no ``/``, ``+``, ``#`` or NUL."""
    s = str(value) if value not in (None, "") else "-"
    return s.translate(_TOPIC_UNSAFE)


def _check_topic(value: str) -> Optional[str]:
    bad = check_topic_template(value)
    if bad:
        return bad
    if not value or "+" in value or "#" in value:
        return "a topic without wildcards (+ or #), e.g. 'edged/results/{model}/{sender}'"
    return None


@dataclass(frozen=True)
class MqttSinkConfig(SinkConfig, BrokerConfig):
    """``[[sinks]] type = "mqtt"``: the broker keys of :class:`BrokerConfig` plus:

    Attributes:
        topic: topic template (``{model}``, ``{sender}``, ``{decision}``, ``{source}``).
        qos: 0, 1 or 2.
        retain: set the retain flag (a new subscriber gets the last result per topic).
        max_queued: most results waiting in paho's queue (QoS >= 1 while the broker is
            down, or not yet written); beyond it results are dropped (counted).
        include_outputs: put the raw outputs in the JSON (``outputs[i].data``).
        max_output_values: larger outputs are left out of the JSON (``"omitted": true``).
        connect_wait_s: ``open()`` waits this long for the first connection (s); the daemon
            starts anyway if the broker is down (state says so; results queue or drop).
        clean_session: start a clean MQTT session on each connect.
    """

    type: str = "mqtt"
    name: str = "mqtt-results"
    topic: str = field(default="edged/results/{model}/{sender}", metadata={"check": _check_topic})
    qos: int = field(default=1, metadata={"choices": (0, 1, 2)})
    retain: bool = False
    max_queued: int = field(default=10000, metadata={"min": 1, "max": MAX_QUEUED_LIMIT})
    include_outputs: bool = False
    max_output_values: int = field(default=1024, metadata={"min": 1})
    connect_wait_s: float = field(default=1.0, metadata={"min": 0.0})
    clean_session: bool = True


class MqttSink(ResultSink):
    """Publishes results to an MQTT broker (see the module doc); paho runs its own network thread."""

    type_name = "mqtt"

    def __init__(self, config: MqttSinkConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.results = 0
        self.delivered = 0
        self.refused = 0      # publisher thread: QoS 0 while disconnected, a paho error
        self.lost = 0         # QoS 0 queued when the connection broke; refused by the broker (v5 PUBACK
        #                       reason code, e.g. not authorised for the topic); still waiting at close
        self.connects = 0
        self.disconnects = 0
        self._client: Any = None
        self._lock = threading.Lock()
        self._outstanding: Dict[int, int] = {}   # mid -> qos, accepted by paho, not yet delivered
        self._early: Set[int] = set()            # mids paho confirmed before publish() returned them
        self._swept: Set[int] = set()            # QoS 0 mids counted lost at a disconnect
        self._connected = threading.Event()
        self._handoff: Deque[Result] = collections.deque()  # from publish_many to the publisher thread
        self._wake = threading.Event()
        self._stop_publisher = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._closing = False
        self._busy = False
        self.refused_full = 0  # publish_many's own count (the writer thread); refused: the publisher thread's
        self._mqtt: Any = None
        self._state = "not connected yet"

    # ------------------------------------------------------------------ life cycle

    def open(self) -> None:
        """Create the client and connect in the background; wait up to ``connect_wait_s`` for it.

        Raises MissingDependencyError without paho-mqtt and EdgedError for unreadable
        credentials or TLS files. A broker that is down is not an error: paho reconnects
        with backoff, :meth:`state` says why, and results queue (QoS >= 1) or drop.
        """
        if self._client is not None:
            return
        from edged.sinks.mqtt_broker import import_paho

        self._mqtt = import_paho(_WHAT)
        client = make_client(self.cfg, _WHAT, clean=self.cfg.clean_session)
        client.max_queued_messages_set(0)  # our own bound (max_queued) covers every QoS
        client.max_inflight_messages_set(min(self.cfg.max_queued, 1000))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        self._client = client
        client.connect_timeout = max(0.5, min(5.0, self.cfg.connect_wait_s or 5.0))
        try:  # one synchronous attempt, for a precise reason; paho's thread retries with backoff after it
            client.connect(**connect_kwargs(self.cfg, self.cfg.clean_session))
        except (OSError, ValueError) as exc:
            self._state = f"cannot connect to {self.cfg.url}: {describe_os_error(exc)}; retrying"
        client.loop_start()
        self._thread = threading.Thread(target=self._publisher, name=f"sink:{self.name}", daemon=True)
        self._thread.start()
        if self.cfg.connect_wait_s > 0 and not self._connected.wait(self.cfg.connect_wait_s):
            log.warning("sink %s: %s; results %s until it is", self.name, self._state,
                        "queue" if self.cfg.qos else "are dropped")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        if is_failure(reason_code):
            self._state = f"broker {self.cfg.url} refused the connection: {describe_reason(reason_code)}"
            self._log(logging.ERROR, "refused", "sink %s: %s", self.name, self._state)
            return
        self.connects += 1
        self._state = None
        self._connected.set()
        if self.connects > 1:
            log.warning("sink %s: reconnected to %s", self.name, self.cfg.url)
        else:
            log.info("sink %s: connected to %s", self.name, self.cfg.url)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        if not self._state or not self._state.startswith("cannot connect"):
            self._state = f"cannot connect to {self.cfg.url}; retrying"
        self._log(logging.WARNING, "connect", "sink %s: cannot connect to %s; retrying", self.name, self.cfg.url)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any = None,
                       properties: Any = None) -> None:
        was = self._connected.is_set() and not self._stop_publisher.is_set()  # not the disconnect close() asked
        self._connected.clear()
        with self._lock:
            lost = [m for m, q in self._outstanding.items() if q == 0]
            for m in lost:
                del self._outstanding[m]
                self._swept.add(m)
            self.lost += len(lost)
            if len(self._swept) > 2 * MAX_QUEUED_LIMIT:
                self._swept.clear()
        if not was and not self._stop_publisher.is_set() and not (self._state or "").startswith(
                ("broker", "cannot connect to " + self.cfg.url + ":")):
            self._state = (f"cannot connect to {self.cfg.url}: the broker closed the connection before accepting it "
                           f"({describe_reason(reason_code)}); retrying")
            self._log(logging.WARNING, "closed", "sink %s: %s", self.name, self._state)
        if was:
            self.disconnects += 1
            self._state = f"disconnected from {self.cfg.url} ({describe_reason(reason_code)}); reconnecting"
            self._log(logging.WARNING, "disconnect", "sink %s: %s", self.name, self._state)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any = None,
                    properties: Any = None) -> None:
        if reason_code is not None and is_failure(reason_code):  # MQTT 5: the broker refused this message
            with self._lock:
                if self._outstanding.pop(mid, None) is None:
                    self._early.add(-mid - 1)  # refused before publish() returned: see _publish_one
                self.lost += 1
            self._log(logging.ERROR, "puback", "sink %s: broker %s refused a result: %s (does an ACL forbid "
                      "its topic?)", self.name, self.cfg.url, reason_code)
            return
        with self._lock:
            if self._outstanding.pop(mid, None) is not None:
                self.delivered += 1
            elif mid in self._swept:  # written after all: it was counted lost too early
                self._swept.discard(mid)
                self.lost -= 1
                self.delivered += 1
            else:
                self._early.add(mid)

    # ------------------------------------------------------------------ publishing

    def _payload(self, r: Result) -> bytes:
        head = header_of(r.record, HEADER_KEYS)
        items = output_items(r.outputs)
        descs = describe_outputs(items)
        if self.cfg.include_outputs:
            for d, (_, a) in zip(descs, items):
                if a.size <= self.cfg.max_output_values:
                    d["data"] = a.tolist()
                else:
                    d["omitted"] = True
        head["outputs"] = descs
        return dumps_header(head, _ENCODE, _json_default)  # orjson where it gives _ENCODE's answer

    def _topic(self, rec: Dict[str, Any]) -> str:
        t = self.cfg.topic
        if t == "edged/results/{model}/{sender}":
            return f"edged/results/{topic_level(rec.get('model'))}/{topic_level(rec.get('sender'))}"
        return t.format(model=topic_level(rec.get("model")), sender=topic_level(rec.get("sender")),
                        decision=topic_level(rec.get("decision")), source=topic_level(rec.get("source")))

    def publish_many(self, results: Sequence[Result]) -> None:
        """Hand ``results`` to the sink's publisher thread (an append per result; never waits).

        Results beyond ``max_queued`` waiting (handed over, or in paho's queue) are dropped.
        """
        n = len(results)
        self.results += n
        if self._client is None or self._closing:
            self.refused_full += n
            return
        room = self.cfg.max_queued - len(self._handoff) - len(self._outstanding)
        if room < n:
            take = max(0, room)
            self.refused_full += n - take
            results = results[:take]
            if not take:
                return
        self._handoff.extend(results)
        self._wake.set()

    def _publisher(self) -> None:
        """The publisher thread: JSON-encode and hand each result to paho (whose locks it may wait for)."""
        handoff = self._handoff
        while True:
            if not handoff:
                if self._stop_publisher.is_set():
                    return
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            try:
                self._busy = True  # wait_delivered must not see "nothing queued" between pop and publish
                r = handoff.popleft()
            except IndexError:
                self._busy = False
                continue
            self._publish_one(r)
            self._busy = False

    def _publish_one(self, r: Result) -> None:
        client = self._client
        qos = self.cfg.qos
        try:
            if client is None or (qos == 0 and not self._connected.is_set()):
                self.refused += 1
                return
            info = client.publish(self._topic(r.record), self._payload(r), qos=qos, retain=self.cfg.retain)
            rc = info.rc
            ok = rc == 0 or (qos > 0 and rc == self._mqtt.MQTT_ERR_NO_CONN)  # QoS >= 1: kept, sent on reconnect
            if not ok:
                self.refused += 1
                return
            self.published += 1
            with self._lock:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    self.delivered += 1
                elif -info.mid - 1 in self._early:  # refused by the broker already (counted in lost)
                    self._early.discard(-info.mid - 1)
                elif qos == 0 and not self._connected.is_set():
                    self.lost += 1  # the connection broke while we queued it (moved to delivered if written)
                    self._swept.add(info.mid)
                else:
                    self._outstanding[info.mid] = qos
        except Exception as exc:
            self.refused += 1
            self.count_error("cannot publish a result", exc)

    # ------------------------------------------------------------------ reporting

    @property
    def queued(self) -> int:
        """Results handed over and not yet delivered or dropped."""
        return len(self._handoff) + len(self._outstanding)

    def stats(self) -> Dict[str, int]:
        """Counters; at any time ``results == delivered + dropped + queued``."""
        with self._lock:
            queued = len(self._handoff) + len(self._outstanding) + (1 if self._busy else 0)
            s = super().stats()
            s.update(results=self.results, delivered=self.delivered, queued=queued,
                     dropped=self.refused_full + self.refused + self.lost,
                     refused=self.refused_full + self.refused, lost=self.lost,
                     connected=int(self._connected.is_set()), connects=self.connects, disconnects=self.disconnects)
        return s

    def info(self) -> Dict[str, Any]:
        return {**super().info(), "broker": self.cfg.url, "topic": self.cfg.topic, "qos": self.cfg.qos,
                "retain": self.cfg.retain}

    def wait_delivered(self, timeout_s: float) -> bool:
        """Wait until nothing is queued (at most ``timeout_s``); True if so."""
        deadline = time.monotonic() + timeout_s
        while self._handoff or self._outstanding or self._busy:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 2.0) -> None:
        """Give queued results up to ``timeout_s`` to be delivered, then disconnect; the rest count as dropped."""
        if self._client is None:
            return
        self._closing = True  # publish_many refuses from now on
        if self._connected.is_set():
            self.wait_delivered(timeout_s)
        self._stop_publisher.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(1.0, timeout_s))
        client, self._client = self._client, None
        try:
            client.disconnect()
        except Exception:
            pass
        client.loop_stop()
        with self._lock:
            left = len(self._outstanding) + len(self._handoff)
            self._outstanding.clear()
            self._handoff.clear()
            self.lost += left
        if left:
            log.warning("sink %s: %d result(s) still queued at close counted as dropped", self.name, left)
        self._state = "closed"
