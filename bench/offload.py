"""Offloading benchmark: one replayed input stream, a changing link, five policies.

Setup (all on this machine):

* a real ``edged fog`` subprocess (1 worker, ``--fog-threads`` intra-op threads) serving the
  shipped ``mlp`` and ``cnn`` plus ``bigcnn``: a random-weight CNN generated here with the
  ``onnx`` package (timing only, not a shipped model), written with a manifest into a temp
  models dir that both the edge and the fog load through the real catalogue;
* the edge: a :class:`Dispatcher` with 1 local worker and 1-thread models, talking to the fog
  through a :class:`tests.linkproxy.LinkProxy` whose schedule goes good → bad → outage → good;
* the stream: ``bigcnn, cnn, mlp, bigcnn, ...`` every ``--period-ms``, same inputs and the same
  schedule for every policy.

Each of ``local``, ``offload``, ``threshold`` and ``adaptive`` replays the whole stream; the
``oracle`` takes, per input, the better of the latency measured in the ``local`` pass and in the
``offload`` pass (both are measured for every input). Latency is arrival → result.

Usage: ``python bench/offload.py [--quick]``; prints a table, writes ``bench/results/offload.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edged.models import Catalogue  # noqa: E402
from edged.offload.dispatcher import Dispatcher  # noqa: E402
from edged.offload.fog_client import CircuitBreaker, ZmqFogBackend  # noqa: E402
from edged.sources.sample import Sample  # noqa: E402
from tests.linkproxy import LinkProxy  # noqa: E402

POLICIES = ("local", "offload", "threshold", "adaptive")
GOOD: Dict[str, Any] = {"latency_ms": 1.0, "bandwidth_Bps": 50e6, "loss": 0.0, "outage": False}
BAD: Dict[str, Any] = {"latency_ms": 50.0, "bandwidth_Bps": 0.5e6, "loss": 0.02, "retransmit_ms": 200.0,
                       "outage": False}
OUTAGE: Dict[str, Any] = {"outage": True}


# ---- the heavy model -----------------------------------------------------------------------------
#: (output channels, stride) per 3x3 conv layer of the generated CNN
BIGCNN_LAYERS = [(64, 1), (128, 2)] + [(128, 1)] * 18


def build_bigcnn(models_dir: Path, size: int = 64, seed: int = 7) -> Path:
    """Write ``models_dir/bigcnn/{model.onnx, manifest.json}``: a random-weight CNN (NCHW, 10 classes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: List[Any] = []
    inits: List[Any] = []
    chans = [3] + [c for c, _ in BIGCNN_LAYERS]
    strides = [st for _, st in BIGCNN_LAYERS]
    prev = "input"
    for i in range(len(chans) - 1):
        w = (rng.standard_normal((chans[i + 1], chans[i], 3, 3)) * np.sqrt(2.0 / (9 * chans[i]))).astype(np.float32)
        b = np.zeros(chans[i + 1], np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1],
                                      strides=[strides[i]] * 2))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    wf = (rng.standard_normal((chans[-1], 10)) * 0.1).astype(np.float32)
    inits += [numpy_helper.from_array(wf, "wf"), numpy_helper.from_array(np.zeros(10, np.float32), "bf")]
    nodes.append(helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes, "bigcnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edged-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    d = models_dir / "bigcnn"
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(d / "model.onnx"))
    sha = hashlib.sha256((d / "model.onnx").read_bytes()).hexdigest()
    manifest = {
        "format": "edged-model/1", "name": "bigcnn", "task": "classification",
        "description": "random-weight CNN for offloading benchmarks only (timing, not accuracy)",
        "input": {"name": "input", "shape": [None, 3, size, size], "dtype": "float32", "layout": "NCHW"},
        "output": {"name": "probs", "shape": [None, 10], "dtype": "float32", "kind": "probabilities"},
        "labels": [str(i) for i in range(10)],
        "artifacts": {"onnx": {"file": "model.onnx", "sha256": sha, "layout": "NCHW", "opset": 13}},
    }
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return d


