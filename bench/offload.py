"""Offloading benchmark: one replayed input stream, a changing link, four policies and two offline references.

Setup (all on this machine):

* a real ``edged fog`` subprocess (1 worker) serving the shipped ``mlp`` and ``cnn`` plus ``bigcnn``: a
  random-weight 20-layer CNN generated here with the ``onnx`` package (timing only, not a shipped model),
  written with a manifest into a temp models dir that both the edge and the fog load;
* the edge: a :class:`Dispatcher` with 1 local worker and 1-thread models, talking to the fog through a
  link proxy (``tests/linkproxy.py``) run as its own process;
* a slow edge, emulated two ways (``--slow-edge``): ``sleep`` (each local run is followed by a sleep of
  ``edge-slowdown - 1`` times its duration: the CPU stays free) or ``cpu`` (this process pinned to core 0
  with ``--hogs`` busy-loop processes; the fog and the proxy pinned to core 1, as in the independent
  evaluation of issue 14);
* the link (``--schedule five``): LAN (1 ms, 50 MB/s) → Wi-Fi (8 ± 6 ms, 10 Mbit/s) → congested (40 ms,
  1 Mbit/s) → stall spikes (2 ms, 50 MB/s, 300 ms stalls every 2 s) → LAN; ``--schedule legacy`` is the
  previous good → bad → outage → good;
* the streams (``--stream``): ``steady`` (one input every ``--period-ms``) and ``burst`` (``--burst``
  inputs back to back every ``--burst-every-ms``, handed to the dispatcher together as a router finds
  them queued); both repeat ``bigcnn, mlp, cnn, mlp, cnn`` (a fifth heavy).

Each of ``local``, ``offload``, ``threshold`` and ``adaptive`` replays the same stream on the same link
schedule, ``--repeats`` times. References:

* ``oracle`` (stitched): per input, the better of its latency in the ``local`` and the ``offload`` pass;
* ``offline``: a schedule made knowing everything: each input's local cost and fog time (the smallest
  measured for it in any pass: edge and fog share this host), the link's settings (latency, bandwidth,
  stalls; jitter at its mean), list-scheduled on three resources (local worker, uplink, fog; what arrived
  together shortest first) with assignments searched per window of 12 inputs, then by single changes over
  the whole stream (bursts can be split). A model-based reference, not a proof of optimality;
* ``bound0``: the strict lower bound, each input at min(local cost, offload cost) with no queueing at all.

Latency is arrival → result. Targets (issue 14, every repeat): adaptive total <= threshold, <= local,
<= offload; adaptive p99 <= threshold p99; adaptive <= 1.15 x offline.

Usage: ``python bench/offload.py [--quick] [--stream steady|burst|both] [--slow-edge sleep|cpu] [--repeats 3]``;
prints tables, writes ``bench/results/offload.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edged.models import Catalogue  # noqa: E402
from edged.offload.dispatcher import HEADER_OVERHEAD_BYTES, Dispatcher  # noqa: E402
from edged.offload.fog_client import CircuitBreaker, ZmqFogBackend  # noqa: E402
from edged.offload.policy import parse_risk  # noqa: E402
from edged.sources.sample import Sample  # noqa: E402

POLICIES = ("local", "offload", "threshold", "adaptive")
_CLEAN: Dict[str, Any] = {"loss": 0.0, "outage": False, "jitter_ms": 0.0, "stall_ms": 0.0, "stall_every_s": 0.0}
LAN: Dict[str, Any] = dict(_CLEAN, latency_ms=1.0, bandwidth_Bps=50e6)
WIFI: Dict[str, Any] = dict(_CLEAN, latency_ms=8.0, jitter_ms=6.0, bandwidth_Bps=1.25e6)
CONGESTED: Dict[str, Any] = dict(_CLEAN, latency_ms=40.0, bandwidth_Bps=125e3)
SPIKES: Dict[str, Any] = dict(_CLEAN, latency_ms=2.0, bandwidth_Bps=50e6, stall_ms=300.0, stall_every_s=2.0)
GOOD: Dict[str, Any] = dict(_CLEAN, latency_ms=1.0, bandwidth_Bps=50e6)
BAD: Dict[str, Any] = dict(_CLEAN, latency_ms=50.0, bandwidth_Bps=0.5e6, loss=0.02, retransmit_ms=200.0)
OUTAGE: Dict[str, Any] = dict(_CLEAN, outage=True)
SCHEDULES: Dict[str, List[Tuple[str, Dict[str, Any]]]] = {
    "five": [("lan", LAN), ("wifi", WIFI), ("congested", CONGESTED), ("spikes", SPIKES), ("lan2", LAN)],
    "legacy": [("good", GOOD), ("bad", BAD), ("outage", OUTAGE), ("good2", GOOD)],
}
#: the stream's model pattern (a fifth heavy)
PATTERN = ["bigcnn", "mlp", "cnn", "mlp", "cnn"]
REPLY_BYTES = 300


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


# ---- processes: fog, link proxy, CPU hogs --------------------------------------------------------
def _pinned(core: Optional[int]) -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` pinning the child (and every thread it starts) to ``core``."""
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def pin_this_process(core: int) -> None:
    """Pin every thread of this process (those numpy started at import too) and all future ones to ``core``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except OSError:
            pass
    os.sched_setaffinity(0, {core})


class Fog:
    def __init__(self, models_dir: Path, threads: int, workers: int, core: Optional[int] = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "fog", "--bind", "tcp://127.0.0.1:0", "--models-dir", str(models_dir),
             "--backend", "onnx", "--threads", str(threads), "--workers", str(workers)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT), preexec_fn=_pinned(core))
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


class ProxyProcess:
    """``tests.linkproxy`` in its own process (pinnable away from the edge), driven over stdin."""

    def __init__(self, target_port: int, settings: Dict[str, Any], core: Optional[int] = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.linkproxy", "--target-port", str(target_port), json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT), preexec_fn=_pinned(core))
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if r else ""
        if not line.startswith("port "):
            self.proc.kill()
            raise SystemExit(f"link proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        self.endpoint = f"tcp://127.0.0.1:{self.port}"

    def _send(self, cmd: Dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def schedule(self, steps: Sequence[Tuple[float, Dict[str, Any]]]) -> None:
        self._send({"schedule": [[t, c] for t, c in steps]})

    def close(self) -> None:
        try:
            self._send({"quit": True})
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def start_hogs(n: int, core: int) -> List[subprocess.Popen]:
    """``n`` busy-loop processes pinned to ``core``: the edge shares that core with them."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_pinned(core))
            for _ in range(n)]


