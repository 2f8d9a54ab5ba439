#!/usr/bin/env python3
"""End-to-end daemon benchmark: ZeroMQ in -> decision line written, against the bare runtime loop.

Runs the real ``edged run`` as a subprocess (policy ``local``, fog off, power off) and a
sender subprocess pushing validation inputs as fast as the daemon takes them (block policy:
ZeroMQ backpressure). For each model it reports inputs/s (first to last decision line),
latency p50/p99 (arrival -> result, from the records) and the bare runtime loop's inputs/s
measured in the same run. Then a mixed run of 100 000 inputs with both runtimes loaded
(MLP on ONNX Runtime, CNN on LiteRT) samples the daemon's RSS at 10 000 and 100 000 inputs,
and a restart measures start-up to READY=1 (sd_notify datagram) with the profile cached.
Prints a table; writes bench/results/daemon.json.
Targets: MLP >= 25 000 inputs/s and >= 50 % of the bare loop; RSS <= 120 MB and flat; READY <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "results" / "daemon.json"

SENDER = r"""
import json, sys, time, zmq, numpy as np
port, model, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0  # inputs/s; 0 = as fast as the daemon takes them
models = model.split(",")
xs = {m: np.load(f"{sys.argv[4]}/{m}/validation.npz")["x"] for m in models}
ctx = zmq.Context(); s = ctx.socket(zmq.PUSH); s.setsockopt(zmq.SNDHWM, 10000); s.connect(f"tcp://127.0.0.1:{port}")
rows = {m: [x.tobytes() for x in xs[m]] for m in models}
t0 = time.perf_counter()
seq = {m: 0 for m in models}
for i in range(n):
    m = models[i % len(models)]
    r = rows[m]
    s.send_multipart([b'{"model":"%s","seq":%d}' % (m.encode(), seq[m]), r[seq[m] % len(r)]])
    seq[m] += 1
    if rate:
        while time.perf_counter() - t0 < (i + 1) / rate:
            pass
