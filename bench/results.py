#!/usr/bin/env python3
"""Cost of the result sinks per input, and the ZeroMQ PUB sink's sustained rate with one subscriber.

1. Per-input cost: ``publish_many`` of real results (the shipped ``mlp`` run by onnxruntime,
   summarised by ``edged.results.summarize``) in batches of 1 and 32, as the dispatcher's
   writer thread hands them over; each call is timed and divided by its batch size; median
   and p99 in microseconds per result. Sinks: ``zmq`` (a SUB in another process reads
   everything), ``serial`` text and COBS (written to a real pty, read by a thread),
   ``mqtt`` QoS 0 and 1 (a real mosquitto started here, if installed). For MQTT this is the
   hand-off to the sink's publisher thread; its whole cost (JSON, paho, network thread) is
   measured separately: results/s and process CPU time per result until all are delivered.
   The serial pty is read by ``cat`` in another process.
2. Sustained: the ``zmq`` sink paced at 20 000 results/s for a few seconds, then unpaced,
   with one SUB subscriber in another process that counts what it receives: results/s,
   drops, and whether the subscriber got exactly what was published.

Targets: <= 10 us per input median per sink (the writer thread's CPU time; wall time is shown too,
and on a shared machine includes time other processes held the CPU); PUB >= 20 000 results/s with 0 drops for a
subscriber that keeps up. Prints a table and writes bench/results/results.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import tty
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edged.models import Catalogue  # noqa: E402
from edged.results import summarize  # noqa: E402
from edged.sinks import Result, ResultSink, parse_sink_config  # noqa: E402
from edged.sinks.mqtt import MqttSink  # noqa: E402
from edged.sinks.serial import SerialReplySink  # noqa: E402
from edged.sinks.zmq import ZmqSink  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "results.json"
TARGET_US = 10.0
TARGET_RATE = 20_000


def make_results(n: int) -> List[Result]:
    """``n`` results of the shipped mlp (onnxruntime on its validation set), as the dispatcher records them."""
    cat = Catalogue.discover()
    entry = cat.get("mlp")
    x, _ = entry.load_validation()
    out: List[Result] = []
    with cat.load("mlp", "onnx") as m:
        probs = m.run(x)["probs"]
    for i in range(n):
        row = {"probs": probs[i % len(x)]}
        rec = {"ts": round(time.time(), 6), "seq": i, "source": "serial:/dev/ttyUSB0", "model": "mlp",
               "policy": "threshold", "decision": "local", "reason": "wcet 41.0 <= threshold 500.0",
               "wcet_us": 41.0, "local_exec_us": 38.2, "t_l_us": None, "t_l_out_us": None, "t_f_us": None,
               "fog_queue_us": None, "threshold_us": 500.0, "local_queue_us": 0.0, "expected_local_us": 41.0,
               "expected_offload_us": None, "fog_up": False, "deadline_us": None, "objective": "latency",
               "latency_us": 180.3, "exec_us": 35.1, "result": summarize(entry, {"probs": row["probs"][None]}),
               "error": None, "fog_error": None, "energy_mj": None, "batch": 1, "sender": f"dev-{i % 8}",
               "sender_ts": None}
        out.append(Result(rec, row))
    return out


# --------------------------------------------------------------------------- subscribers in another process


def _sub_process(endpoint: str, ready: Any, done: Any, counts: Any) -> None:
    import zmq

    s = zmq.Context().socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(endpoint)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    ready.set()
    n = 0
    quiet = 0
    while True:
        if s.poll(100):
            while True:
                try:
                    s.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                n += 1
            quiet = 0
            counts.value = n
        elif done.is_set():
            quiet += 1
            if quiet >= 5:  # 0.5 s without traffic after the publisher finished
                break
    counts.value = n
    s.close(0)


class SubProcess:
    def __init__(self, endpoint: str) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.done = ctx.Event(), ctx.Event()
        self.count = ctx.Value("q", 0)
        self.proc = ctx.Process(target=_sub_process, args=(endpoint, self.ready, self.done, self.count), daemon=True)
        self.proc.start()
        self.ready.wait(20)

    def finish(self) -> int:
        self.done.set()
        self.proc.join(60)
        return int(self.count.value)


class PtyReader:
    """A raw pty whose master side ``cat`` (another process: the MCU) reads and discards; ``writer``
    writes the slave side without blocking, as the serial source's ``write_reply`` does."""

    def __init__(self) -> None:
        import subprocess

        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.slave, False)
        self.proc = subprocess.Popen(["cat"], stdin=self.master, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def writer(self, data: bytes) -> bool:
        try:
            return os.write(self.slave, data) == len(data)
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.slave)
        self.proc.terminate()
        self.proc.wait(5)
        os.close(self.master)