# ---- one pass ------------------------------------------------------------------------------------
def measure_local(models: Dict[str, Any], inputs: Dict[str, np.ndarray], runs: int) -> Dict[str, Dict[str, float]]:
    """Profile each model here, as the edge runs it (1 thread, slowed): p50 and WCET (max of ``runs``), µs."""
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


def _dispatcher_extras(risk_k: float, joint: bool) -> Dict[str, Any]:
    """The issue-14 dispatcher arguments this dispatcher accepts (none before the patch is applied)."""
    params = set(inspect.signature(Dispatcher.__init__).parameters)
    try:  # settings may live in a DispatcherConfig (passed as keywords)
        import dataclasses

        from edged.offload.types import DispatcherConfig

        params |= {f.name for f in dataclasses.fields(DispatcherConfig)}
    except ImportError:
        pass
    extras: Dict[str, Any] = {}
    if "risk_k" in params:
        extras["risk_k"] = risk_k
    if "joint" in params:
        extras["joint"] = joint
    return extras


def run_pass(policy: str, fog: Fog, models: Dict[str, Any], stream: List[Tuple[str, np.ndarray]],
             schedule: List[Tuple[float, Dict[str, Any]]], first: Dict[str, Any], arrivals: List[float],
             groups: List[List[int]], prof: Dict[str, Dict[str, float]], fog_timeout_s: float,
             extras: Dict[str, Any], proxy_core: Optional[int]) -> List[Dict[str, Any]]:
    """Replay ``stream``: each group of indices is submitted together at its arrival time (s from start)."""
    records: List[Dict[str, Any]] = []
    lock = threading.Lock()

    def sink(rec: Dict[str, Any]) -> None:
        with lock:
            records.append(rec)

    proxy = ProxyProcess(fog.port, first, core=proxy_core)
    backend = ZmqFogBackend(proxy.endpoint)
    d = Dispatcher(models, {"*": policy}, sink, fog=backend, wcet_us={n: p["wcet_us"] for n, p in prof.items()},
                   local_exec_us={n: p["p50_us"] for n, p in prof.items()}, local_workers=1,
                   max_local_queue=100_000, fog_timeout_s=fog_timeout_s,
                   breaker=CircuitBreaker(failure_threshold=3, recovery_probes=2, probe_interval_s=0.25),
                   probe_interval_s=0.25, **(extras if policy == "adaptive" else {}))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(d.link.t_f_us(n) is not None for n in models):
        time.sleep(0.05)
    if d.link.t_l_us(1000) is None:
        raise SystemExit("no link estimate after 20 s: is the fog up?")
    proxy.schedule(schedule)
    t0 = time.monotonic()
    for group in groups:
        wait = t0 + arrivals[group[0]] - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        t_rel = time.monotonic() - t0
        # arrival = when the input was due, not when this loop got to it: a local input the dispatcher runs
        # inline on this thread delays the next submissions, and that wait is latency too
        due = t0 + arrivals[group[0]]
        samples = [Sample(model=stream[i][0], seq=i, array=stream[i][1], source="bench", meta={"t_rel": t_rel},
                          t_arrival=due) for i in group]
        if len(samples) == 1:
            d.submit(samples[0])
        else:
            d.submit_many(samples)
    d.close(60.0)
    backend.close()
    proxy.close()
    assert len(records) == len(stream), f"{policy}: {len(records)} records for {len(stream)} inputs"
    assert len({r["seq"] for r in records}) == len(stream), f"{policy}: a second record for an input"
    return sorted(records, key=lambda r: r["seq"])


