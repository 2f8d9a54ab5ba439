"""How many edges one fog node holds: 1, 4 and 16 simulated edges against one ``edged fog`` and one MLServer.

Setup (all on this machine, loopback):

* one ``edged fog`` subprocess (``--workers W``, 1 intra-op thread each) serving the shipped models over ZeroMQ;
* one MLServer subprocess (``mlserver start`` on an ``edged export-fog --format mlserver`` folder,
  ``parallel_workers = W``) serving the same ``model.onnx`` through ``edged.fog.mlserver`` over gRPC;
* E simulated edges, each with its own back end (its own DEALER socket / gRPC channel) and one request in
  flight at a time (closed loop: the next input leaves when the reply is back), spread over P client
  processes. Every edge replays the cnn validation set for ``--seconds``.

Per cell: throughput (replies/s over all edges), round trip p50/p99 (ms), and for OIP the client's overhead
over the server's own time (round trip − the ``edged_t_f_ns`` the runtime reports: encoding, gRPC, HTTP/2,
the server's Python layers, decoding), p50 in ms.

The clients share the 2 cores with the server, so absolute figures are a floor; the comparison between
the two servers at the same E is the point. Needs mlserver (run it with ``.venv-oip/bin/python``, which
``make test-oip`` builds).

Usage: ``python bench/fog_scale.py [--quick]``; prints a table, writes ``bench/results/fog_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.oip_servers import free_port, start_mlserver  # noqa: E402

MODEL = "cnn"


def _edge_loop(kind: str, address: str, n_edges: int, seconds: float, start_at: float, out: Any) -> None:
    """One client process: ``n_edges`` threads, each its own back end, one request in flight each."""
    from edged.models import Catalogue

    entry = Catalogue.discover().get(MODEL)
    x, _ = entry.load_validation()
    h = entry.model_hash
    rows: List[List[float]] = []
    lock = threading.Lock()

    def edge(k: int) -> None:
        if kind == "zmq":
            from edged.offload.fog_client import ZmqFogBackend

            fog: Any = ZmqFogBackend(address)
        else:
            from edged.offload.oip import OipFogBackend

            fog = OipFogBackend(address, identity="version")
        mine: List[List[float]] = []
        try:
            warm = 0
            deadline = time.time() + 20
            while warm < 20 and time.time() < deadline:  # warm up: the connection, the server's first runs
                try:
                    fog.submit(MODEL, x[warm % len(x)], h, 5.0).result(10)
                    warm += 1
                except Exception:  # noqa: BLE001 - not connected yet (ZMQ_IMMEDIATE fails at once)
                    time.sleep(0.05)
            while time.time() < start_at:
                time.sleep(0.001)
            end = start_at + seconds
            i = k
            while time.time() < end:
                try:
                    r = fog.submit(MODEL, x[i % len(x)], h, 5.0).result(10)
                    mine.append([r.rtt_us, r.t_f_us, 1.0 if getattr(r, "t_f_source", "server") == "server" else 0.0])
                except Exception:  # noqa: BLE001 - counted as a failure row
                    mine.append([float("nan"), float("nan"), 0.0])
                i += 1
        finally:
            fog.close()
        with lock:
            rows.extend(mine)

    threads = [threading.Thread(target=edge, args=(k,)) for k in range(n_edges)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(rows)


def run_cell(kind: str, address: str, edges: int, seconds: float, procs: int) -> Dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    per = [edges // procs + (1 if i < edges % procs else 0) for i in range(procs)]
    start_at = time.time() + 3.0 + 0.3 * edges  # every edge connected and warm before the clock starts
    ps = [ctx.Process(target=_edge_loop, args=(kind, address, n, seconds, start_at, q)) for n in per if n]
    for p in ps:
        p.start()
    rows: List[List[float]] = []
    for _ in ps:
        rows.extend(q.get(timeout=seconds + 120))
    for p in ps:
        p.join(30)
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    ok = a[np.isfinite(a[:, 0])]
    rtt = ok[:, 0] / 1000.0
    cell: Dict[str, Any] = {"server": kind, "edges": edges, "replies": int(len(ok)), "failures": int(len(a) - len(ok)),
                            "throughput_per_s": round(len(ok) / seconds, 1),
                            "rtt_p50_ms": round(float(np.percentile(rtt, 50)), 3) if len(ok) else None,
                            "rtt_p99_ms": round(float(np.percentile(rtt, 99)), 3) if len(ok) else None}
    served = ok[ok[:, 2] > 0]
    if kind != "zmq" and len(served):
        cell["client_overhead_p50_ms"] = round(float(np.percentile((served[:, 0] - served[:, 1]) / 1000.0, 50)), 3)
        cell["server_t_f_p50_ms"] = round(float(np.percentile(served[:, 1] / 1000.0, 50)), 3)
    elif kind == "zmq" and len(ok):
        cell["client_overhead_p50_ms"] = round(float(np.percentile((ok[:, 0] - ok[:, 1]) / 1000.0, 50)), 3)
        cell["server_t_f_p50_ms"] = round(float(np.percentile(ok[:, 1] / 1000.0, 50)), 3)
    return cell


def start_edged_fog(workers: int, log: Path) -> Any:
    port = free_port()
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edged", "fog", "--bind", f"tcp://127.0.0.1:{port}",
                                 "--workers", str(workers), "--threads", "1"], cwd=str(ROOT),
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        raise RuntimeError(f"edged fog did not start: {line!r} {log.read_text()[-2000:]}")
    return proc, f"tcp://127.0.0.1:{port}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 s per cell instead of 6")
    ap.add_argument("--edges", default="1,4,16")
    ap.add_argument("--workers", type=int, default=2, help="server workers (edged fog threads, MLServer processes)")
    ap.add_argument("--procs", type=int, default=2, help="client processes the edges are spread over")
    args = ap.parse_args()
    import importlib.util

    if importlib.util.find_spec("mlserver") is None:
        print("bench/fog_scale.py needs mlserver: run it with .venv-oip/bin/python (make test-oip builds it)",
              file=sys.stderr)
        return 2
    seconds = 2.0 if args.quick else 6.0
    edges = [int(e) for e in args.edges.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="edged-fog-scale-"))
    cells: List[Dict[str, Any]] = []
    try:
        from edged.export_fog import export
        from edged.models import Catalogue

        export("mlserver", tmp / "repo", Catalogue.discover(), [MODEL])
        os.environ["MLSERVER_PARALLEL_WORKERS"] = str(args.workers)
        ml = start_mlserver(tmp / "repo", tmp / "mlserver.log")
        os.environ.pop("MLSERVER_PARALLEL_WORKERS", None)
        fog, endpoint = start_edged_fog(args.workers, tmp / "fog.log")
        try:
            for e in edges:
                for kind, address in (("zmq", endpoint), ("mlserver", ml.grpc)):
                    cell = run_cell(kind, address, e, seconds, min(args.procs, e))
                    cells.append(cell)
                    print(f"  {kind:9s} {e:3d} edges: {cell['throughput_per_s']:8.1f}/s  p50 {cell['rtt_p50_ms']} ms  "
                          f"p99 {cell['rtt_p99_ms']} ms", file=sys.stderr)
        finally:
            os.killpg(fog.pid, signal.SIGTERM)
            fog.wait(20)
            ml.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nfog_scale: model {MODEL}, {seconds:g} s per cell, closed loop (1 in flight per edge), "
          f"{args.workers} server workers, {args.procs} client processes, all on {os.cpu_count()} cores\n")
    head = (f"{'server':10s} {'edges':>5s} {'replies/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'server T_F':>11s} "
            f"{'overhead p50':>13s} {'failures':>8s}")
    print(head)
    print("-" * len(head))
    for c in cells:
        print(f"{c['server']:10s} {c['edges']:5d} {c['throughput_per_s']:10.1f} {c['rtt_p50_ms']:8.3f} "
              f"{c['rtt_p99_ms']:8.3f} {c.get('server_t_f_p50_ms', float('nan')):11.3f} "
              f"{c.get('client_overhead_p50_ms', float('nan')):13.3f} {c['failures']:8d}")
    result = {"bench": "fog_scale", "model": MODEL, "seconds_per_cell": seconds, "server_workers": args.workers,
              "client_processes": args.procs, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                          "platform": platform.platform()},
              "load_at_end": os.getloadavg(), "cells": cells}
    out = ROOT / "bench" / "results" / "fog_scale.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
