"""Pre-runtime WCET measurement and the per-device profile table.

For each model x backend x thread count: load time, warm-up runs (excluded),
then every input of the validation set, one at a time as the daemon runs them,
``repeats`` times. The worst case (max) of those single-input latencies is the
model's WCET on this device (Saguil & Azim's pre-runtime measurement); p50,
p95, p99, mean and stdev describe the rest. Peak RSS increase, accuracy and
macro-F1 (re-measured on the first pass) complete the N models x M platforms
table the edge-ML proposal asks for.

Results are stored in ``<state dir>/profile.json`` (``$STATE_DIRECTORY``, else
``~/.local/state/edged``) under a device fingerprint: board, CPU model, cores,
machine, Python and runtime versions. Each entry is keyed ``model/backend/threads``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from edged.errors import EdgedError, Interrupted, ManifestError
from edged.models import Catalogue, ModelEntry, split_csv

log = logging.getLogger(__name__)

PROFILE_FILE = "profile.json"
PROFILE_VERSION = 1
SYNTHETIC_INPUTS = 256  # when a user model ships no validation set


# --------------------------------------------------------------------------- device fingerprint


def state_dir(explicit: Optional[Union[str, os.PathLike]] = None) -> Path:
    """``explicit``, else ``$STATE_DIRECTORY`` (systemd StateDirectory=), else ``~/.local/state/edged``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "edged"


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").strip("\x00").strip()
    except OSError:
        return ""


def cpu_model() -> str:
    info = _read("/proc/cpuinfo")
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in info.splitlines():
            if line.lower().startswith(key.lower()) and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def runtime_versions() -> Dict[str, str]:
    out: Dict[str, str] = {}
    try:
        import onnxruntime

        out["onnxruntime"] = str(onnxruntime.__version__)
    except ImportError:
        out["onnxruntime"] = "absent"
    try:
        from edged.runtime.litert import find_interpreter

        _, impl, ver = find_interpreter()
        out["litert"] = f"{impl} {ver}"
    except ImportError:
        out["litert"] = "absent"
    out["numpy"] = np.__version__
    return out


def device_fingerprint() -> Dict[str, Any]:
    """What makes a WCET valid: the board, CPU, cores and software that measured it."""
    return {
        "board": _read("/proc/device-tree/model") or "unknown",
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "runtimes": runtime_versions(),
    }


def fingerprint_id(fp: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def entry_key(model: str, backend: str, threads: int) -> str:
    return f"{model}/{backend}/{threads}"


# --------------------------------------------------------------------------- memory


def _status_kb(field: str) -> Optional[int]:
    for line in _read("/proc/self/status").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM (peak RSS) of this process; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_kb() -> int:
    v = _status_kb("VmRSS")
    if v is not None:
        return v
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_kb() -> int:
    v = _status_kb("VmHWM")
    if v is not None:
        return v
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# --------------------------------------------------------------------------- measuring


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    classes = np.union1d(np.unique(y_true), np.unique(y_pred))
    f1s = []
    for c in classes:
        tp = int(np.sum((y_pred == c) & (y_true == c)))
        fp = int(np.sum((y_pred == c) & (y_true != c)))
        fn = int(np.sum((y_pred != c) & (y_true == c)))
        denom = 2 * tp + fp + fn
        f1s.append(0.0 if denom == 0 else 2.0 * tp / denom)
    return float(np.mean(f1s)) if f1s else 0.0


def percentile(sorted_us: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(sorted_us), q))


def validation_inputs(entry: ModelEntry) -> tuple[np.ndarray, Optional[np.ndarray], str]:
    """Inputs to measure on: the model's validation set, or seeded synthetic inputs if it has none."""
    try:
        x, y = entry.load_validation()
        return x, y, f"validation set ({len(x)} inputs)"
    except ManifestError:
        rng = np.random.default_rng(0)
        shape = (SYNTHETIC_INPUTS, *[d or 1 for d in entry.input.sample_shape])
        dt = np.dtype(entry.input.dtype)
        if dt.kind == "f":
            x = rng.standard_normal(shape).astype(dt)
        else:
            info = np.iinfo(dt)
            x = rng.integers(max(info.min, -128), min(info.max, 127), size=shape).astype(dt)
        return x, None, f"{SYNTHETIC_INPUTS} synthetic inputs (no validation set: accuracy not measured)"