# ---- offline references ---------------------------------------------------------------------------
class LinkTimeline:
    """The emulated link as the schedule set it: per phase latency (jitter at its mean), µs per byte, stalls."""

    def __init__(self, bounds: List[Tuple[str, float, float]], settings: Dict[str, Dict[str, Any]]) -> None:
        self.bounds = bounds
        self.settings = settings

    def at(self, t: float) -> Tuple[str, Dict[str, Any], float]:
        for name, a, b in self.bounds:
            if a <= t < b:
                return name, self.settings[name], a
        name, a, _ = self.bounds[-1]
        return name, self.settings[name], a

    def stalled_until(self, t: float) -> float:
        _, s, a = self.at(t)
        ms, every = float(s.get("stall_ms") or 0.0), float(s.get("stall_every_s") or 0.0)
        if ms <= 0 or every <= 0:
            return t
        k, phase = divmod(t - a, every)
        return a + (k + 1) * every if phase >= every - ms / 1000.0 else t

    def transfer(self, t: float, nbytes: int) -> Tuple[float, float]:
        """(seconds the bytes hold the uplink from ``t``, one-way latency in s) at time ``t``."""
        _, s, _ = self.at(t)
        bw = s.get("bandwidth_Bps")
        return (nbytes / bw if bw else 0.0), float(s.get("latency_ms") or 0.0) / 1000.0


