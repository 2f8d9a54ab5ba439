"""A subscriber that prints results as they come: ``python -m edged.sinks.watch ENDPOINT``.

``ENDPOINT`` is the ZeroMQ sink's address (``tcp://127.0.0.1:5557``) or an MQTT broker
(``mqtt://host:1883``, topic filter ``--topic``, default ``edged/results/#``). One line per
result::

    mlp/dev-1  seq 7  local  180 us  probs: 1 benign 0.998  [probs float32 (2,)]

It is what the demo shows next to the daemon, and a template for a consumer.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence


def summary_text(result: Any) -> str:
    """One output summary as a few words: label, name and score; values; shape and mean."""
    if not isinstance(result, Mapping):
        return "-"
    if "label" in result and not isinstance(result.get("label"), Mapping):  # one classifier's summary
        name = result.get("name")
        return f"{result.get('label')}{' ' + str(name) if name not in (None, '') else ''} {result.get('score')}"
    parts = []
    for name, s in result.items():
        if not isinstance(s, Mapping):
            continue
        if "label" in s:
            parts.append(f"{name}: {s.get('label')} {s.get('name') or ''} {s.get('score')}".replace("  ", " "))
        elif "values" in s:
            vals = ", ".join(str(v) for v in list(s.get("values") or [])[:4])
            parts.append(f"{name}: [{vals}{', ...' if (s.get('n') or 0) > 4 else ''}]")
        else:
            parts.append(f"{name}: {tuple(s.get('shape') or ())} mean {s.get('mean')}")
    return "; ".join(parts) or "-"


def line(topic: str, head: Mapping[str, Any], shapes: Optional[Sequence[Mapping[str, Any]]] = None) -> str:
    """The printed line of one result."""
    lat = head.get("latency_us")
    what = summary_text(head.get("result")) if not head.get("error") else f"ERROR {head.get('error')}"
    outs = " ".join(f"{d.get('name')} {d.get('dtype')} {tuple(d.get('shape') or ())}" for d in (shapes or []))
    return (f"{topic}  seq {head.get('seq')}  {head.get('decision')}  "
            f"{'-' if lat is None else f'{lat:.0f} us'}  {what}" + (f"  [{outs}]" if outs else ""))


def watch_zmq(endpoint: str, prefix: str, stop: threading.Event, out: Any = sys.stdout, count: int = 0) -> int:
    import zmq

    from edged.sinks.zmq import decode_result

    s: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    s.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    n = 0
    try:
        while not stop.is_set() and (not count or n < count):
            if not s.poll(200):
                continue
            topic, head, _ = decode_result(s.recv_multipart())
            print(line(topic, head, head.get("outputs")), file=out, flush=True)
            n += 1
    finally:
        s.close(0)
    return n


def watch_mqtt(url: str, topic: str, stop: threading.Event, out: Any = sys.stdout, count: int = 0) -> int:
    from edged.sinks.mqtt_broker import import_paho

    mqtt = import_paho("edged.sinks.watch")
    hostport = url.split("://", 1)[1]
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "1883")
    got: List[int] = [0]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        head: Dict[str, Any] = json.loads(msg.payload)
        print(line(msg.topic, head, head.get("outputs")), file=out, flush=True)
        got[0] += 1
        if count and got[0] >= count:
            stop.set()

    c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe(topic, qos=1)
    c.on_message = on_message
    c.connect(host or "localhost", int(port or 1883))
    c.loop_start()
    try:
        stop.wait()
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edged.sinks.watch", description="print edged results as they come")
    ap.add_argument("endpoint", help="tcp://HOST:PORT (the zmq sink) or mqtt://HOST[:PORT] (a broker)")
    ap.add_argument("--topic", default=None,
                    help="ZeroMQ topic prefix (default all) or MQTT filter (default edged/results/#)")
    ap.add_argument("--count", type=int, default=0, help="exit after this many results (0 = run until Ctrl-C)")
    args = ap.parse_args(argv)
    from edged.signals import stop_on_signals

    stop = threading.Event()
    with stop_on_signals(stop):  # never Event.set() inside a signal handler (see edged/signals.py)
        if args.endpoint.startswith(("mqtt://", "mqtts://")):
            watch_mqtt(args.endpoint, args.topic or "edged/results/#", stop, count=args.count)
        else:
            watch_zmq(args.endpoint, args.topic or "", stop, count=args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