def _check_stop(stop: Optional[threading.Event], name: str, where: str) -> None:
    if stop is not None and stop.is_set():
        raise Interrupted(f"profiling {name} stopped {where}: a stop was requested")


def profile_one(cat: Catalogue, name: str, backend: str, threads: int, repeats: int = 3, warmup: int = 20,
                progress: Optional[Callable[[str], object]] = None, gap_ms: float = 0.0,
                max_inputs: Optional[int] = None, stop: Optional[threading.Event] = None) -> Dict[str, Any]:
    """Measure one model x backend x threads. Times are µs per single input (batch of 1).

    ``gap_ms`` idles that long before each timed input, as a sparse sensor stream does: after an
    idle gap caches are cold and a core may have to wake, so the worst case is larger than in a
    back-to-back loop. ``max_inputs`` caps the inputs per pass (for long gaps).

    ``stop`` (e.g. the daemon's stop event, set by SIGTERM) is checked before loading and before
    every warm-up and timed input, and ends an idle gap at once; once it is set this raises
    :class:`~edged.errors.Interrupted` within one inference, with the model closed and nothing measured
    returned (a partial WCET is not a WCET).
    """
    say = progress or (lambda _m: None)
    _check_stop(stop, name, "before it started")
    entry = cat.get(name)
    backend = cat.resolve_backend(name, backend)
    x, y, what = validation_inputs(entry)
    if max_inputs:
        x = x[:max_inputs]
        y = y[:max_inputs] if y is not None else None
        what += f", first {len(x)}"
    gap_s = max(0.0, gap_ms) / 1e3
    if gap_s:
        what += f", {gap_ms:g} ms idle before each"
    reset_ok = reset_peak_rss()
    rss0 = rss_kb()
    t0 = time.perf_counter()
    model = cat.load(name, backend, threads=threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        n = len(x)
        for i in range(warmup):
            _check_stop(stop, name, "during the warm-up")
            model.predict(x[i % n], validate=False)
        times: List[float] = []
        preds = np.empty(n, dtype=np.int64)
        clock = time.perf_counter_ns
        for r in range(repeats):
            for i in range(n):
                if gap_s:
                    if stop is not None:
                        stop.wait(gap_s)
                    else:
                        time.sleep(gap_s)
                _check_stop(stop, name, f"in pass {r + 1}/{repeats} at input {i + 1}/{n}")
                t = clock()
                out = model.predict(x[i], validate=False)
                times.append((clock() - t) / 1e3)
                if r == 0:
                    preds[i] = int(np.argmax(out))
            say(f"{name}/{backend}/t{threads}: pass {r + 1}/{repeats} over {what}")
        peak = peak_rss_kb()
    finally:
        model.close()
    times_sorted = sorted(times)
    result: Dict[str, Any] = {
        "model": name, "backend": backend, "threads": threads, "model_hash": entry.model_hash,
        "inputs": what, "n_inputs": n, "warmup": warmup, "repeats": repeats, "runs": len(times),
        "load_ms": round(load_ms, 3),
        "wcet_us": round(times_sorted[-1], 1),
        "p50_us": round(percentile(times_sorted, 50), 1),
        "p95_us": round(percentile(times_sorted, 95), 1),
        "p99_us": round(percentile(times_sorted, 99), 1),
        "mean_us": round(statistics.fmean(times), 1),
        "stdev_us": round(statistics.pstdev(times), 1),
        "peak_rss_increase_kb": max(0, peak - rss0),
        "peak_rss_exact": reset_ok,
        "gap_ms": gap_ms,
        "accuracy": None, "macro_f1": None,
        "manifest_accuracy": entry.metric(backend, "accuracy"),
        "measured_at": time.time(),
    }
    if y is not None:
        result["accuracy"] = round(float(np.mean(preds == y)), 6)
        result["macro_f1"] = round(macro_f1(y, preds), 6)
    return result


# --------------------------------------------------------------------------- the stored table


@dataclass
class Profile:
    """The stored profile of this device: WCET and latency percentiles per model/backend/threads."""

    fingerprint: Dict[str, Any]
    entries: Dict[str, Dict[str, Any]]
    path: Optional[Path] = None

    @property
    def id(self) -> str:
        return fingerprint_id(self.fingerprint)

    def get(self, model: str, backend: str, threads: int = 1) -> Optional[Dict[str, Any]]:
        return self.entries.get(entry_key(model, backend, threads))

    def wcet_us(self, model: str, backend: str, threads: int = 1) -> Optional[float]:
        e = self.get(model, backend, threads)
        return float(e["wcet_us"]) if e else None

    def p50_us(self, model: str, backend: str, threads: int = 1) -> Optional[float]:
        e = self.get(model, backend, threads)
        return float(e["p50_us"]) if e else None

    def is_current(self, model: str, backend: str, threads: int, model_hash: str) -> bool:
        """True if an entry exists and was measured on this exact model."""
        e = self.get(model, backend, threads)
        return bool(e) and e.get("model_hash") == model_hash  # type: ignore[union-attr]


def _read_store(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        return {"version": PROFILE_VERSION, "devices": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgedError(f"profile store {path} is unreadable ({exc}); delete it and run 'edged profile'") from exc
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
        raise EdgedError(f"profile store {path} has an unexpected format; delete it and run 'edged profile'")
    return data


def load_profile(state_dir_: Optional[os.PathLike] = None, fingerprint: Optional[Dict[str, Any]] = None
                 ) -> Optional[Profile]:
    """The stored profile for this device (or ``fingerprint``), or None if it was never profiled."""
    path = state_dir(state_dir_) / PROFILE_FILE
    fp = fingerprint or device_fingerprint()
    dev = _read_store(path)["devices"].get(fingerprint_id(fp))
    if not dev:
        return None
    return Profile(dev["fingerprint"], dict(dev.get("entries", {})), path)


def store_results(results: Sequence[Dict[str, Any]], state_dir_: Optional[os.PathLike] = None,
                  fingerprint: Optional[Dict[str, Any]] = None) -> Profile:
    """Merge results into the store atomically (tmp file + rename) and return this device's profile."""
    d = state_dir(state_dir_)
    d.mkdir(parents=True, exist_ok=True)
    path = d / PROFILE_FILE
    data = _read_store(path)
    fp = fingerprint or device_fingerprint()
    fid = fingerprint_id(fp)
    dev = data["devices"].setdefault(fid, {"fingerprint": fp, "entries": {}})
    for r in results:
        dev["entries"][entry_key(r["model"], r["backend"], int(r["threads"]))] = r
    dev["updated"] = time.time()
    tmp = path.with_suffix(f".tmp.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return Profile(fp, dict(dev["entries"]), path)


# --------------------------------------------------------------------------- table


def _fmt(v: Any, nd: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    head = (f"{'model':<8} {'backend':<7} {'thr':>3} {'gap ms':>6} {'load ms':>8} {'WCET us':>9} {'p50':>8} {'p95':>8} "
            f"{'p99':>8} {'mean':>8} {'stdev':>7} {'RSS+ MB':>8} {'acc':>6} {'F1':>6}")
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["model"], r["backend"], r["threads"])):
        rss = r.get("peak_rss_increase_kb")
        lines.append(
            f"{r['model']:<8} {r['backend']:<7} {r['threads']:>3} {_fmt(float(r.get('gap_ms') or 0), 0):>6} "
            f"{_fmt(r['load_ms'], 1):>8} "
            f"{_fmt(r['wcet_us'], 1):>9} "
            f"{_fmt(r['p50_us'], 1):>8} {_fmt(r['p95_us'], 1):>8} {_fmt(r['p99_us'], 1):>8} {_fmt(r['mean_us'], 1):>8} "
            f"{_fmt(r['stdev_us'], 1):>7} {_fmt(rss / 1024 if rss is not None else None, 1):>8} "
            f"{_fmt(r.get('accuracy'), 3):>6} {_fmt(r.get('macro_f1'), 3):>6}"
        )
    return "\n".join(lines)


def describe_device(fp: Dict[str, Any]) -> str:
    rt = ", ".join(f"{k} {v}" for k, v in fp.get("runtimes", {}).items())
    return (f"device {fingerprint_id(fp)}: {fp.get('board')} | {fp.get('cpu')} | {fp.get('cores')} cores | "
            f"{fp.get('machine')} | Python {fp.get('python')} | {rt}")


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", action="append", default=[], metavar="NAME",
                   help="model(s) to profile, comma-separated or repeated (default: every model in the catalogue)")
    p.add_argument("--backend", "-b", action="append", default=[], metavar="NAME",
                   help="backend(s): onnx, litert (default: every backend the model has and this machine can run)")
    p.add_argument("--threads", "-t", action="append", default=[], metavar="N",
                   help="thread count(s), comma-separated or repeated (default: 1)")
    p.add_argument("--repeats", "-r", type=int, default=3, help="passes over the validation set (default: 3)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up runs excluded from timing (default: 20)")
    p.add_argument("--gap-ms", type=float, default=0.0, metavar="MS",
                   help="idle this long before each timed input, as a sparse sensor stream does (default 0: "
                        "back to back); the WCET after idle gaps is what a low-rate stream sees")
    p.add_argument("--max-inputs", type=int, default=None, metavar="N",
                   help="use at most N validation inputs per pass (handy with --gap-ms)")
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR", help="extra models directory")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="where profile.json lives (default: $STATE_DIRECTORY or ~/.local/state/edged)")
    p.add_argument("--show", action="store_true", help="print the stored profile of this device and exit")
    p.add_argument("--json", action="store_true", help="write the machine-readable result to stdout")
    p.add_argument("--no-store", action="store_true", help="measure and print, but do not update the stored profile")


def run_profile(cat: Catalogue, models: Sequence[str], backends: Sequence[str], threads: Sequence[int],
                repeats: int, warmup: int, progress: Optional[Callable[[str], None]] = None,
                gap_ms: float = 0.0, max_inputs: Optional[int] = None,
                stop: Optional[threading.Event] = None) -> List[Dict[str, Any]]:
    """:func:`profile_one` for every model x backend x thread count; ``stop`` interrupts it
    (:class:`~edged.errors.Interrupted`) between and within models."""
    from edged.runtime import available_backends, canonical_name

    avail = available_backends()
    results = []
    for name in models:
        entry = cat.get(name)
        wanted = [canonical_name(b) for b in backends] if backends else [b for b in entry.backends if b in avail]
        for b in wanted:
            if b not in entry.artifacts:
                log.warning("model %r has no %s artifact; skipped", name, b)
                continue
            for t in threads:
                results.append(profile_one(cat, name, b, t, repeats, warmup, progress, gap_ms, max_inputs,
                                           stop=stop))
    return results


def main(args: argparse.Namespace) -> int:
    if args.show:
        prof = load_profile(args.state_dir)
        if prof is None:
            print(f"edged profile: no stored profile for this device in {state_dir(args.state_dir)}; "
                  "run 'edged profile' first", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps({"fingerprint": prof.fingerprint, "entries": prof.entries}, indent=2, sort_keys=True))
        else:
            print(describe_device(prof.fingerprint))
            print(format_table(list(prof.entries.values())))
        return 0
    if args.repeats < 1 or args.warmup < 0:
        raise EdgedError(f"--repeats must be >= 1 and --warmup >= 0 (got {args.repeats}, {args.warmup})")
    try:
        threads = [int(t) for t in split_csv(args.threads)] or [1]
    except ValueError as exc:
        raise EdgedError(f"--threads takes integers, e.g. 1,2,4 ({exc})") from exc
    cat = Catalogue.discover(args.models_dir)
    only_backend = split_csv(args.backend)
    models, skipped = cat.select(split_csv(args.model), only_backend[0] if len(only_backend) == 1 else "auto")
    for name, reason in skipped.items():  # named models that cannot be profiled raised above, with why
        print(f"edged profile: skipping {name}: {reason}", file=sys.stderr)
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    progress(f"profiling {', '.join(models)}; warm-up {args.warmup} runs per model (excluded), "
             f"{args.repeats} passes over each validation set")
    if args.gap_ms < 0 or (args.max_inputs is not None and args.max_inputs < 1):
        raise EdgedError(f"--gap-ms must be >= 0 and --max-inputs >= 1 (got {args.gap_ms}, {args.max_inputs})")
    results = run_profile(cat, models, split_csv(args.backend), threads, args.repeats, args.warmup, progress,
                          args.gap_ms, args.max_inputs)
    fp = device_fingerprint()
    if not args.no_store:
        prof = store_results(results, args.state_dir, fp)
        progress(f"stored in {prof.path}")
    if args.json:
        print(json.dumps({"fingerprint": fp, "results": results}, indent=2, sort_keys=True))
    else:
        print(describe_device(fp))
        print(format_table(results))
    return 0
