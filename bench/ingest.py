#!/usr/bin/env python3
"""Ingest throughput: ZeroMQ into the IngestQueue vs a bare pyzmq loop, and a pty at 921 600 baud.

ZeroMQ: a separate PUSH process sends N two-frame ``mlp`` inputs (30 float32)
as fast as it can; in the same run we time (a) a bare ``recv_multipart`` loop
and (b) ``ZmqSource`` -> ``IngestQueue(block)`` -> a consumer thread. Target:
(b) >= 50 % of (a).

Serial: ``lines``-framed ``mlp`` inputs written into a pty, paced at the
921 600 baud line rate (8N1: 92 160 bytes/s; a pty has no rate of its own),
read by ``SerialSource`` into the queue. Target: zero loss, ingest keeps up
(the last input is queued within a few ms of the last byte written). The
unpaced pty rate is reported as headroom.

Usage: ``python bench/ingest.py [--n 50000] [--runs 3] [--seconds 3]``.
Prints a table (medians) and writes ``bench/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edged.runtime.base import TensorSpec  # noqa: E402
from edged.sim import open_pty_target, simulate  # noqa: E402
from edged.sources.queue import IngestQueue  # noqa: E402
from edged.sources.serial import SerialSource  # noqa: E402
from edged.sources.zmq import ZmqSource  # noqa: E402

SPECS = {"mlp": TensorSpec("input", (None, 30), "float32", "NC")}
BAUD = 921_600
LINE_RATE_BPS = BAUD / 10  # 8N1: 10 bit times per byte -> 92 160 bytes/s


def _mlp_rows() -> np.ndarray:
    path = REPO / "models" / "mlp" / "validation.npz"
    if path.exists():
        return np.load(path)["x"].astype(np.float32)
    return np.random.default_rng(0).standard_normal((143, 30)).astype(np.float32)


# ----------------------------------------------------------------------------- ZeroMQ


def peer_main(endpoint: str, n: int) -> None:
    """The PUSH peer process: prebuilt messages, sent back to back."""
    rows = _mlp_rows()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.LINGER, 10000)
    sock.connect(endpoint)
    payloads = [rows[i % len(rows)].tobytes() for i in range(len(rows))]
    headers = [json.dumps({"model": "mlp", "seq": i, "ts": 0.0}, separators=(",", ":")).encode() for i in range(n)]
    time.sleep(0.3)  # let the connection settle so the first messages are not timed against the handshake
    for i in range(n):
        sock.send_multipart([headers[i], payloads[i % len(payloads)]])
    sock.close()
    ctx.term()


def _spawn_peer(endpoint: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--peer", endpoint, str(n)])


def bench_bare_zmq(n: int) -> float:
    """Inputs/s of a bare PULL recv_multipart loop (first to last message)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 1000)
    sock.setsockopt(zmq.RCVTIMEO, 20000)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    peer = _spawn_peer(f"tcp://127.0.0.1:{port}", n)
    try:
        sock.recv_multipart()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            sock.recv_multipart()
        t1 = time.perf_counter()
    finally:
        peer.wait(30)
        sock.close()
        ctx.term()
    return (n - 1) / (t1 - t0)


def bench_zmq_ingest(n: int) -> Dict[str, Any]:
    """Inputs/s through ZmqSource -> IngestQueue(block) -> a consumer thread."""
    queue = IngestQueue(maxsize=1024, policy="block")
    src = ZmqSource(SPECS, endpoint="tcp://127.0.0.1:*", rcvhwm=1000)
    stop = threading.Event()
    src.start(queue.sink(), stop)
    if not src.ready.wait(5):
        raise RuntimeError("ZmqSource did not bind")
    times: Dict[str, float] = {}
    seqs_ok = [True]

    def consume() -> None:
        got = 0
        expect = 0
        while got < n:
            batch = queue.get_many(256, timeout=20)
            if not batch:
                break
            if got == 0:
                times["first"] = batch[0].t_arrival
            for s in batch:
                seqs_ok[0] = seqs_ok[0] and s.seq == expect
                expect = s.seq + 1
            got += len(batch)
        times["last"] = time.monotonic()
        times["got"] = got

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    peer = _spawn_peer(src.bound_endpoint or "", n)
    try:
        consumer.join(60)
    finally:
        peer.wait(30)
        stop.set()
        queue.close()
    got = int(times.get("got", 0))
    rate = (got - 1) / (times["last"] - times["first"]) if got > 1 else 0.0
    return {"rate": rate, "received": got, "in_order": seqs_ok[0], "stats": src.stats.snapshot(),
            "queue": queue.stats}


# ----------------------------------------------------------------------------- pty