def _offline_sim(items: Sequence[Dict[str, float]], choice: Sequence[bool], state: Tuple[float, float, float],
                 link: LinkTimeline) -> Tuple[float, Tuple[float, float, float], List[float]]:
    """Sum of latencies (s) of ``items`` run where ``choice`` says (True = offload), from ``state`` =
    (local free, uplink free, fog free) in seconds; returns (sum, end state, per-item latency)."""
    local_free, up_free, fog_free = state
    total = 0.0
    lats = [0.0] * len(items)
    # each resource takes what arrived together shortest first (as the dispatcher starts a joint batch)
    order = sorted(range(len(items)), key=lambda n: (
        not choice[n], items[n]["arrival"],
        (items[n]["t_f"] + link.transfer(items[n]["arrival"], int(items[n]["bytes_out"]))[0]) if choice[n]
        else items[n]["local"], n))
    for n in order:
        it, off = items[n], choice[n]
        r = it["arrival"]
        if off:
            start = link.stalled_until(max(r, up_free))
            tx, lat = link.transfer(start, int(it["bytes_out"]))
            up_free = start + tx
            arrive = link.stalled_until(up_free + lat)
            fog_start = max(arrive, fog_free)
            fog_free = fog_start + it["t_f"]
            back_tx, back_lat = link.transfer(fog_free, REPLY_BYTES)
            done = link.stalled_until(fog_free + back_tx + back_lat)
        else:
            start = max(r, local_free)
            local_free = start + it["local"]
            done = local_free
        lats[n] = done - r
        total += done - r
    return total, (local_free, up_free, fog_free), lats


def offline_schedule(items: List[Dict[str, float]], link: LinkTimeline, window: int = 12,
                     passes: int = 3) -> List[float]:
    """Per-input latency (s) of the offline schedule: windows of ``window`` inputs in arrival order, each
    searched from three starts (each input where it finishes first, all local, all offloaded) with single
    flips while one lowers the window's total, the state carried to the next window; then up to ``passes``
    passes of single flips over the whole stream, each kept if it lowers the whole total."""
    state = (0.0, 0.0, 0.0)
    plan: List[bool] = []
    for w0 in range(0, len(items), window):
        win = items[w0:w0 + window]
        greedy: List[bool] = []
        st = state
        for it in win:
            loc = _offline_sim([it], [False], st, link)[0]
            off = _offline_sim([it], [True], st, link)[0]
            greedy.append(off < loc)
            st = _offline_sim([it], [greedy[-1]], st, link)[1]
        best: Optional[Tuple[float, List[bool]]] = None
        for assign in (greedy, [False] * len(win), [True] * len(win)):
            obj = _offline_sim(win, assign, state, link)[0]
            improved = True
            while improved:
                improved = False
                for n in range(len(win)):
                    trial = list(assign)
                    trial[n] = not trial[n]
                    t_obj = _offline_sim(win, trial, state, link)[0]
                    if t_obj < obj - 1e-9:
                        assign, obj, improved = trial, t_obj, True
            if best is None or obj < best[0] - 1e-9:
                best = (obj, assign)
        assert best is not None
        state = _offline_sim(win, best[1], state, link)[1]
        plan.extend(best[1])
    # then whole-stream passes of single changes (what a window does to the next one counts)
    obj = _offline_sim(items, plan, (0.0, 0.0, 0.0), link)[0]
    for _ in range(passes):
        improved = False
        for n in range(len(items)):
            plan[n] = not plan[n]
            t_obj = _offline_sim(items, plan, (0.0, 0.0, 0.0), link)[0]
            if t_obj < obj - 1e-9:
                obj, improved = t_obj, True
            else:
                plan[n] = not plan[n]
        if not improved:
            break
    return _offline_sim(items, plan, (0.0, 0.0, 0.0), link)[2]


def true_costs(stream: List[Tuple[str, np.ndarray]], arrivals: List[float],
               results: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, float]]:
    """Per input: arrival (s), local cost (s) and fog time (s), each the smallest measured for that input
    in any pass (the fog and the edge share this host, so each pass saw different contention; the best
    each input showed is what an offline scheduler could have had), else the model's median; request
    bytes. ``results`` maps policy -> records by seq."""
    local_by: Dict[int, float] = {}
    fog_by: Dict[int, float] = {}
    local_model: Dict[str, List[float]] = {}
    fog_model: Dict[str, List[float]] = {}
    for recs in results.values():
        for r in recs:
            if r["exec_us"] is None or r["error"]:
                continue
            seq, v = r["seq"], r["exec_us"] / 1e6
            if r["decision"] == "offload":
                fog_by[seq] = min(v, fog_by.get(seq, v))
                fog_model.setdefault(r["model"], []).append(v)
            else:
                local_by[seq] = min(v, local_by.get(seq, v))
                local_model.setdefault(r["model"], []).append(v)
    items = []
    for i, (name, x) in enumerate(stream):
        items.append({"arrival": arrivals[i],
                      "local": local_by.get(i, float(np.median(local_model.get(name, [0.0])))),
                      "t_f": fog_by.get(i, float(np.median(fog_model.get(name, [0.0])))),
                      "bytes_out": int(x.nbytes) + HEADER_OVERHEAD_BYTES})
    return items