class SlowedModel:
    """An edge model ``factor`` times slower than this host: runs, then sleeps ``(factor - 1) x`` its time.

    The fog shares this small host, so without it the "edge" would be as fast as the fog.
    Sleeping (not spinning) keeps the CPU free, like a slower device would.
    """

    def __init__(self, model: Any, factor: float) -> None:
        self.model = model
        self.factor = factor

    def predict(self, x: Any, validate: bool = True) -> Any:
        t0 = time.perf_counter()
        out = self.model.predict(x, validate=validate)
        if self.factor > 1:
            time.sleep((time.perf_counter() - t0) * (self.factor - 1))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


# ---- fog subprocess ------------------------------------------------------------------------------
class Fog:
    def __init__(self, models_dir: Path, threads: int, workers: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "fog", "--bind", "tcp://127.0.0.1:0", "--models-dir", str(models_dir),
             "--backend", "onnx", "--threads", str(threads), "--workers", str(workers)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT))
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline() if r else ""
        if "serving" not in line:
            self.proc.kill()
            raise SystemExit(f"edged fog did not start: {line!r}")
        self.endpoint = line.strip().rsplit(" ", 1)[-1]
        self.port = int(self.endpoint.rsplit(":", 1)[-1])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---- one pass ------------------------------------------------------------------------------------
def measure_local(models: Dict[str, Any], inputs: Dict[str, np.ndarray], runs: int) -> Dict[str, Dict[str, float]]:
    """Profile each model here (1 thread): p50 and WCET (max of ``runs``), µs."""
    out: Dict[str, Dict[str, float]] = {}
    for name, m in models.items():
        for x in inputs[name][:5]:
            m.predict(x)
        times = []
        for i in range(runs):
            x = inputs[name][i % len(inputs[name])]
            t0 = time.perf_counter()
            m.predict(x)
            times.append((time.perf_counter() - t0) * 1e6)
        out[name] = {"p50_us": float(np.median(times)), "wcet_us": float(np.max(times)),
                     "p99_us": float(np.quantile(times, 0.99))}
    return out