s.close(linger=-1); ctx.term()
print(json.dumps({"sent": n, "send_s": time.perf_counter() - t0}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> Dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def count_lines(path: Path) -> int:
    """Lines in the log and its rotated files (rotation is off in this bench, but be safe)."""
    total = 0
    for p in [path, *path.parent.glob(path.name + ".*")]:
        try:
            with open(p, "rb") as f:
                total += sum(chunk.count(b"\n") for chunk in iter(lambda f=f: f.read(1 << 20), b""))
        except FileNotFoundError:
            continue
    return total


def write_config(d: Path, port: int, backends: Dict[str, str]) -> Path:
    cfg = d / "edged.toml"
    be = "\n".join(f'{k} = "{v}"' for k, v in backends.items())
    cfg.write_text(f"""
[daemon]
state_dir = "{d / 'state'}"
status_interval_s = 1.0
shutdown_timeout_s = 60
[logs]
dir = "{d / 'logs'}"
journal = "off"
level = "warning"
max_bytes = 0
[models]
threads = 1
[models.backends]
{be}
[queue]
size = 4096
when_full = "block"
[local]
workers = 1
max_queue = 1024
[policy]
default = "local"
[fog]
enabled = false
[power]
source = "none"
[[sources]]
type = "zmq"
endpoint = "tcp://127.0.0.1:{port}"
rcvhwm = 10000
""")
    return cfg


class Daemon:
    def __init__(self, cfg: Path, notify_path: str) -> None:
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        self.notify.settimeout(0.05)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        self.t_start = time.monotonic()
        self.log = open(cfg.parent / "daemon.log", "ab")  # noqa: SIM115 - held by the child until stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=str(REPO))

    def wait_ready(self, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.notify.recv(4096).decode()
            except socket.timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError("daemon exited before READY") from None
                continue
            if "READY=1" in msg:
                t = time.monotonic() - self.t_start
                # keep reading STATUS=/WATCHDOG= afterwards, as systemd does
                threading.Thread(target=self._drain, daemon=True).start()
                return t
        raise RuntimeError("no READY=1")

    def _drain(self) -> None:
        while True:
            try:
                self.notify.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.notify.close()
        self.log.close()


def send(port: int, models: str, n: int, rate: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SENDER, str(port), models, str(n), str(REPO / "models"),
                             str(rate)], stdout=subprocess.PIPE, text=True)


def wait_lines(path: Path, n: int, timeout: float, on_progress: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = count_lines(path)
        if on_progress:
            on_progress(c)
        if c >= n:
            return
        time.sleep(0.05)
    raise RuntimeError(f"only {count_lines(path)} of {n} decision lines after {timeout}s")


def records(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def bare_loop(model: str, backend: str, n: int) -> float:
    """Inputs/s of the bare runtime API over the validation set (one input per call)."""
    from edged.models import Catalogue

    cat = Catalogue.discover()
    x, _ = cat.get(model).load_validation()
    m = cat.load(model, backend)
    perm = m._perm
    xs = [np.ascontiguousarray(r[np.newaxis].transpose(perm)) if perm else r[np.newaxis] for r in x]
    be = m.backend
    if backend == "onnx":
        sess, names, iname = be._sess, be._out_names, be.input_spec.name
        t0 = time.perf_counter()
        for i in range(n):
            sess.run(names, {iname: xs[i % len(xs)]})
    else:
        it, i_in, i_out = be._it, be._in_index, be._out_index
        t0 = time.perf_counter()
        for i in range(n):
            it.set_tensor(i_in, xs[i % len(xs)])
            it.invoke()
            it.get_tensor(i_out)
    return n / (time.perf_counter() - t0)


def throughput_run(work: Path, model: str, backend: str, n: int, paced_rate: float) -> Dict[str, Any]:
    """Saturation (sender as fast as backpressure allows), then a paced run for latency without queueing."""
    d = work / f"tp-{model}-{backend}"
    d.mkdir()
    port = free_port()
    cfg = write_config(d, port, {model: backend, **({"cnn": "onnx"} if model == "mlp" else {"mlp": "onnx"})})
    dm = Daemon(cfg, str(d / "n.sock"))
    dm.wait_ready()
    log = d / "logs" / "decisions.jsonl"
    s = send(port, model, n)
    wait_lines(log, n, timeout=600)
    s.wait()
    n_paced = int(paced_rate * 5)
    s = send(port, model, n_paced, paced_rate)
    wait_lines(log, n + n_paced, timeout=600)
    s.wait()
    dm.stop()
    recs = [r for r in records(log) if r["model"] == model]
    sat, paced = recs[:n], recs[n:]
    ts = [r["ts"] for r in sat]
    lat = sorted(r["latency_us"] for r in sat)
    plat = sorted(r["latency_us"] for r in paced)
    return {
        "model": model, "backend": backend, "inputs": len(sat),
        "inputs_per_s": len(sat) / (max(ts) - min(ts)),
        "latency_p50_us": statistics.median(lat), "latency_p99_us": float(np.percentile(lat, 99)),
        "paced_rate": paced_rate, "paced_latency_p50_us": statistics.median(plat),
        "paced_latency_p99_us": float(np.percentile(plat, 99)),
        "mean_batch": float(np.mean([r.get("batch", 1) for r in sat])),
        "decisions": sorted({r["decision"] for r in recs}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=50000, help="inputs per throughput run (default 50000)")
    ap.add_argument("--soak", type=int, default=100000, help="inputs in the RSS run (default 100000)")
    ap.add_argument("--paced-rate", type=float, default=2000.0, help="inputs/s of the latency run (default 2000)")
    ap.add_argument("--pairs", default="mlp/onnx,cnn/onnx,mlp/litert,cnn/litert", help="model/backend runs")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edged-bench-daemon-"))
    rows = []
    try:
        for model, backend in [tuple(p.split("/")) for p in args.pairs.split(",")]:
            print(f"throughput {model}/{backend} ...", file=sys.stderr, flush=True)
            r = throughput_run(work, model, backend, args.inputs, args.paced_rate)
            r["bare_inputs_per_s"] = bare_loop(model, backend, args.inputs)
            r["share_of_bare"] = r["inputs_per_s"] / r["bare_inputs_per_s"]
            rows.append(r)

        print(f"soak: {args.soak} mixed inputs, MLP on onnx + CNN on litert ...", file=sys.stderr, flush=True)
        d = work / "soak"
        d.mkdir()
        port = free_port()
        cfg = write_config(d, port, {"mlp": "onnx", "cnn": "litert"})
        dm = Daemon(cfg, str(d / "n.sock"))
        ready_first = dm.wait_ready()
        rss: Dict[int, Dict[str, int]] = {}
        marks = [1000, 10000, 50000, args.soak]

        def progress(c: int) -> None:
            for m in marks:
                if c >= m and m not in rss:
                    rss[m] = rss_kb(dm.proc.pid)

        s = send(port, "mlp,cnn", args.soak)
        wait_lines(d / "logs" / "decisions.jsonl", args.soak, timeout=900, on_progress=progress)
        s.wait()
        rss[args.soak] = rss_kb(dm.proc.pid)
        dm.stop()
        # restart with the cached profile: start-up to READY=1
        readies = []
        for i in range(3):
            sock = str(d / f"n{i}.sock")
            dm2 = Daemon(cfg, sock)
            readies.append(dm2.wait_ready())
            dm2.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    hdr = (f"{'model':<5} {'backend':<7} {'inputs/s':>9} {'bare/s':>9} {'share':>6} {'batch':>6} "
           f"{'sat p50 us':>11} {'sat p99':>9} | {'@' + str(int(args.paced_rate)) + '/s p50':>12} {'p99 us':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['model']:<5} {r['backend']:<7} {r['inputs_per_s']:>9.0f} {r['bare_inputs_per_s']:>9.0f} "
              f"{r['share_of_bare']:>6.2f} {r['mean_batch']:>6.1f} {r['latency_p50_us']:>11.0f} "
              f"{r['latency_p99_us']:>9.0f} | {r['paced_latency_p50_us']:>12.0f} {r['paced_latency_p99_us']:>8.0f}")
    r10 = rss.get(10000, {}).get("VmRSS", 0) / 1024
    r100 = rss[args.soak]["VmRSS"] / 1024
    peak = rss[args.soak]["VmHWM"] / 1024
    marks_txt = ", ".join(f"{k}: {v['VmRSS'] / 1024:.1f} MB" for k, v in sorted(rss.items()))
    print(f"\nRSS (MLP on onnx + CNN on litert): {marks_txt}; "
          f"peak {peak:.1f} MB; growth 10k->{args.soak // 1000}k {r100 - r10:+.1f} MB")
    print(f"start-up to READY=1: first (profiling) {ready_first:.2f} s; cached profile "
          f"{', '.join(f'{x:.2f}' for x in readies)} s (median {statistics.median(readies):.2f} s)")
    mlp_best = max(r["inputs_per_s"] for r in rows if r["model"] == "mlp")
    mlp_share = max(r["share_of_bare"] for r in rows if r["model"] == "mlp")
    verdict = {
        "mlp_25k_per_s": mlp_best >= 25000, "mlp_half_of_bare": mlp_share >= 0.5,
        "rss_le_120mb": peak <= 120, "rss_flat_lt_5mb": (r100 - r10) < 5,
        "ready_le_3s": statistics.median(readies) <= 3,
    }
    print("targets: " + ", ".join(f"{k} {'MET' if v else 'MISSED'}" for k, v in verdict.items()))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "machine": platform.machine(), "python": platform.python_version(), "cores": os.cpu_count(),
        "throughput": rows, "rss_kb": {str(k): v for k, v in rss.items()}, "rss_growth_mb": r100 - r10,
        "peak_rss_mb": peak, "ready_first_s": ready_first, "ready_cached_s": readies, "targets": verdict,
    }, indent=2) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