# ---- tables --------------------------------------------------------------------------------------
def phase_of(t_rel: float, bounds: List[Tuple[str, float, float]]) -> str:
    for name, a, b in bounds:
        if a <= t_rel < b:
            return name
    return bounds[-1][0]


def summarize(lat_ms: np.ndarray) -> Dict[str, float]:
    return {"total_s": round(float(lat_ms.sum()) / 1000, 3), "mean_ms": round(float(lat_ms.mean()), 2),
            "p50_ms": round(float(np.quantile(lat_ms, 0.5)), 2), "p99_ms": round(float(np.quantile(lat_ms, 0.99)), 2)}


_REASON = re.compile(r"^(fog down|no link estimate|no local estimate|deadline|energy|expected offload|expected local|"
                     r"offload|local|decision failed|fog refuses)")


def reason_kind(rec: Dict[str, Any]) -> str:
    m = _REASON.match(rec["reason"] or "")
    kind = m.group(1) if m else "other"
    return f"{kind} (fallback)" if rec["decision"] == "fallback" else kind


def one_repeat(stream_name: str, stream: List[Tuple[str, np.ndarray]], arrivals: List[float],
               groups: List[List[int]], fog: Fog, models: Dict[str, Any], schedule: List[Tuple[float, Dict[str, Any]]],
               first: Dict[str, Any], bounds: List[Tuple[str, float, float]], link: LinkTimeline,
               prof: Dict[str, Dict[str, float]], args: argparse.Namespace, extras: Dict[str, Any],
               proxy_core: Optional[int], dump: Optional[Any], repeat: int) -> Dict[str, Any]:
    results: Dict[str, List[Dict[str, Any]]] = {}
    for policy in POLICIES:
        print(f"[{stream_name} #{repeat + 1}] pass {policy}: {len(stream)} inputs over {bounds[-1][2]:.0f} s ...",
              file=sys.stderr, flush=True)
        results[policy] = run_pass(policy, fog, models, stream, schedule, first, arrivals, groups, prof,
                                   args.fog_timeout_s, extras, proxy_core)
    if dump is not None:
        for p in POLICIES:
            for r in results[p]:
                dump.write(json.dumps(dict(r, bench_policy=p, bench_stream=stream_name, bench_repeat=repeat)) + "\n")
    lat = {p: np.array([r["latency_us"] / 1000 for r in results[p]]) for p in POLICIES}
    lat["oracle"] = np.minimum(lat["local"], lat["offload"])
    items = true_costs(stream, arrivals, results)
    lat["offline"] = np.array(offline_schedule(items, link)) * 1000
    alone = [min(a, b) for a, b in zip(_per_item(items, link, False), _per_item(items, link, True))]
    lat["bound0"] = np.array(alone) * 1000
    phases = [phase_of(arrivals[i], bounds) for i in range(len(stream))]
    rows: Dict[str, Dict[str, Any]] = {}
    for p in (*POLICIES, "oracle", "offline", "bound0"):
        row: Dict[str, Any] = summarize(lat[p])
        for ph, _, _ in bounds:
            mask = np.array([q == ph for q in phases])
            row[f"{ph}_mean_ms"] = round(float(lat[p][mask].mean()), 2)
            row[f"{ph}_p99_ms"] = round(float(np.quantile(lat[p][mask], 0.99)), 2)
        if p in POLICIES:
            dec: Dict[str, int] = {}
            for r in results[p]:
                dec[r["decision"]] = dec.get(r["decision"], 0) + 1
            row["decisions"] = dec
            row["errors"] = sum(1 for r in results[p] if r["error"])
        rows[p] = row
    for p in rows:
        rows[p]["vs_offline"] = round(rows[p]["total_s"] / rows["offline"]["total_s"], 3)
        rows[p]["vs_oracle"] = round(rows[p]["total_s"] / rows["oracle"]["total_s"], 3)
    # where adaptive gains or loses, per phase, by the reasons of its records
    why: Dict[str, Dict[str, Any]] = {}
    for ph, _, _ in bounds:
        kinds: Dict[str, List[float]] = {}
        for r, q in zip(results["adaptive"], phases):
            if q == ph:
                kinds.setdefault(reason_kind(r), []).append(r["latency_us"] / 1000)
        why[ph] = {k: {"n": len(v), "mean_ms": round(float(np.mean(v)), 2)} for k, v in sorted(kinds.items())}
    a, t = rows["adaptive"], rows["threshold"]
    targets = {
        "adaptive_le_threshold": a["total_s"] <= t["total_s"],
        "adaptive_le_local": a["total_s"] <= rows["local"]["total_s"],
        "adaptive_le_offload": a["total_s"] <= rows["offload"]["total_s"],
        "adaptive_p99_le_threshold": a["p99_ms"] <= t["p99_ms"],
        "adaptive_le_1.15_offline": a["total_s"] <= 1.15 * rows["offline"]["total_s"],
    }
    return {"rows": rows, "adaptive_reasons_by_phase": why, "targets": targets}


