#!/usr/bin/env python3
"""Per-input overhead: ``edged run`` against the loop a user would write instead, in one run.

The anchor (issue 13) is a hand-written loop, in its own process, on the same model file:
a ZeroMQ PULL on an ipc endpoint; ``recv_multipart``, ``json.loads`` of the header,
``np.frombuffer``; ``session.run`` (onnxruntime: 1 intra-op thread, 1 inter-op, sequential)
or the ai_edge_litert ``Interpreter`` (1 thread); ``json.dumps`` of a small record (model,
seq, label, score, latency_us); ``os.write`` to an O_APPEND file. Its latency runs from
``recv_multipart`` returning to ``os.write`` returning (``time.perf_counter_ns``).

Against it, three processes per (model, backend), one after the other, each fed by a sender
in a separate process over the same kind of ipc endpoint with the same messages:

* ``loop``       the hand-written loop;
* ``edged``      a real ``edged run`` subprocess: one ZeroMQ source, policy ``local``, fog off,
                 power off, journal off, logs in a temp dir, only that model enabled, 1 thread,
                 the profile measured beforehand (``edged profile``) so start-up is quick;
* ``edged+fog``  the same with the fog enabled: a real ``edged fog`` subprocess on loopback,
                 reached through ``tests/linkproxy.py`` with ``--fog-latency-ms`` (20) one way,
                 policy ``adaptive``. The fog looks far away, so adaptive decides local on the
                 numbers (estimates and probes run); the table counts any input that was not local.

Each process gets the same phases: a warm-up (discarded), ``max`` (the sender sends N inputs as
fast as it can, SNDHWM = N; throughput = N / time from the first to the last record written),
then paced senders at each rate (``--seconds`` each; latency p50 / p99). edged's latency is its
record's ``latency_us`` (arrival -> result: it stops before the record is encoded and written,
which the loop's figure includes; the loop's arrival -> result time is kept in the JSON as
``loop_infer_*``). edged's "last record written" is the decision log's mtime (kernel tick
resolution, a few ms over a span of seconds).

Usage::

    .venv/bin/python bench/overhead.py                 # everything, 1 repeat
    .venv/bin/python bench/overhead.py --repeats 3     # the figures of issue 13 (median [min-max])
    .venv/bin/python bench/overhead.py --quick         # smoke test (~1 min)
    .venv/bin/python bench/overhead.py --models mlp --backends onnx --rates max,2000 --no-fog
    .venv/bin/python bench/overhead.py --profile /tmp/prof --models mlp --backends onnx   # py-spy, per input
    .venv/bin/python bench/overhead.py --profile /tmp/prof-fog --profile-fog              # the same, fog on

``--profile PREFIX`` instead runs py-spy (``.venv/bin/pip install py-spy``) on the saturated ``edged run``
and prints the functions by self time in µs per input: once over every running thread ("cpu": py-spy
counts a thread blocked in ``Condition.wait`` under backpressure as running) and once over the
thread holding the GIL ("gil": the serial Python cost, which bounds throughput); raw collapsed
stacks and a speedscope file (with native frames) are kept under PREFIX.

Prints a table; writes ``bench/results/overhead.json`` (``--out``) with every number, the machine,
versions, load averages and settings. Progress goes to stderr. Every child process is ended on
exit, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OUT = REPO / "bench" / "results" / "overhead.json"
MODES = ("loop", "edged", "edged+fog")
#: inputs of the unmeasured warm-up phase every process gets first
WARMUP = 1000
#: receive high-water mark of both receivers (edged's default ``rcvhwm``)
RCVHWM = 1000


# ============================================================================ child: the sender
def sender_main(endpoint: str, model: str, n: int, rate: float, seq0: int) -> int:
    """PUSH ``n`` inputs of ``model`` (validation rows, wire layout) to ``endpoint``; ``rate`` 0 = flat out.

    Paced: input i leaves at t0 + i / rate (an open-loop schedule; sleeps, then spins only the last
    ~0.2 ms, so the sender does not hold a core the receivers need).
    """
    import numpy as np
    import zmq

    x = np.load(REPO / "models" / model / "validation.npz")["x"].astype(np.float32)
    rows = [np.ascontiguousarray(r).tobytes() for r in x]
    heads = [b'{"model":"%s","seq":%d}' % (model.encode(), seq0 + i) for i in range(n)]
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, max(n + 16, 1000))  # flat out: never blocks on our side
    s.connect(endpoint)
    time.sleep(0.2)  # the ipc connection is up before the first input leaves
    t0 = time.perf_counter()
    period = 1.0 / rate if rate > 0 else 0.0
    for i in range(n):
        if period:
            due = t0 + i * period
            while True:
                left = due - time.perf_counter()
                if left <= 0:
                    break
                if left > 0.0003:
                    time.sleep(left - 0.0002)
        s.send_multipart([heads[i], rows[i % len(rows)]], copy=False)
    send_s = time.perf_counter() - t0
    s.close(linger=-1)  # returns once every input reached the receiver
    ctx.term()
    print(json.dumps({"sent": n, "send_s": send_s}), flush=True)
    return 0


# ============================================================================ child: the hand-written loop
def loop_main(spec_json: str) -> int:
    """The loop a user would write (see the module docstring). Prints one JSON line per phase.

    ``spec_json``: endpoint, backend, model_path, input_name, shape (one input, batch 1, wire order),
    perm (wire -> model layout, or null), out (records file), phases (inputs per phase), timeout_s.
    """
    import numpy as np
    import zmq

    spec = json.loads(spec_json)
    shape = tuple(spec["shape"])
    perm = tuple(spec["perm"]) if spec["perm"] else None
    if spec["backend"] == "onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(spec["model_path"], sess_options=so, providers=["CPUExecutionProvider"])
        iname = spec["input_name"]

        def infer(x: Any) -> Any:
            return sess.run(None, {iname: x})[0][0]
    else:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=spec["model_path"], num_threads=1)
        it.allocate_tensors()
        i_in = it.get_input_details()[0]["index"]
        i_out = it.get_output_details()[0]["index"]

        def infer(x: Any) -> Any:
            it.set_tensor(i_in, x)
            it.invoke()
            return it.get_tensor(i_out)[0]

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, RCVHWM)
    sock.setsockopt(zmq.RCVTIMEO, int(spec["timeout_s"] * 1000))
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(spec["endpoint"])
    fd = os.open(spec["out"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    print(json.dumps({"ready": True}), flush=True)
    clock = time.perf_counter_ns
    try:
        for k, n in enumerate(spec["phases"]):
            lat = np.empty(n, np.int64)
            inf = np.empty(n, np.int64)
            first = last = 0
            for i in range(n):
                frames = sock.recv_multipart()
                t0 = clock()
                head = json.loads(frames[0])
                x = np.frombuffer(frames[1], dtype=np.float32).reshape(shape)
                if perm:
                    x = np.ascontiguousarray(x.transpose(perm))
                out = infer(x)
                label = int(out.argmax())
                t1 = clock()
                rec = json.dumps({"model": head["model"], "seq": head["seq"], "label": label,
                                  "score": float(out[label]), "latency_us": (t1 - t0) / 1000})
                os.write(fd, (rec + "\n").encode())
                last = clock()
                if i == 0:
                    first = last
                lat[i] = last - t0
                inf[i] = t1 - t0
            print(json.dumps({"phase": k, "n": n, "span_s": (last - first) / 1e9,
                              "lat_us": (lat / 1000).tolist(), "infer_us": (inf / 1000).tolist()}), flush=True)
    finally:
        os.close(fd)
        sock.close()
        ctx.term()
    return 0


# ============================================================================ child: the link proxy
def proxy_main(fog_port: int, latency_ms: float) -> int:
    """A :class:`tests.linkproxy.LinkProxy` to the fog with ``latency_ms`` one way; runs until stdin closes."""
    from tests.linkproxy import LinkProxy

    proxy = LinkProxy(0, "127.0.0.1", fog_port, latency_ms=latency_ms)
    print(proxy.endpoint, flush=True)
    try:
        sys.stdin.read()
    finally:
        proxy.close()
    return 0


# ============================================================================ parent: child bookkeeping
class Children:
    """Every child process this bench started; ``end_all`` ends each of them (by its own pid)."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def add(self, p: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(p)
        return p

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen:
        return self.add(subprocess.Popen(list(args), cwd=str(REPO), **kw))

    @staticmethod
    def end(p: subprocess.Popen, timeout: float = 10.0) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def end_all(self) -> None:
        for p in reversed(self.procs):
            try:
                self.end(p)
            except Exception as exc:  # noqa: BLE001 - keep ending the others
                print(f"could not end pid {p.pid}: {exc}", file=sys.stderr)
        self.procs.clear()


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_json_line(p: subprocess.Popen, timeout: float, what: str) -> Dict[str, Any]:
    """The next JSON line on ``p``'s stdout within ``timeout`` s (non-JSON lines are skipped)."""
    assert p.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{what}: nothing after {timeout:.0f} s")
        r, _, _ = select.select([p.stdout], [], [], min(left, 1.0))
        if not r:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: process exited with {p.returncode}")
            continue
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"{what}: process closed its output (exit {p.wait(5)})")
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj


class LineCounter:
    """Counts the lines of a growing file, reading only what was appended since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.lines
        self.offset += len(data)
        self.lines += data.count(b"\n")
        return self.lines

    def wait_for(self, n: int, timeout: float, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if not alive():
                raise RuntimeError(f"edged exited with {self.lines} of {n} decision lines")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.lines} of {n} decision lines after {timeout:.0f} s")
            time.sleep(0.05)


# ============================================================================ parent: one process's phases
class Plan:
    """The phases every process gets: warm-up, then each rate. ``rate`` 0 = flat out."""

    def __init__(self, model: str, rates: Sequence[float], n_max: int, seconds: float) -> None:
        self.phases: List[Tuple[str, float, int]] = [("warmup", 0.0, WARMUP)]
        for r in rates:
            if r == 0:
                self.phases.append(("max", 0.0, n_max))
            else:
                self.phases.append((f"{r:g}/s", r, max(50, int(r * seconds))))
        self.seq0 = []
        s = 0
        for _, _, n in self.phases:
            self.seq0.append(s)
            s += n
        self.total = s


def send_phase(kids: Children, endpoint: str, model: str, rate: float, n: int, seq0: int) -> subprocess.Popen:
    return kids.popen([sys.executable, __file__, "--sender", endpoint, model, str(n), str(rate), str(seq0)],
                      stdout=subprocess.PIPE, text=True)


def phase_timeout(rate: float, n: int) -> float:
    return 120.0 + (n / rate if rate else n / 500.0)


def percentiles(xs: Sequence[float]) -> Tuple[float, float]:
    import numpy as np

    a = np.asarray(xs, dtype=float)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def tail(xs: Sequence[float]) -> Dict[str, float]:
    """The worst latency and how many inputs took over 1 ms and 10 ms (stalls show here, not in p50)."""
    import numpy as np

    a = np.asarray(xs, dtype=float)
    return {"max_us": float(a.max()), "over_1ms": int((a > 1000).sum()), "over_10ms": int((a > 10000).sum())}


def run_loop(kids: Children, work: Path, model: str, backend: str, plan: Plan) -> Dict[str, Dict[str, Any]]:
    from edged.models import Catalogue, layout_permutation

    cat = Catalogue.discover()
    entry = cat.get(model)
    art = entry.artifacts[backend]
    d = Path(tempfile.mkdtemp(prefix=f"loop-{model}-{backend}-", dir=work))
    endpoint = f"ipc://{d}/in.sock"
    spec = {"endpoint": endpoint, "backend": backend, "model_path": str(art.path),
            "input_name": entry.input.name, "shape": [1, *[int(s or 0) for s in entry.input.shape[1:]]],
            "perm": layout_permutation(entry.input.layout, art.layout), "out": str(d / "records.jsonl"),
            "phases": [n for _, _, n in plan.phases], "timeout_s": 300}
    p = kids.popen([sys.executable, __file__, "--loop", json.dumps(spec)], stdout=subprocess.PIPE, text=True)
    try:
        read_json_line(p, 120, "hand-written loop start-up")
        out: Dict[str, Dict[str, Any]] = {}
        for (name, rate, n), seq0 in zip(plan.phases, plan.seq0):
            s = send_phase(kids, endpoint, model, rate, n, seq0)
            res = read_json_line(p, phase_timeout(rate, n), f"loop {model}/{backend} phase {name}")
            s.wait(60)
            if name == "warmup":
                continue
            lat50, lat99 = percentiles(res["lat_us"])
            inf50, inf99 = percentiles(res["infer_us"])
            out[name] = {"inputs": n, "inputs_per_s": n / res["span_s"] if res["span_s"] > 0 else None,
                         "p50_us": lat50, "p99_us": lat99, "loop_infer_p50_us": inf50, "loop_infer_p99_us": inf99,
                         **tail(res["lat_us"])}
            time.sleep(0.3)
        p.wait(30)
        return out
    finally:
        Children.end(p)


def edged_config(d: Path, state: Path, model: str, backend: str, fog_endpoint: Optional[str]) -> Path:
    cfg = d / "edged.toml"
    fog = (f'enabled = true\nendpoint = "{fog_endpoint}"' if fog_endpoint else "enabled = false")
    cfg.write_text(f"""[daemon]