# --------------------------------------------------------------------------- measurements


def per_input_cost(sink: ResultSink, results: List[Result], batch: int, calls: int) -> Dict[str, float]:
    """Per result (us) over ``calls`` calls of ``publish_many`` with ``batch`` results: median and p99 of the
    wall time, and median of the calling thread's CPU time (``CLOCK_THREAD_CPUTIME_ID``: what the sink costs
    the writer thread, without the time other processes on a busy machine take the CPU away)."""
    wall: List[float] = []
    cpu: List[float] = []
    n = len(results)
    pos = 0
    for _ in range(min(50, calls)):  # warm-up
        sink.publish_many(results[pos:pos + batch])
        pos = (pos + batch) % (n - batch)
    for _ in range(calls):
        chunk = results[pos:pos + batch]
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        sink.publish_many(chunk)
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        wall.append((t1 - t0) / 1000.0 / batch)
        cpu.append((c1 - c0) / 1000.0 / batch)
        pos = (pos + batch) % (n - batch)
    wall.sort()
    return {"median_us": round(statistics.median(wall), 2), "p99_us": round(wall[int(len(wall) * 0.99) - 1], 2),
            "cpu_median_us": round(statistics.median(cpu), 2)}


def sustained_zmq(results: List[Result], seconds: float, rate: Optional[float]) -> Dict[str, Any]:
    cfg = parse_sink_config({"type": "zmq", "endpoint": "tcp://127.0.0.1:*", "sndhwm": 10000}, "sinks[0]")
    sink = ZmqSink(cfg)  # type: ignore[arg-type]
    sink.open()
    sub = SubProcess(sink.bound_endpoint or "")
    sink.wait_for_subscribers(1, 20)
    batch = 32
    n = len(results)
    sent = 0
    pos = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if rate is not None:
            due = int((now - t0) * rate)
            if sent >= due:
                time.sleep(min(0.0005, (sent + batch - due) / rate))
                continue
        sink.publish_many(results[pos:pos + batch])
        sent += batch
        pos = (pos + batch) % (n - batch)
    elapsed = time.perf_counter() - t0
    st = sink.stats()
    received = sub.finish()
    sink.close(1)
    return {"paced_at": rate, "seconds": round(elapsed, 2), "handed": sent, "published": st["published"],
            "dropped": st["dropped"], "received": received, "results_per_s": round(st["published"] / elapsed),
            "subscriber_got_all_published": received == st["published"]}