def _per_item(items: List[Dict[str, float]], link: LinkTimeline, off: bool) -> List[float]:
    """Each input alone on an idle edge / link / fog (s): the no-queueing bound's two costs."""
    return [_offline_sim([it], [off], (0.0, 0.0, 0.0), link)[0] for it in items]


def print_table(title: str, rows: Dict[str, Dict[str, Any]], bounds: List[Tuple[str, float, float]]) -> None:
    print(f"\n{title}")
    hdr = (f"{'policy':<10} {'total s':>8} {'x offl':>7} {'x orac':>7} {'mean ms':>8} {'p99 ms':>8} "
           + " ".join(f"{ph[:9] + ' ms':>12}" for ph, _, _ in bounds) + "  decisions")
    print(hdr)
    print("-" * len(hdr))
    for p, row in rows.items():
        dec_text = " ".join(f"{k}={v}" for k, v in sorted(row.get("decisions", {}).items()))
        print(f"{p:<10} {row['total_s']:>8.2f} {row['vs_offline']:>7.3f} {row['vs_oracle']:>7.3f} "
              f"{row['mean_ms']:>8.2f} {row['p99_ms']:>8.2f} "
              + " ".join(f"{row[ph + '_mean_ms']:>12.2f}" for ph, _, _ in bounds) + f"  {dec_text}")


def spread(values: List[float]) -> Dict[str, float]:
    return {"min": round(min(values), 3), "mean": round(float(np.mean(values)), 3), "max": round(max(values), 3)}