state_dir = "{state}"
[logs]
dir = "{d / 'logs'}"
journal = "off"
level = "warning"
max_bytes = 0
[models]
enabled = ["{model}"]
backend = "{backend}"
threads = 1
[policy]
default = "{'adaptive' if fog_endpoint else 'local'}"
[fog]
{fog}
[power]
source = "none"
[[sources]]
type = "zmq"
endpoint = "ipc://{d / 'in.sock'}"
rcvhwm = {RCVHWM}
""")
    return cfg


def run_edged(kids: Children, work: Path, state: Path, model: str, backend: str, plan: Plan,
              fog_endpoint: Optional[str]) -> Dict[str, Dict[str, Any]]:
    from bench.daemon import Daemon

    tag = "fog" if fog_endpoint else "nofog"
    d = Path(tempfile.mkdtemp(prefix=f"edged-{model}-{backend}-{tag}-", dir=work))
    cfg = edged_config(d, state, model, backend, fog_endpoint)
    endpoint = f"ipc://{d / 'in.sock'}"
    log = d / "logs" / "decisions.jsonl"
    dm = Daemon(cfg, str(d / "notify.sock"))
    kids.add(dm.proc)
    try:
        ready_s = dm.wait_ready()
        if fog_endpoint:
            time.sleep(1.5)  # the probes' first round trips: estimates exist before the first input
        counter = LineCounter(log)
        t_last: Dict[str, float] = {}  # the decision log's mtime once the phase's last record is in
        for (name, rate, n), seq0 in zip(plan.phases, plan.seq0):
            s = send_phase(kids, endpoint, model, rate, n, seq0)
            counter.wait_for(seq0 + n, phase_timeout(rate, n), lambda: dm.proc.poll() is None)
            t_last[name] = os.stat(log).st_mtime_ns / 1e9
            s.wait(60)
            time.sleep(0.3)
        dm.stop()
        if dm.proc.returncode != 0:
            raise RuntimeError(f"edged run exited with {dm.proc.returncode} (see {d / 'daemon.log'})")
        recs = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
        out: Dict[str, Dict[str, Any]] = {"_": {"ready_s": ready_s}}
        for (name, _rate, n), seq0 in zip(plan.phases, plan.seq0):
            if name == "warmup":
                continue
            rs = [r for r in recs if seq0 <= int(r["seq"]) < seq0 + n]
            seqs = sorted(int(r["seq"]) for r in rs)
            if seqs != list(range(seq0, seq0 + n)):
                raise RuntimeError(f"edged {model}/{backend} {name}: {len(rs)} records for {n} inputs "
                                   f"(each input must end as exactly one record)")
            lat50, lat99 = percentiles([r["latency_us"] for r in rs])
            decisions: Dict[str, int] = {}
            for r in rs:
                decisions[r["decision"]] = decisions.get(r["decision"], 0) + 1
            first_ts = min(r["ts"] for r in rs)
            span = t_last[name] - first_ts
            out[name] = {
                "inputs": n, "inputs_per_s": n / span if span > 0 else None,
                "p50_us": lat50, "p99_us": lat99, **tail([r["latency_us"] for r in rs]), "decisions": decisions,
                "not_local": n - decisions.get("local", 0),
                "errors": sum(1 for r in rs if r.get("error")),
                "mean_batch": statistics.fmean(r.get("batch", 1) for r in rs),
                "with_link_estimate": sum(1 for r in rs if r.get("t_l_us") is not None and r.get("t_f_us") is not None),
            }
        return out
    finally:
        Children.end(dm.proc, timeout=60)
        try:
            dm.notify.close()
            dm.log.close()
        except OSError:
            pass


def start_fog(kids: Children, latency_ms: float) -> str:
    """A real ``edged fog`` (1 worker, 1 thread, onnx) behind a link proxy ``latency_ms`` one way; the
    proxy's endpoint (what the edge connects to)."""
    from bench.offload import Fog

    fog = Fog(REPO / "models", threads=1, workers=1)
    kids.add(fog.proc)
    proxy = kids.popen([sys.executable, __file__, "--proxy", str(fog.port), str(latency_ms)],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proxy.stdout is not None
    r, _, _ = select.select([proxy.stdout], [], [], 60)
    endpoint = proxy.stdout.readline().strip() if r else ""
    if not endpoint.startswith("tcp://"):
        raise RuntimeError(f"link proxy did not start: {endpoint!r}")
    progress(f"fog {fog.endpoint} behind a link proxy {endpoint} ({latency_ms:g} ms one way)")
    return endpoint


# ============================================================================ parent: per-input profile
def parse_raw_profile(path: Path) -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int], int]:
    """py-spy ``--format raw`` (collapsed stacks, ``--threads``): samples by leaf function (self), by
    function anywhere on the stack (inclusive, counted once per sample) and by thread; total samples."""
    self_n: Dict[str, int] = {}
    incl: Dict[str, int] = {}
    by_thread: Dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        frames = [f for f in frames if not f.startswith(("thread", "process"))]
        if not frames:
            continue
        total += n
        by_thread[thread] = by_thread.get(thread, 0) + n
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    return self_n, incl, by_thread, total