def sustained_mqtt(sink: ResultSink, results: List[Result], qos: int, n: int = 20000) -> Dict[str, Any]:
    """Hand ``n`` results to an MQTT sink in batches of 32 and time until the broker has them all:
    the whole cost per result (hand-off, JSON, paho, its network thread), not only the writer thread's."""
    assert isinstance(sink, MqttSink)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    pos = 0
    for _ in range(0, n, 32):
        sink.publish_many(results[pos:pos + 32])
        pos = (pos + 32) % (len(results) - 32)
        while sink.queued > 5000:  # stay well inside max_queued: this measures throughput, not drops
            time.sleep(0.001)
    ok = sink.wait_delivered(120)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    st = sink.stats()
    sink.close(2)
    return {"qos": qos, "results": st["results"], "delivered": st["delivered"], "dropped": st["dropped"],
            "all_delivered": ok, "seconds": round(elapsed, 2), "results_per_s": round(st["delivered"] / elapsed),
            "cpu_us_per_result": round(cpu / max(1, st["results"]) * 1e6, 1)}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="timed publish_many calls per case")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each sustained run (s)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    results = make_results(4096)
    rows: List[Dict[str, Any]] = []

    def measure(label: str, make: Callable[[], ResultSink], cleanup: Callable[[], None] = lambda: None,
                extra: Optional[Callable[[ResultSink], Dict[str, Any]]] = None) -> None:
        sink = make()
        try:
            for b in (1, 32):
                r = per_input_cost(sink, results, b, args.calls if b == 1 else max(100, args.calls // 8))
                row = {"sink": label, "batch": b, **r, "target_us": TARGET_US, "ok": r["cpu_median_us"] <= TARGET_US}
                st = sink.stats()
                row["stats"] = {k: st[k] for k in ("published", "dropped", "delivered", "queued", "errors") if k in st}
                rows.append(row)
        finally:
            sink.close(2)
            cleanup()

    # zmq: a SUB in another process keeps up
    holder: Dict[str, Any] = {}

    def make_zmq() -> ResultSink:
        s = ZmqSink(parse_sink_config({"type": "zmq", "endpoint": "tcp://127.0.0.1:*", "sndhwm": 100000},
                                      "sinks[0]"))  # type: ignore[arg-type]
        s.open()
        holder["sub"] = SubProcess(s.bound_endpoint or "")
        s.wait_for_subscribers(1, 20)
        return s

    measure("zmq", make_zmq, lambda: holder["sub"].finish())

    for form in ("text", "cobs"):
        pty = PtyReader()
        measure(f"serial {form}", lambda form=form, pty=pty: SerialReplySink(  # type: ignore[misc]
            parse_sink_config({"type": "serial", "form": form}, "sinks[0]"),  # type: ignore[arg-type]
            writer_for=lambda src, pty=pty: pty.writer), pty.close)

    mosq = shutil.which("mosquitto")
    broker = None
    mqtt_sustained: List[Dict[str, Any]] = []
    if mosq:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.mosquitto import Broker

        broker = Broker(Path(tempfile.mkdtemp(prefix="edged-bench-mqtt-"))).start()
        for qos in (0, 1):
            def make_mqtt(qos: int = qos) -> ResultSink:
                s = MqttSink(parse_sink_config({"type": "mqtt", "host": "127.0.0.1", "port": broker.port,  # type: ignore
                                                "qos": qos, "max_queued": 60000, "client_id": f"bench-{qos}"},
                                               "sinks[0]"))  # type: ignore[arg-type]
                s.open()
                return s

            measure(f"mqtt qos{qos} hand-off", make_mqtt, lambda: time.sleep(0.5))
            mqtt_sustained.append(sustained_mqtt(make_mqtt(), results, qos))

    sustained = [sustained_zmq(results, args.seconds, TARGET_RATE), sustained_zmq(results, args.seconds, None)]
    if broker is not None:
        broker.stop()

    print(f"{'sink':<22} {'batch':>5} {'CPU median':>10} {'wall median':>11} {'wall p99':>9}  target  stats"
          "   (us per result)")
    for r in rows:
        print(f"{r['sink']:<22} {r['batch']:>5} {r['cpu_median_us']:>10.2f} {r['median_us']:>11.2f} "
              f"{r['p99_us']:>9.2f}  {'ok' if r['ok'] else 'MISS':<6}  {r['stats']}")
    print()
    print(f"{'zmq PUB sustained':<18} {'results/s':>10} {'published':>10} {'dropped':>8} {'received':>9}  all received")
    for s in sustained:
        label = f"paced {s['paced_at']}/s" if s["paced_at"] else "unpaced"
        print(f"{label:<18} {s['results_per_s']:>10} {s['published']:>10} {s['dropped']:>8} {s['received']:>9}  "
              f"{s['subscriber_got_all_published']}")
    if mqtt_sustained:
        print()
        print(f"{'mqtt sustained':<15} {'results/s':>10} {'delivered':>10} {'dropped':>8}  {'CPU us/result':>13}"
              "  (whole process: hand-off + JSON + paho + its network thread)")
        for m in mqtt_sustained:
            print(f"{'qos ' + str(m['qos']):<15} {m['results_per_s']:>10} {m['delivered']:>10} {m['dropped']:>8}  "
                  f"{m['cpu_us_per_result']:>13}")
    doc = {"bench": "results", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
           "target_us": TARGET_US, "target_rate": TARGET_RATE, "per_input": rows, "sustained_zmq": sustained,
           "sustained_mqtt": mqtt_sustained,
           "notes": "per_input is the cost on the caller's (the dispatcher writer's) thread; the mqtt sink hands "
                    "results to its own publisher thread, whose whole cost is sustained_mqtt.cpu_us_per_result"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