def run_pass(policy: str, fog: Fog, models: Dict[str, Any], stream: List[Tuple[str, np.ndarray]],
             schedule: List[Tuple[float, Dict[str, Any]]], period_s: float, prof: Dict[str, Dict[str, float]],
             fog_timeout_s: float, burst: int = 1) -> List[Dict[str, Any]]:
    records: List[Dict[str, Any]] = []
    lock = threading.Lock()

    def sink(rec: Dict[str, Any]) -> None:
        with lock:
            records.append(rec)

    proxy = LinkProxy(0, "127.0.0.1", fog.port, **{k: v for k, v in GOOD.items()})
    backend = ZmqFogBackend(proxy.endpoint)
    d = Dispatcher(models, {"*": policy}, sink, fog=backend, wcet_us={n: p["wcet_us"] for n, p in prof.items()},
                   local_exec_us={n: p["p50_us"] for n, p in prof.items()}, local_workers=1,
                   max_local_queue=100_000, fog_timeout_s=fog_timeout_s,
                   breaker=CircuitBreaker(failure_threshold=3, recovery_probes=2, probe_interval_s=0.25),
                   probe_interval_s=0.25)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(d.link.t_f_us(n) is not None for n in models):
        time.sleep(0.05)
    if d.link.t_l_us(1000) is None:
        raise SystemExit("no link estimate after 20 s: is the fog up?")
    proxy.schedule(schedule)
    t0 = time.monotonic()
    for i, (name, x) in enumerate(stream):
        wait = t0 + (i // burst) * burst * period_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        d.submit(Sample(model=name, seq=i, array=x, source="bench", meta={"t_rel": time.monotonic() - t0}))
    d.close(60.0)
    backend.close()
    proxy.close()
    assert len(records) == len(stream), f"{policy}: {len(records)} records for {len(stream)} inputs"
    return sorted(records, key=lambda r: r["seq"])


def phase_of(t_rel: float, bounds: List[Tuple[str, float, float]]) -> str:
    for name, a, b in bounds:
        if a <= t_rel < b:
            return name
    return bounds[-1][0]


def summarize(lat_ms: np.ndarray) -> Dict[str, float]:
    return {"total_s": round(float(lat_ms.sum()) / 1000, 3), "mean_ms": round(float(lat_ms.mean()), 2),
            "p50_ms": round(float(np.quantile(lat_ms, 0.5)), 2), "p99_ms": round(float(np.quantile(lat_ms, 0.99)), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases (smoke run)")
    ap.add_argument("--period-ms", type=float, default=60.0, help="one input every N ms (default 60)")
    ap.add_argument("--size", type=int, default=64, help="bigcnn input side (default 64: 3x64x64 float32)")
    ap.add_argument("--fog-threads", type=int, default=2, help="intra-op threads of the fog worker (default 2)")
    ap.add_argument("--fog-timeout-s", type=float, default=1.0)
    ap.add_argument("--edge-slowdown", type=float, default=3.0,
                    help="edge models run this many times slower than the host (sleep), like a Pi vs a fog server")
    ap.add_argument("--burst", type=int, default=1,
                    help="inputs arrive N at a time, every N periods (same average rate; default 1). Bursts build "
                         "a local queue, which the paper's threshold rule ignores and adaptive accounts for")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "offload.json"))
    ap.add_argument("--dump", metavar="FILE", help="also write every decision record (JSON lines) here")
    args = ap.parse_args()

    phase_s = [("good", 3.0), ("bad", 3.0), ("outage", 2.0), ("good2", 3.0)] if args.quick else \
        [("good", 8.0), ("bad", 8.0), ("outage", 5.0), ("good2", 8.0)]
    bounds: List[Tuple[str, float, float]] = []
    t = 0.0
    for name, dur in phase_s:
        bounds.append((name, t, t + dur))
        t += dur
    total_s = t
    settings: Dict[str, Dict[str, Any]] = {"good": GOOD, "bad": BAD, "outage": OUTAGE, "good2": GOOD}
    schedule = [(a, dict(settings[name])) for name, a, _ in bounds[1:]]

    tmp = Path(tempfile.mkdtemp(prefix="edged-bench-models-"))
    build_bigcnn(tmp, size=args.size)
    cat = Catalogue.discover(extra_dirs=[tmp])
    names = ["bigcnn", "cnn", "mlp"]
    models = {n: SlowedModel(cat.load(n, backend="onnx", threads=1), args.edge_slowdown) for n in names}
    rng = np.random.default_rng(1)
    pool: Dict[str, np.ndarray] = {
        "bigcnn": rng.standard_normal((16, 3, args.size, args.size)).astype(np.float32),
        "cnn": cat.get("cnn").load_validation()[0][:64],
        "mlp": cat.get("mlp").load_validation()[0][:64],
    }
    n_inputs = int(total_s * 1000 / args.period_ms)
    stream = [(names[i % 3], pool[names[i % 3]][(i // 3) % len(pool[names[i % 3]])]) for i in range(n_inputs)]
    prof = measure_local(models, pool, runs=30)

    fog = Fog(tmp, threads=args.fog_threads, workers=1)
    results: Dict[str, List[Dict[str, Any]]] = {}
    try:
        for policy in POLICIES:
            print(f"pass {policy}: {n_inputs} inputs over {total_s:.0f} s ...", file=sys.stderr, flush=True)
            results[policy] = run_pass(policy, fog, models, stream, schedule, args.period_ms / 1000, prof,
                                       args.fog_timeout_s, max(1, args.burst))
    finally:
        fog.stop()
        for m in models.values():
            m.close()
        shutil.rmtree(tmp, ignore_errors=True)

    if args.dump:
        with open(args.dump, "w") as fh:
            for p in POLICIES:
                for r in results[p]:
                    fh.write(json.dumps(dict(r, bench_policy=p)) + "\n")
    lat = {p: np.array([r["latency_us"] / 1000 for r in results[p]]) for p in POLICIES}
    lat["oracle"] = np.minimum(lat["local"], lat["offload"])
    t_rel = [r.get("seq", 0) * args.period_ms / 1000 for r in results["local"]]
    phases = [phase_of(x, bounds) for x in t_rel]
    rows: Dict[str, Dict[str, Any]] = {}
    for p in (*POLICIES, "oracle"):
        row: Dict[str, Any] = summarize(lat[p])
        for ph, _, _ in bounds:
            mask = np.array([q == ph for q in phases])
            row[f"{ph}_mean_ms"] = round(float(lat[p][mask].mean()), 2)
        heavy = np.array([r["model"] == "bigcnn" for r in results["local"]])
        row["bigcnn_mean_ms"] = round(float(lat[p][heavy].mean()), 2)
        row["bigcnn_p99_ms"] = round(float(np.quantile(lat[p][heavy], 0.99)), 2)
        if p != "oracle":
            dec: Dict[str, int] = {}
            for r in results[p]:
                dec[r["decision"]] = dec.get(r["decision"], 0) + 1
            row["decisions"] = dec
            row["errors"] = sum(1 for r in results[p] if r["error"])
        rows[p] = row
    oracle_total = rows["oracle"]["total_s"]
    for p in rows:
        rows[p]["vs_oracle"] = round(rows[p]["total_s"] / oracle_total, 3)

    hdr = (f"{'policy':<10} {'total s':>8} {'x oracle':>8} {'mean ms':>8} {'p50 ms':>7} {'p99 ms':>8} "
           + " ".join(f"{ph + ' ms':>9}" for ph, _, _ in bounds) + f" {'big mean':>8} {'big p99':>8}  decisions")
    print(hdr)
    print("-" * len(hdr))
    for p, row in rows.items():
        dec_text = " ".join(f"{k}={v}" for k, v in sorted(row.get("decisions", {}).items()))
        print(f"{p:<10} {row['total_s']:>8.2f} {row['vs_oracle']:>8.3f} {row['mean_ms']:>8.2f} {row['p50_ms']:>7.2f} "
              f"{row['p99_ms']:>8.2f} " + " ".join(f"{row[ph + '_mean_ms']:>9.2f}" for ph, _, _ in bounds)
              + f" {row['bigcnn_mean_ms']:>8.2f} {row['bigcnn_p99_ms']:>8.2f}  {dec_text}")
    adaptive_ok = rows["adaptive"]["total_s"] <= 1.10 * oracle_total
    below_static = rows["adaptive"]["total_s"] < min(rows["local"]["total_s"], rows["offload"]["total_s"])
    print(f"\nlocal profile (1 thread, slowed {args.edge_slowdown:g}x): " + ", ".join(
        f"{n} p50 {v['p50_us'] / 1000:.2f} ms wcet {v['wcet_us'] / 1000:.2f} ms" for n, v in prof.items()))
    print(f"targets: adaptive <= 1.10 x oracle: {'met' if adaptive_ok else 'MISSED'} "
          f"({rows['adaptive']['vs_oracle']:.3f}); adaptive below both static policies: "
          f"{'met' if below_static else 'MISSED'}")

    out = {
        "bench": "offload", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "setup": {"period_ms": args.period_ms, "burst": args.burst, "inputs_per_pass": n_inputs,
                  "stream": "bigcnn, cnn, mlp repeated",
                  "bigcnn_input": [3, args.size, args.size], "edge_threads": 1, "edge_local_workers": 1,
                  "edge_slowdown": args.edge_slowdown,
                  "fog_workers": 1, "fog_threads": args.fog_threads, "fog_timeout_s": args.fog_timeout_s,
                  "phases": [{"name": n, "start_s": a, "end_s": b} for n, a, b in bounds],
                  "links": {"good": GOOD, "bad": BAD, "outage": OUTAGE},
                  "oracle": "per input min(latency in the local pass, latency in the offload pass)"},
        "local_profile_us": prof,
        "results": rows,
        "targets": {"adaptive_le_1.10_oracle": adaptive_ok, "adaptive_below_static": below_static},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