def make_stream(kind: str, total_s: float, args: argparse.Namespace, pool: Dict[str, np.ndarray]
                ) -> Tuple[List[Tuple[str, np.ndarray]], List[float], List[List[int]]]:
    """(inputs, arrival s per input, groups submitted together) for a ``steady`` or ``burst`` stream."""
    stream: List[Tuple[str, np.ndarray]] = []
    arrivals: List[float] = []
    groups: List[List[int]] = []
    if kind == "steady":
        n = int(total_s * 1000 / args.period_ms)
        for i in range(n):
            groups.append([i])
            arrivals.append(i * args.period_ms / 1000)
    else:
        every = args.burst_every_ms / 1000
        for b in range(int(total_s / every)):
            groups.append(list(range(b * args.burst, (b + 1) * args.burst)))
            arrivals.extend([b * every] * args.burst)
    for i in range(len(arrivals)):
        name = PATTERN[i % len(PATTERN)]
        stream.append((name, pool[name][(i // len(PATTERN)) % len(pool[name])]))
    return stream, arrivals, groups


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases (smoke run)")
    ap.add_argument("--phase-s", type=float, default=None, help="seconds per phase (default 8, --quick 2)")
    ap.add_argument("--schedule", choices=sorted(SCHEDULES), default="five")
    ap.add_argument("--stream", choices=("steady", "burst", "both"), default="both")
    ap.add_argument("--period-ms", type=float, default=20.0, help="steady: one input every N ms (default 20)")
    ap.add_argument("--burst", type=int, default=10, help="burst: inputs back to back (default 10)")
    ap.add_argument("--burst-every-ms", type=float, default=200.0, help="burst: one burst every N ms (default 200)")
    ap.add_argument("--repeats", type=int, default=1, help="repeat every pass N times; the spread is reported")
    ap.add_argument("--size", type=int, default=64, help="bigcnn input side (default 64: 3x64x64 float32)")
    ap.add_argument("--fog-threads", type=int, default=None,
                    help="intra-op threads of the fog worker (default 2; 1 with --slow-edge cpu: it has one core)")
    ap.add_argument("--fog-timeout-s", type=float, default=1.0)
    ap.add_argument("--slow-edge", choices=("sleep", "cpu"), default="sleep",
                    help="sleep: edge models sleep (slowdown-1)x their run time; cpu: this process shares core 0 "
                         "with --hogs busy loops, the fog and the proxy run on core 1")
    ap.add_argument("--edge-slowdown", type=float, default=3.0, help="--slow-edge sleep: factor (default 3)")
    ap.add_argument("--hogs", type=int, default=2, help="--slow-edge cpu: busy loops sharing the edge's core")
    ap.add_argument("--risk", default="mean+0.5dev",
                    help='adaptive\'s risk, "mean" or "mean+<k>dev" (default mean+0.5dev: the best of 0, 0.5 and 1 '
                         'in smoke runs of both streams)')
    ap.add_argument("--no-joint", action="store_true", help="adaptive decides a burst one input at a time")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "offload.json"))
    ap.add_argument("--dump", metavar="FILE", help="also write every decision record (JSON lines) here")
    args = ap.parse_args()
    risk_k = parse_risk(args.risk)
    extras = _dispatcher_extras(risk_k, not args.no_joint)
    if "risk_k" not in extras:
        print("note: this dispatcher has no risk_k/joint (issue 14 patch not applied): adaptive runs as before",
              file=sys.stderr)

    edge_core = fog_core = None
    hogs: List[subprocess.Popen] = []
    if args.slow_edge == "cpu":
        if (os.cpu_count() or 1) < 2:
            raise SystemExit("--slow-edge cpu needs 2 cores (edge + hogs on one, fog + proxy on the other)")
        edge_core, fog_core = 0, 1
        pin_this_process(edge_core)
        hogs = start_hogs(args.hogs, edge_core)
    fog_threads = args.fog_threads or (1 if args.slow_edge == "cpu" else 2)
    slowdown = args.edge_slowdown if args.slow_edge == "sleep" else 1.0

    phase_s = args.phase_s or (2.0 if args.quick else 8.0)
    bounds: List[Tuple[str, float, float]] = []
    t = 0.0
    for name, _ in SCHEDULES[args.schedule]:
        bounds.append((name, t, t + phase_s))
        t += phase_s
    total_s = t
    settings = dict(SCHEDULES[args.schedule])
    first = settings[bounds[0][0]]
    schedule = [(a, dict(settings[name])) for name, a, _ in bounds[1:]]
    link = LinkTimeline(bounds, settings)

    tmp = Path(tempfile.mkdtemp(prefix="edged-bench-models-"))
    out: Dict[str, Any] = {}
    try:
        build_bigcnn(tmp, size=args.size)
        cat = Catalogue.discover(extra_dirs=[tmp])
        names = ["bigcnn", "cnn", "mlp"]
        models = {n: SlowedModel(cat.load(n, backend="onnx", threads=1), slowdown) for n in names}
        rng = np.random.default_rng(1)
        pool: Dict[str, np.ndarray] = {
            "bigcnn": rng.standard_normal((16, 3, args.size, args.size)).astype(np.float32),
            "cnn": cat.get("cnn").load_validation()[0][:64],
            "mlp": cat.get("mlp").load_validation()[0][:64],
        }
        prof = measure_local(models, pool, runs=30)
        fog = Fog(tmp, threads=fog_threads, workers=1, core=fog_core)
        dump = open(args.dump, "w") if args.dump else None  # noqa: SIM115 - closed in the finally below
        per_stream: Dict[str, Any] = {}
        try:
            for kind in (("steady", "burst") if args.stream == "both" else (args.stream,)):
                stream, arrivals, groups = make_stream(kind, total_s, args, pool)
                reps = [one_repeat(kind, stream, arrivals, groups, fog, models, schedule, first, bounds, link, prof,
                                   args, extras, fog_core, dump, r) for r in range(max(1, args.repeats))]
                for r, rep in enumerate(reps):
                    print_table(f"{kind} stream, repeat {r + 1}/{len(reps)} ({len(stream)} inputs, "
                                f"slow edge: {args.slow_edge})", rep["rows"], bounds)
                    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in rep["targets"].items()))
                per_stream[kind] = {
                    "inputs": len(stream),
                    "repeats": reps,
                    "spread": {
                        **{f"{p}_total_s": spread([rep["rows"][p]["total_s"] for rep in reps])
                           for p in (*POLICIES, "oracle", "offline", "bound0")},
                        **{f"{p}_p99_ms": spread([rep["rows"][p]["p99_ms"] for rep in reps]) for p in POLICIES},
                        "adaptive_vs_threshold": spread([rep["rows"]["adaptive"]["total_s"]
                                                         / rep["rows"]["threshold"]["total_s"] for rep in reps]),
                        "adaptive_vs_offline": spread([rep["rows"]["adaptive"]["vs_offline"] for rep in reps]),
                        "adaptive_p99_vs_threshold": spread([rep["rows"]["adaptive"]["p99_ms"]
                                                             / rep["rows"]["threshold"]["p99_ms"] for rep in reps]),
                    },
                    "targets_every_repeat": {k: all(rep["targets"][k] for rep in reps) for k in reps[0]["targets"]},
                }
                sp = per_stream[kind]["spread"]
                print(f"\n{kind}: over {len(reps)} repeat(s): adaptive/threshold total {sp['adaptive_vs_threshold']}, "
                      f"adaptive/offline {sp['adaptive_vs_offline']}, adaptive/threshold p99 "
                      f"{sp['adaptive_p99_vs_threshold']}")
        finally:
            fog.stop()
            if dump is not None:
                dump.close()
            for m in models.values():
                m.close()
        out = {
            "bench": "offload", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "setup": {"schedule": args.schedule, "phase_s": phase_s, "period_ms": args.period_ms,
                      "burst": args.burst, "burst_every_ms": args.burst_every_ms, "pattern": PATTERN,
                      "bigcnn_input": [3, args.size, args.size], "edge_threads": 1, "edge_local_workers": 1,
                      "slow_edge": args.slow_edge, "edge_slowdown": slowdown if args.slow_edge == "sleep" else None,
                      "hogs": args.hogs if args.slow_edge == "cpu" else 0,
                      "fog_workers": 1, "fog_threads": fog_threads, "fog_timeout_s": args.fog_timeout_s,
                      "adaptive": {"risk": args.risk, **extras},
                      "phases": [{"name": n, "start_s": a, "end_s": b, "link": settings[n]} for n, a, b in bounds],
                      "references": {
                          "oracle": "per input min(latency in the local pass, latency in the offload pass)",
                          "offline": "list schedule on local worker, uplink and fog with each input's best "
                                     "measured costs and the link's settings, searched per window of 12 then by "
                                     "single changes over the whole stream (model-based, not a proof)",
                          "bound0": "sum over inputs of min(local cost, offload cost), no queueing: a strict "
                                    "lower bound"}},
            "local_profile_us": prof,
            "streams": per_stream,
        }
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