def thread_names(pid: int) -> Dict[str, str]:
    """py-spy's ``thread (0x...)`` labels -> the Python thread names, read from the process (best effort)."""
    try:
        out = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(pid)],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names: Dict[str, str] = {}
    for line in out.splitlines():  # Thread 0x7F... (active+gil): "router"
        if line.startswith("Thread "):
            parts = line.split()
            tid = parts[1].lower()
            name = line.split(":", 1)[1].strip().strip('"') if ":" in line else tid
            names[tid] = name
    return names


def profile_main(args: argparse.Namespace, model: str, backend: str) -> int:
    """py-spy on ``edged run`` (policy local, fog off; or with ``--profile-fog`` policy adaptive, fog on behind the
    link proxy) saturated by a flat-out sender: self time per input."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        raise SystemExit(f"{spy} not found: .venv/bin/pip install py-spy")
    prefix = Path(args.profile)
    kids = Children()
    work = Path(tempfile.mkdtemp(prefix="edged-bench-overhead-prof-"))
    state = work / "state"
    report: Dict[str, Any] = {}
    try:
        subprocess.run([sys.executable, "-m", "edged", "profile", "--model", model, "--backend", backend,
                        "--threads", "1", "--state-dir", str(state)], cwd=str(REPO), check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
        from bench.daemon import Daemon

        fog_endpoint = start_fog(kids, args.fog_latency_ms) if args.profile_fog else None
        d = work / "edged"
        d.mkdir()
        cfg = edged_config(d, state, model, backend, fog_endpoint)
        dm = Daemon(cfg, str(d / "notify.sock"))
        kids.add(dm.proc)
        dm.wait_ready()
        if fog_endpoint:
            time.sleep(1.5)  # the probes' first round trips
        counter = LineCounter(d / "logs" / "decisions.jsonl")
        n = args.profile_inputs
        send_phase(kids, f"ipc://{d / 'in.sock'}", model, 0.0, n, 0)
        counter.wait_for(min(20000, n // 10), 120, lambda: dm.proc.poll() is None)
        names = thread_names(dm.proc.pid)
        for kind, extra in (("cpu", []), ("gil", ["--gil"])):
            out = Path(f"{prefix}.{kind}.raw")
            c0, t0 = counter.count(), time.monotonic()
            subprocess.run([str(spy), "record", "--pid", str(dm.proc.pid), "--duration", str(args.profile_seconds),
                            "--rate", str(args.profile_rate), "--nonblocking", "--function", "--threads",
                            "--format", "raw", "--output", str(out), *extra], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=args.profile_seconds + 60)
            c1, t1 = counter.count(), time.monotonic()
            if c1 >= n:
                raise RuntimeError(f"the sender ran dry during the {kind} profile: raise --profile-inputs")
            rate_in = (c1 - c0) / (t1 - t0)
            inputs = rate_in * args.profile_seconds  # inputs decided while py-spy sampled
            self_n, incl, by_thread, total = parse_raw_profile(out)
            us = 1e6 / args.profile_rate / inputs  # µs of one thread's time per sample, per input
            report[kind] = {
                "raw": str(out), "inputs_per_s": rate_in, "samples": total, "seconds": args.profile_seconds,
                "rate_hz": args.profile_rate, "us_per_input_total": total * us,
                "self": sorted(([f, c * us, c / total] for f, c in self_n.items()), key=lambda r: -r[1]),
                "inclusive": sorted(([f, c * us, c / total] for f, c in incl.items()), key=lambda r: -r[1])[:40],
                "threads": sorted(([names.get(t.split("(")[-1].rstrip(")").lower(), t), c * us, c / total]
                                   for t, c in by_thread.items()), key=lambda r: -r[1]),
            }
            progress(f"{kind} profile: {total} samples at {rate_in:,.0f} inputs/s -> {out}")
        # once more as speedscope with native frames, for a flame view (--native cannot be --nonblocking:
        # py-spy pauses the process per sample here, so this one is for where, not for how much)
        ss = Path(f"{prefix}.speedscope.json")
        res = subprocess.run([str(spy), "record", "--pid", str(dm.proc.pid), "--duration",
                              str(min(5, args.profile_seconds)), "--rate", str(min(100, args.profile_rate)),
                              "--native", "--threads", "--format", "speedscope", "--output", str(ss)],
                             check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
        report["speedscope"] = str(ss) if ss.exists() else None
        if not ss.exists():
            progress(f"no speedscope profile: py-spy --native said {res.stderr.strip()[-300:]!r}")
        dm.stop()
    finally:
        kids.end_all()
        shutil.rmtree(work, ignore_errors=True)
    for kind, title in (("cpu", "CPU (every running thread)"), ("gil", "GIL held")):
        r = report[kind]
        where = " fog on (adaptive)" if args.profile_fog else ""
        print(f"\n{model}/{backend}{where} saturated, {title}: {r['us_per_input_total']:.1f} us per input "
              f"({r['inputs_per_s']:,.0f} inputs/s while sampling; {r['samples']} samples)")
        print(f"{'function (self time)':<78} {'us/input':>8} {'share':>6}")
        for f, u, sh in r["self"][:args.profile_top]:
            print(f"{f[:78]:<78} {u:>8.2f} {sh:>6.1%}")
        print("by thread: " + ", ".join(f"{t} {u:.1f} us ({sh:.0%})" for t, u, sh in r["threads"]))
    js = Path(f"{prefix}.json")
    js.write_text(json.dumps({"model": model, "backend": backend, "fog": bool(args.profile_fog), "versions": versions(),
                              "load_avg": os.getloadavg(), **report}, indent=1) + "\n")
    progress(f"wrote {js}")
    return 0


# ============================================================================ parent: summary
def spread(xs: Sequence[Optional[float]]) -> Optional[Dict[str, Any]]:
    v = [float(x) for x in xs if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v), "runs": v}


def summarize_rows(runs: List[Dict[str, Any]], combos: List[Tuple[str, str]], rate_names: List[str],
                   modes: List[str]) -> List[Dict[str, Any]]:
    rows = []
    for model, backend in combos:
        for rate in rate_names:
            row: Dict[str, Any] = {"model": model, "backend": backend, "rate": rate}
            for mode in modes:
                cells = [r[f"{model}/{backend}"][mode].get(rate, {}) for r in runs]
                m: Dict[str, Any] = {}
                keys = ("inputs_per_s",) if rate == "max" else ("p50_us", "p99_us")
                for k in (*keys, "loop_infer_p50_us", "loop_infer_p99_us", "not_local", "mean_batch"):
                    s = spread([c.get(k) for c in cells])
                    if s is not None:
                        m[k] = s
                row[mode] = m
            # ratios per repeat (same repeat = adjacent in time), then their spread
            for num, den, label in (("edged", "loop", "edged/loop"), ("edged+fog", "edged", "fog/nofog"),
                                    ("edged+fog", "loop", "edged+fog/loop")):
                if num not in modes or den not in modes:
                    continue
                for k in (("inputs_per_s",) if rate == "max" else ("p50_us", "p99_us")):
                    ratios = []
                    for r in runs:
                        a = r[f"{model}/{backend}"][num].get(rate, {}).get(k)
                        b = r[f"{model}/{backend}"][den].get(rate, {}).get(k)
                        ratios.append(a / b if a and b else None)
                    s = spread(ratios)
                    if s is not None:
                        row.setdefault("ratios", {}).setdefault(label, {})[k] = s
            rows.append(row)
    return rows


def fmt(s: Optional[Dict[str, Any]], unit: str = "", nd: int = 0, with_spread: bool = True) -> str:
    if s is None:
        return "-"
    f = f"{{:,.{nd}f}}"
    txt = f.format(s["median"]) + unit
    if with_spread and s["n"] > 1:
        txt += " [" + f.format(s["min"]) + "-" + f.format(s["max"]) + "]"
    return txt


def print_table(rows: List[Dict[str, Any]], modes: List[str], repeats: int) -> None:
    print(f"\nper-input overhead: median [min-max] of {repeats} run(s); "
          "throughput in inputs/s, latency p50 / p99 in us")
    head = ["model", "backend", "rate", "loop", "edged", "edged/loop"]
    if "edged+fog" in modes:
        head += ["edged+fog", "fog/nofog"]
    lines = [head]
    for row in rows:
        rt = row.get("ratios", {})
        if row["rate"] == "max":
            cells = [fmt(row[m].get("inputs_per_s")) if m in row else "-" for m in ("loop", "edged", "edged+fog")]
            r1 = fmt(rt.get("edged/loop", {}).get("inputs_per_s"), "x", 2)
            r2 = fmt(rt.get("fog/nofog", {}).get("inputs_per_s"), "x", 2)
        else:
            cells = [(fmt(row[m].get("p50_us")) + " / " + fmt(row[m].get("p99_us"))) if m in row else "-"
                     for m in ("loop", "edged", "edged+fog")]
            r1 = fmt(rt.get("edged/loop", {}).get("p50_us"), "x", 2) + " / " + \
                fmt(rt.get("edged/loop", {}).get("p99_us"), "x", 2)
            r2 = fmt(rt.get("fog/nofog", {}).get("p50_us"), "x", 2) + " / " + \
                fmt(rt.get("fog/nofog", {}).get("p99_us"), "x", 2)
        line = [row["model"], row["backend"], row["rate"], cells[0], cells[1], r1]
        if "edged+fog" in modes:
            line += [cells[2], r2]
        lines.append(line)
    widths = [max(len(ln[i]) for ln in lines) for i in range(len(head))]
    for k, ln in enumerate(lines):
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(ln, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    bad = [(r["model"], r["backend"], r["rate"], r["edged+fog"]["not_local"]["max"]) for r in rows
           if "edged+fog" in r and r["edged+fog"].get("not_local", {}).get("max")]
    if bad:
        print("edged+fog: inputs NOT decided local (max over runs): " + ", ".join(f"{a}/{b} {c}: {d:.0f}"
                                                                                for a, b, c, d in bad))


def targets(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Issue 13's targets on the medians: throughput >= 1.0x loop; p50 <= 1.5x, p99 <= 3x; fog within 10 %."""
    out: Dict[str, Any] = {}
    for r in rows:
        key = f"{r['model']}/{r['backend']}@{r['rate']}"
        rt = r.get("ratios", {})
        el = rt.get("edged/loop", {})
        fg = rt.get("fog/nofog", {})
        t: Dict[str, Any] = {}
        if r["rate"] == "max" and "inputs_per_s" in el:
            t["throughput_ge_1x_loop"] = el["inputs_per_s"]["median"] >= 1.0
            if "inputs_per_s" in fg:
                t["fog_within_10pct"] = fg["inputs_per_s"]["median"] >= 0.9
        elif "p50_us" in el:
            t["p50_le_1.5x_loop"] = el["p50_us"]["median"] <= 1.5
            t["p99_le_3x_loop"] = el["p99_us"]["median"] <= 3.0
            if "p50_us" in fg:
                t["fog_within_10pct"] = fg["p50_us"]["median"] <= 1.1 and fg["p99_us"]["median"] <= 1.1
        out[key] = t
    return out