def bench_pty(seconds: float, paced: bool, framing: str = "lines") -> Dict[str, Any]:
    """Send ``mlp`` inputs through a pty to SerialSource; paced at the 921 600 baud line rate or unpaced."""
    rows = _mlp_rows()
    target = open_pty_target(framing, pace_bytes_per_s=LINE_RATE_BPS if paced else 0.0)
    queue = IngestQueue(maxsize=1 << 20, policy="block")
    src = SerialSource(SPECS, target.path, framing=framing, baudrate=BAUD, default_model="mlp")
    stop = threading.Event()
    src.start(queue.sink(), stop)
    if not src.connected.wait(5):
        raise RuntimeError("SerialSource did not open the pty")
    line_bytes = len(target.encode("mlp", 0, rows[0], 0.0))
    count = int(seconds * LINE_RATE_BPS / line_bytes) if paced else int(seconds * 20000)
    writer_stop = threading.Event()
    t0 = time.monotonic()
    sim = simulate(target, {"mlp": rows}, rate_hz=0, count=count, stop=writer_stop, progress_s=0)
    t_written = time.monotonic()
    deadline = t_written + 30
    while src.stats.accepted + src.stats.rejected_total < count and time.monotonic() < deadline:
        time.sleep(0.0005)
    t_done = time.monotonic()
    stop.set()
    target.close()
    samples = queue.drain()
    received = len(samples)
    last_arrival = max((s.t_arrival for s in samples), default=t_done)
    return {
        "framing": framing,
        "paced": paced,
        "sent": sim.total,
        "bytes_sent": sim.bytes_sent,
        "received": received,
        "lost": sim.total - received,
        "in_order": [s.seq for s in samples] == list(range(received)),
        "offered_rate": sim.total / (t_written - t0),
        "ingest_rate": received / max(last_arrival - t0, 1e-9),
        "offered_bytes_per_s": sim.bytes_sent / (t_written - t0),
        "drain_lag_ms": max(0.0, (last_arrival - t_written) * 1000.0),
        "rejected": src.stats.snapshot()["rejected"],
    }


# ----------------------------------------------------------------------------- main


def _median(runs: List[Dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50000, help="ZeroMQ messages per run")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (median reported)")
    ap.add_argument("--seconds", type=float, default=3.0, help="paced pty run length (s)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ingest.json"))
    ap.add_argument("--peer", nargs=2, metavar=("ENDPOINT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer:
        peer_main(args.peer[0], int(args.peer[1]))
        return 0

    zmq_runs = []
    for _ in range(args.runs):
        bare = bench_bare_zmq(args.n)
        ingest = bench_zmq_ingest(args.n)
        zmq_runs.append({"bare": bare, "ingest": ingest["rate"], "ratio": ingest["rate"] / bare,
                         "received": ingest["received"], "in_order": ingest["in_order"],
                         "rejected": ingest["stats"]["rejected_total"], "lost": args.n - ingest["received"]})
    pty_paced = [bench_pty(args.seconds, paced=True) for _ in range(args.runs)]
    pty_free = [bench_pty(1.0, paced=False, framing=f) for f in ("lines", "cobs") for _ in range(args.runs)]

    bare_m = _median(zmq_runs, "bare")
    ingest_m = _median(zmq_runs, "ingest")
    ratio_m = _median(zmq_runs, "ratio")
    rows = [
        ("zmq bare recv_multipart loop", f"{bare_m:,.0f}", "", ""),
        ("zmq ZmqSource -> IngestQueue", f"{ingest_m:,.0f}", f"{ratio_m:.0%} of bare",
         f"lost {sum(r['lost'] for r in zmq_runs)}, in order {all(r['in_order'] for r in zmq_runs)}"),
        ("pty lines @921600 baud (paced)", f"{_median(pty_paced, 'ingest_rate'):,.1f}",
         f"offered {_median(pty_paced, 'offered_rate'):,.1f}/s = {_median(pty_paced, 'offered_bytes_per_s'):,.0f} B/s",
         f"lost {sum(r['lost'] for r in pty_paced)}, drain lag {_median(pty_paced, 'drain_lag_ms'):.1f} ms"),
    ]
    for f in ("lines", "cobs"):
        runs = [r for r in pty_free if r["framing"] == f]
        rows.append((f"pty {f} unpaced (headroom)", f"{_median(runs, 'ingest_rate'):,.0f}",
                     f"{_median(runs, 'offered_bytes_per_s') / 1e6:.2f} MB/s", f"lost {sum(r['lost'] for r in runs)}"))
    print(f"\ningest benchmark: median of {args.runs} runs, mlp inputs (30 x float32), "
          f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}, pyzmq {zmq.__version__}")
    widths = [max(len(r[i]) for r in rows + [("path", "inputs/s", "vs", "notes")]) for i in range(4)]
    header = ("path", "inputs/s", "vs", "notes")
    for r in [header] + rows:
        print("  ".join(c.ljust(w) if i != 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))

    zmq_ok = ratio_m >= 0.5 and all(r["lost"] == 0 for r in zmq_runs)
    pty_ok = all(r["lost"] == 0 and r["in_order"] for r in pty_paced) and \
        _median(pty_paced, "ingest_rate") >= 0.98 * _median(pty_paced, "offered_rate")
    print(f"targets: zmq ingest >= 50% of bare: {'MET' if zmq_ok else 'NOT MET'}; "
          f"pty keeps up with 921600 baud, zero loss: {'MET' if pty_ok else 'NOT MET'}")
    result = {
        "bench": "ingest",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()},
        "params": {"n": args.n, "runs": args.runs, "seconds": args.seconds, "baud": BAUD,
                   "line_rate_bytes_per_s": LINE_RATE_BPS},
        "zmq": {"runs": zmq_runs, "median_bare_per_s": bare_m, "median_ingest_per_s": ingest_m,
                "median_ratio": ratio_m, "target_met": zmq_ok},
        "pty_paced": {"runs": pty_paced, "median_ingest_per_s": _median(pty_paced, "ingest_rate"),
                      "median_offered_per_s": _median(pty_paced, "offered_rate"), "target_met": pty_ok},
        "pty_unpaced": pty_free,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