def versions() -> Dict[str, Any]:
    import numpy as np
    import zmq

    v: Dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__, "pyzmq": zmq.__version__,
                         "libzmq": zmq.zmq_version()}
    try:
        import onnxruntime as ort

        v["onnxruntime"] = ort.__version__
    except ImportError:
        v["onnxruntime"] = None
    try:
        from importlib.metadata import version

        v["ai_edge_litert"] = version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - optional
        v["ai_edge_litert"] = None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(REPO), capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "edged"], cwd=str(REPO), capture_output=True,
                               text=True, timeout=10).stdout.strip()
        v["edged_commit"] = head + ("+dirty(edged/)" if dirty else "")
    except Exception:  # noqa: BLE001 - not a git checkout
        v["edged_commit"] = None
    return v


def parse_rates(text: str) -> List[float]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("max", "flat", "0"):
            out.append(0.0)
            continue
        try:
            r = float(part)
        except ValueError:
            raise SystemExit(f"--rates: {part!r} is not a rate; expected max or inputs/s, e.g. max,2000,100") from None
        if r <= 0:
            raise SystemExit(f"--rates: {part!r}: a paced rate must be > 0 inputs/s (use max for flat out)")
        out.append(r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring for what is measured and how.")
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated (default mlp,cnn)")
    ap.add_argument("--backends", default="onnx,litert", help="comma-separated (default onnx,litert)")
    ap.add_argument("--rates", default="max,2000,100", help="max (flat out) and/or inputs/s (default max,2000,100)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of everything; the table shows median [min-max]")
    ap.add_argument("--inputs", type=int, default=50000, help="inputs of the flat-out phase (default 50000)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each paced phase (default 5 s)")
    ap.add_argument("--fog-latency-ms", type=float, default=20.0,
                    help="one-way latency of the emulated link to the fog in the edged+fog rows (default 20)")
    ap.add_argument("--no-fog", action="store_true", help="skip the edged+fog rows")
    ap.add_argument("--quick", action="store_true", help="short phases (smoke test): 5000 inputs flat out, 1 s paced")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (decision logs, loop records, daemon logs)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"result JSON (default {OUT.relative_to(REPO)})")
    ap.add_argument("--profile", metavar="PREFIX",
                    help="instead of the table: py-spy the saturated edged run (first of --models/--backends, policy "
                         "local, fog off); writes PREFIX.cpu.raw, PREFIX.gil.raw, PREFIX.speedscope.json, PREFIX.json "
                         "and prints self time per input")
    ap.add_argument("--profile-fog", action="store_true",
                    help="profile the edged+fog set-up (policy adaptive, fog behind the link proxy) instead")
    ap.add_argument("--profile-seconds", type=int, default=10, help="sampling time of each profile (default 10)")
    ap.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s (default 250)")
    ap.add_argument("--profile-inputs", type=int, default=1_000_000, help="inputs the profile's sender sends")
    ap.add_argument("--profile-top", type=int, default=25, help="rows of the printed profile tables")
    ap.add_argument("--sender", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--loop", help=argparse.SUPPRESS)
    ap.add_argument("--proxy", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sender:
        e, m, n, r, s0 = args.sender
        return sender_main(e, m, int(n), float(r), int(s0))
    if args.loop:
        return loop_main(args.loop)
    if args.proxy:
        return proxy_main(int(args.proxy[0]), float(args.proxy[1]))

    from edged.models import Catalogue

    if args.quick:
        args.inputs, args.seconds = min(args.inputs, 5000), min(args.seconds, 1.0)
    if args.repeats < 1:
        raise SystemExit("--repeats: expected >= 1")
    cat = Catalogue.discover()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for m in models:
        if m not in cat.names():
            raise SystemExit(f"--models: {m!r} is not in the catalogue ({', '.join(cat.names())})")
        for b in backends:
            if b not in cat.get(m).artifacts:
                raise SystemExit(f"--backends: model {m!r} has no {b!r} artifact ({', '.join(cat.get(m).artifacts)})")
    if args.profile:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return profile_main(args, models[0], backends[0])
    rates = parse_rates(args.rates)
    rate_names = ["max" if r == 0 else f"{r:g}/s" for r in rates]
    modes = ["loop", "edged"] + ([] if args.no_fog else ["edged+fog"])
    combos = [(m, b) for m in models for b in backends]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM ends the children too (finally below)
    kids = Children()
    work = Path(tempfile.mkdtemp(prefix="edged-bench-overhead-"))
    state = work / "state"
    runs: List[Dict[str, Any]] = []
    loads: List[Dict[str, Any]] = []
    ready: Dict[str, List[float]] = {}
    t_start = time.time()
    try:
        # the profile is measured here, once, so every edged start-up below reads it (quick READY)
        for m, b in combos:
            progress(f"edged profile {m}/{b} (cached for the runs)")
            subprocess.run([sys.executable, "-m", "edged", "profile", "--model", m, "--backend", b, "--threads", "1",
                            "--state-dir", str(state)], cwd=str(REPO), check=True, stdout=subprocess.DEVNULL,
                           timeout=600)
        fog_endpoint = None if args.no_fog else start_fog(kids, args.fog_latency_ms)
        for rep in range(args.repeats):
            run: Dict[str, Any] = {}
            loads.append({"repeat": rep, "before": os.getloadavg()})
            for m, b in combos:
                plan = Plan(m, rates, args.inputs, args.seconds)
                res: Dict[str, Any] = {}
                for mode in modes:
                    progress(f"run {rep + 1}/{args.repeats}: {m}/{b} {mode} ({plan.total} inputs)")
                    if mode == "loop":
                        res[mode] = run_loop(kids, work, m, b, plan)
                    else:
                        res[mode] = run_edged(kids, work, state, m, b, plan,
                                              fog_endpoint if mode == "edged+fog" else None)
                        ready.setdefault(f"{m}/{b} {mode}", []).append(res[mode].pop("_")["ready_s"])
                    for rn in rate_names:
                        c = res[mode][rn]
                        figs = (f"{c['inputs_per_s']:,.0f}/s" if rn == "max" else
                                f"p50 {c['p50_us']:.0f} p99 {c['p99_us']:.0f} us")
                        progress(f"    {rn}: {figs}")
                run[f"{m}/{b}"] = res
            loads[-1]["after"] = os.getloadavg()
            runs.append(run)
    finally:
        kids.end_all()
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = summarize_rows(runs, combos, rate_names, modes)
    print_table(rows, modes, args.repeats)
    verdict = targets(rows)
    met = sum(1 for t in verdict.values() for v in t.values() if v)
    total = sum(len(t) for t in verdict.values())
    print(f"targets met: {met} of {total} (details in the JSON); load average before/after each run: "
          + "; ".join(f"{x['before'][0]:.2f}/{x['after'][0]:.2f}" for x in loads))
    result = {
        "bench": "overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
        "duration_s": round(time.time() - t_start, 1),
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "load_avg": loads},
        "versions": versions(),
        "settings": {
            "models": models, "backends": backends, "rates": rate_names, "repeats": args.repeats,
            "flat_out_inputs": args.inputs, "paced_seconds": args.seconds, "warmup_inputs": WARMUP,
            "rcvhwm": RCVHWM, "transport": "ipc", "threads": 1, "quick": args.quick,
            "fog": None if args.no_fog else {"latency_ms_one_way": args.fog_latency_ms, "policy": "adaptive",
                                             "fog_workers": 1, "fog_threads": 1, "fog_backend": "onnx"},
            "edged": "policy local, fog off, power none, journal off, logs max_bytes 0, only the model enabled, "
                     "profile cached; other settings default (queue 1024 block, local max_queue 256, max_batch 32)",
            "loop": "PULL ipc, recv_multipart, json.loads, np.frombuffer, session.run / Interpreter.invoke "
                    "(1 thread), json.dumps, os.write O_APPEND; latency recv -> os.write returned",
            "latency": {"loop": "recv_multipart returned -> os.write returned",
                        "edged": "record latency_us: arrival (after recv) -> inference done; excludes encoding "
                                 "and writing the record"},
            "throughput": "inputs / (first record written -> last record written); edged: first record's ts "
                          "(decision time) -> decisions.jsonl mtime",
        },
        "ready_s": ready,
        "rows": rows,
        "targets": verdict,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    progress(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
