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

A model with dynamic dimensions (an image's H x W) is measured at every shape its
validation set and its manifest's ``profile_shapes`` give (see :func:`profile_plan`),
and its entry gains ``"shape"`` and ``"shapes"``::

    "seg/onnx/1": {"wcet_us": 812.4, "p50_us": 701.0, ...,      # the numbers of "shape":
                   "shape": "1x256x256x1",                       # the largest shape measured
                   "shapes": {"1x32x32x1":   {"wcet_us": 41.2, "p50_us": 23.0, "p95_us": ..., "p99_us": ...,
                                              "mean_us": ..., "stdev_us": ..., "n": 96, "n_inputs": 32,
                                              "inputs": "...", "source": "profile_shapes"},
                              "1x256x256x1": {...}}}

The top-level numbers are those of the largest shape (most elements), so a reader that
does not know shapes still gets an upper bound over the measured shapes. A static
model's entry has neither key and is exactly what it always was (its shape key is
``""``); files written before shapes existed load unchanged. The dispatcher reads
:meth:`Profile.wcet_by_shape` and :func:`estimate_wcet_us` (an unprofiled shape's WCET
scaled by element count).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edged.errors import EdgedError, Interrupted, ManifestError
from edged.models import Catalogue, ModelEntry, key_elements, split_csv

log = logging.getLogger(__name__)

PROFILE_FILE = "profile.json"
PROFILE_VERSION = 1
SYNTHETIC_INPUTS = 256  # when a user model ships no validation set
SHAPE_INPUTS = 32  # timed inputs per pass at each manifest profile_shapes shape (large shapes are slow)
SHAPE_SAMPLES = 4  # distinct seeded samples those inputs cycle through


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


@dataclass
class ProfileCase:
    """Inputs to measure a model on at one shape.

    ``feeds`` maps every input a sample needs to an array of samples (batch axis first;
    an unbatched input as the file takes it); timed input ``i`` is sample ``i % samples``.
    """

    key: str  #: the shape key (``entry.shape_key``); ``""`` for a static model
    feeds: Dict[str, np.ndarray]
    n: int  #: timed inputs per pass
    y: Optional[np.ndarray]  #: labels of the first ``n`` samples, when the validation set has them
    what: str  #: what the inputs are, for the record
    source: str  #: "validation" | "synthetic" | "profile_shapes" | "default"

    def sample(self, entry: ModelEntry, i: int) -> Dict[str, np.ndarray]:
        out: Dict[str, np.ndarray] = {}
        for inp in entry.inputs:
            arr = self.feeds.get(inp.name)
            if arr is None:
                continue  # a state input without a value: the model feeds its initial state
            if not inp.batched and arr.ndim == len(inp.shape):
                out[inp.name] = arr
            else:
                out[inp.name] = arr[i % len(arr)]
        return out


def _samples(entry: ModelEntry, feeds: Mapping[str, np.ndarray]) -> int:
    p = entry.primary_input
    arr = feeds[p.name]
    return int(arr.shape[0]) if p.batched or arr.ndim > len(p.shape) else 1


def _head(entry: ModelEntry, feeds: Mapping[str, np.ndarray], n: int) -> Dict[str, np.ndarray]:
    """The first ``n`` samples of every batched input."""
    out = {}
    for inp in entry.inputs:
        if inp.name in feeds:
            arr = feeds[inp.name]
            out[inp.name] = arr if (not inp.batched and arr.ndim == len(inp.shape)) else arr[:n]
    return out


def profile_plan(entry: ModelEntry, max_inputs: Optional[int] = None) -> List[ProfileCase]:
    """What :func:`profile_one` measures ``entry`` on: one :class:`ProfileCase` per shape.

    A static model: its validation set (every input), else :data:`SYNTHETIC_INPUTS` seeded
    synthetic inputs; one case, key ``""``, as always. A dynamic model: the shape of its
    validation set (an npz array is rectangular, so a validation set holds one shape per
    input) plus each manifest ``profile_shapes`` shape (:data:`SHAPE_INPUTS` inputs cycling
    through :data:`SHAPE_SAMPLES` seeded samples, as ``entry.profile_cases`` makes them);
    a shape given by both is measured once, on the validation set. A dynamic model with
    neither is measured at its declared shape with each dynamic dimension 1 (``source``
    "default") -- a poor WCET for larger inputs, so :func:`profile_one` warns.
    ``max_inputs`` caps the timed inputs per pass of every case.
    """
    cases: List[ProfileCase] = []
    try:
        feeds, y = entry.load_validation_feeds()
        n = _samples(entry, feeds)
        if n < 1:
            raise ManifestError(f"model {entry.name!r}: {entry.validation_path} holds no inputs")
        what = f"validation set ({n} inputs)"
        source = "validation"
    except ManifestError:
        if entry.is_dynamic:
            feeds, y, n, what, source = {}, None, 0, "", ""
        else:
            feeds = entry.make_feeds(seed=0, batch=SYNTHETIC_INPUTS)
            y, n, source = None, SYNTHETIC_INPUTS, "synthetic"
            what = f"{SYNTHETIC_INPUTS} synthetic inputs (no validation set: accuracy not measured)"
    if n:
        if max_inputs and max_inputs < n:
            n = max_inputs
            feeds = _head(entry, feeds, n)
            y = y[:n] if y is not None else None
            what += f", first {n}"
        cases.append(ProfileCase(entry.shape_key(feeds), feeds, n, y, what, source))
    if not entry.is_dynamic:
        return cases
    n_shape = min(SHAPE_INPUTS, max_inputs) if max_inputs else SHAPE_INPUTS
    for k, shapes in enumerate(entry.profile_shapes):
        f = entry.make_feeds(shapes, seed=k, batch=min(SHAPE_SAMPLES, n_shape))
        key = entry.shape_key(f)
        if any(c.key == key for c in cases):
            continue
        cases.append(ProfileCase(key, f, n_shape, None, f"{n_shape} synthetic inputs at profile_shapes[{k}]",
                                 "profile_shapes"))
    if not cases:
        f = entry.make_feeds(seed=0, batch=min(SHAPE_SAMPLES, n_shape))
        cases.append(ProfileCase(entry.shape_key(f), f, n_shape, None,
                                 f"{n_shape} synthetic inputs, dynamic dimensions 1 (no validation set and no "
                                 "profile_shapes in the manifest)", "default"))
    return cases


def _check_stop(stop: Optional[threading.Event], name: str, where: str) -> None:
    if stop is not None and stop.is_set():
        raise Interrupted(f"profiling {name} stopped {where}: a stop was requested")


def _stats(times: Sequence[float]) -> Dict[str, Any]:
    s = sorted(times)
    return {
        "wcet_us": round(s[-1], 1),
        "p50_us": round(percentile(s, 50), 1),
        "p95_us": round(percentile(s, 95), 1),
        "p99_us": round(percentile(s, 99), 1),
        "mean_us": round(statistics.fmean(s), 1),
        "stdev_us": round(statistics.pstdev(s), 1),
    }


def top_shape(shapes: Mapping[str, Mapping[str, Any]]) -> str:
    """The shape whose numbers an entry's top level holds: the most elements (ties: the larger WCET)."""
    return max(shapes, key=lambda k: (key_elements(k), float(shapes[k].get("wcet_us") or 0.0), k))


def profile_one(cat: Catalogue, name: str, backend: str, threads: int, repeats: int = 3, warmup: int = 20,
                progress: Optional[Callable[[str], object]] = None, gap_ms: float = 0.0,
                max_inputs: Optional[int] = None, stop: Optional[threading.Event] = None) -> Dict[str, Any]:
    """Measure one model x backend x threads. Times are µs per single input (batch of 1).

    A dynamic model is measured at each shape of :func:`profile_plan` (``warmup`` runs, then
    ``repeats`` passes, per shape) and its result gains ``"shape"`` and ``"shapes"`` (see the
    module docstring); a static model's result is what it always was.

    Each input is timed as the daemon runs it: ``predict`` for a model with one input and one
    output, ``run`` with every input by name otherwise. Accuracy and macro-F1 are measured on the
    first pass over a validation set with labels, when the model's first output is a classifier.

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
    cases = profile_plan(entry, max_inputs)
    dynamic = entry.is_dynamic
    if dynamic and cases[0].source == "default":
        say(f"{name}: WARNING: dynamic model without a validation set or profile_shapes: measured at "
            f"{cases[0].key} only, a WCET far too small for larger inputs; list profile_shapes in its manifest")
    gap_s = max(0.0, gap_ms) / 1e3
    gap_note = f", {gap_ms:g} ms idle before each" if gap_s else ""
    first_out = next((o for o in entry.outputs if not o.is_state), None)
    simple = len(entry.inputs) == 1 and len(entry.outputs) == 1 and not entry.stateful
    primary = entry.primary_input.name
    reset_ok = reset_peak_rss()
    rss0 = rss_kb()
    t0 = time.perf_counter()
    model = cat.load(name, backend, threads=threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    accuracy: Optional[float] = None
    f1: Optional[float] = None
    per_shape: Dict[str, Dict[str, Any]] = {}
    try:
        for case in cases:
            at = f" at shape {case.key}" if dynamic else ""
            n = case.n
            samples = [case.sample(entry, i) for i in range(min(n, _samples(entry, case.feeds)))]
            m = len(samples)
            if simple:
                def call(s: Dict[str, np.ndarray]) -> np.ndarray:
                    return model.predict(s[primary], validate=False)
            else:
                def call(s: Dict[str, np.ndarray]) -> np.ndarray:
                    return model.run(s, validate=False)[first_out.name if first_out else model.output_names[0]]
            for i in range(warmup):
                _check_stop(stop, name, f"during the warm-up{at}")
                call(samples[i % m])
            classify = case.y is not None and first_out is not None and first_out.is_classifier
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
                    _check_stop(stop, name, f"{at.strip() + ' ' if at else ''}in pass {r + 1}/{repeats} "
                                            f"at input {i + 1}/{n}")
                    t = clock()
                    out = call(samples[i % m])
                    times.append((clock() - t) / 1e3)
                    if r == 0 and classify:
                        preds[i] = int(np.argmax(out))
                say(f"{name}/{backend}/t{threads}{at}: pass {r + 1}/{repeats} over {case.what}{gap_note}")
            if classify and case.y is not None:
                accuracy = round(float(np.mean(preds == case.y)), 6)
                f1 = round(macro_f1(case.y, preds), 6)
            per_shape[case.key] = {**_stats(times), "n": len(times), "n_inputs": n,
                                   "inputs": case.what + gap_note, "source": case.source}
        peak = peak_rss_kb()
    finally:
        model.close()
    top = top_shape(per_shape) if dynamic else ""
    main_ = per_shape[top]
    what = main_["inputs"]
    if dynamic:
        what = f"{len(per_shape)} shape(s): " + "; ".join(f"{k}: {v['inputs']}" for k, v in per_shape.items())
    result: Dict[str, Any] = {
        "model": name, "backend": backend, "threads": threads, "model_hash": entry.model_hash,
        "inputs": what, "n_inputs": main_["n_inputs"], "warmup": warmup, "repeats": repeats, "runs": main_["n"],
        "load_ms": round(load_ms, 3),
        **{k: main_[k] for k in ("wcet_us", "p50_us", "p95_us", "p99_us", "mean_us", "stdev_us")},
        "peak_rss_increase_kb": max(0, peak - rss0),
        "peak_rss_exact": reset_ok,
        "gap_ms": gap_ms,
        "accuracy": accuracy, "macro_f1": f1,
        "manifest_accuracy": entry.metric(backend, "accuracy"),
        "measured_at": time.time(),
    }
    if dynamic:
        result["shape"] = top
        result["shapes"] = per_shape
    return result


def estimate_wcet_us(by_shape: Mapping[str, float], key: str) -> Tuple[Optional[float], bool]:
    """The WCET (µs) of an input of shape ``key`` from per-shape WCETs; (estimate, scaled).

    ``key`` profiled: its WCET, ``scaled`` False. Otherwise the WCET of the profiled shape
    nearest in element count (:func:`~edged.models.key_elements`), by ratio -- a shape 4x
    smaller and one 4x larger are equally near, and a tie goes to the smaller one, whose
    scaled fixed cost over- rather than under-estimates -- times ``elements(key) /
    elements(that shape)``, with ``scaled`` True. ``(None, False)`` when nothing usable is
    profiled, or for ``key`` ``""`` (no dynamic shape known: nothing to scale by) unless
    ``""`` itself is profiled. Entries whose key does not parse or whose WCET is not a finite
    number >= 0 are ignored.
    """
    if key in by_shape and _usable(by_shape[key]):
        return float(by_shape[key]), False
    if not key:
        return None, False
    target = key_elements(key)
    best: Optional[Tuple[float, int, float]] = None  # (log distance, elements, wcet)
    for k, w in by_shape.items():
        if not k or not _usable(w):
            continue
        try:
            e = key_elements(k)
        except ValueError:
            continue
        cand = (round(abs(math.log(target / e)), 9), e, float(w))  # rounded: a 4x tie is a tie
        if best is None or cand[:2] < best[:2]:
            best = cand
    if best is None:
        return None, False
    return best[2] * target / best[1], True


def _usable(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


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

    def shapes(self, model: str, backend: str, threads: int = 1) -> Dict[str, Dict[str, Any]]:
        """Shape key -> that shape's numbers (``wcet_us``, ``p50_us``, ... ``n``); {} for a static model
        or an entry stored before shapes were measured."""
        e = self.get(model, backend, threads)
        raw = e.get("shapes") if e else None
        if not isinstance(raw, dict):
            return {}
        return {str(k): v for k, v in raw.items() if isinstance(v, dict)}

    def _by_shape(self, model: str, backend: str, threads: int, field: str) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for k, v in self.shapes(model, backend, threads).items():
            x = v.get(field)
            if x is not None and _usable(x):
                out[k] = float(x)
        return out

    def wcet_by_shape(self, model: str, backend: str, threads: int = 1) -> Dict[str, float]:
        """Shape key -> WCET (µs) of a dynamic model; {} for a static model or an old entry."""
        return self._by_shape(model, backend, threads, "wcet_us")

    def p50_by_shape(self, model: str, backend: str, threads: int = 1) -> Dict[str, float]:
        """Shape key -> median latency (µs) of a dynamic model; {} for a static model or an old entry."""
        return self._by_shape(model, backend, threads, "p50_us")

    def wcet_for_shape(self, model: str, backend: str, threads: int, key: str) -> Tuple[Optional[float], bool]:
        """(WCET µs, scaled) for an input of shape ``key``: :func:`estimate_wcet_us` over the per-shape
        WCETs, else (no shapes stored, or ``key`` ``""``) the entry's top-level WCET, unscaled; (None,
        False) without an entry."""
        w, scaled = estimate_wcet_us(self.wcet_by_shape(model, backend, threads), key)
        return (w, scaled) if w is not None else (self.wcet_us(model, backend, threads), False)

    def p50_for_shape(self, model: str, backend: str, threads: int, key: str) -> Tuple[Optional[float], bool]:
        """As :meth:`wcet_for_shape`, for the median latency (scaled the same way)."""
        v, scaled = estimate_wcet_us(self.p50_by_shape(model, backend, threads), key)
        return (v, scaled) if v is not None else (self.p50_us(model, backend, threads), False)

    def cut_times(self, model: str, backend: str = "onnx", threads: int = 1) -> Dict[str, Dict[str, Any]]:
        """Cut name -> that cut's row from ``edged profile --layers`` (``k``, ``bytes``, ``tail_hash``,
        ``head_p50_us``, ``head_wcet_us``, ``tail_p50_us``, ...; µs); {} when the layers were not profiled."""
        e = self.get(model, backend, threads)
        rows = e.get("cuts") if e else None
        if not isinstance(rows, list):
            return {}
        return {str(r["name"]): r for r in rows if isinstance(r, dict) and "name" in r}

    def is_current(self, model: str, backend: str, threads: int, model_hash: str, dynamic: bool = False) -> bool:
        """True if an entry exists and was measured on this exact model; with ``dynamic`` (pass
        ``entry.is_dynamic``) it must also hold per-shape numbers: an entry a dynamic model got before
        shapes were measured holds one shape (dynamic dimensions 1) and is measured again."""
        e = self.get(model, backend, threads)
        if not e or e.get("model_hash") != model_hash:
            return False
        return not dynamic or bool(self.shapes(model, backend, threads))


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


def _table_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per result, or per shape for a dynamic model (model-level columns repeated, accuracy on
    the shape it was measured on, ``*`` marking the shape whose numbers are the entry's top level)."""
    out: List[Dict[str, Any]] = []
    for r in sorted(rows, key=lambda r: (r["model"], r["backend"], r["threads"])):
        shapes = r.get("shapes")
        if not isinstance(shapes, dict) or not shapes:
            out.append(dict(r, _shape="-"))
            continue
        measured_acc = [k for k, v in shapes.items() if isinstance(v, dict) and v.get("source") == "validation"]
        for k in sorted(shapes, key=lambda k: (key_elements(k), k)):
            v = shapes[k]
            if not isinstance(v, dict):
                continue
            row = dict(r, **{f: v.get(f) for f in ("wcet_us", "p50_us", "p95_us", "p99_us", "mean_us", "stdev_us")})
            row["_shape"] = k + ("*" if k == r.get("shape") else "")
            if k not in measured_acc[:1]:
                row["accuracy"] = row["macro_f1"] = None
            out.append(row)
    return out


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The profile as a table: one row per model x backend x threads, one per shape for a dynamic model."""
    table = _table_rows(rows)
    mw = max([8, *(len(str(r["model"])) for r in table)])
    sw = max([5, *(len(r["_shape"]) for r in table)])
    head = (f"{'model':<{mw}} {'backend':<7} {'thr':>3} {'shape':<{sw}} {'gap ms':>6} {'load ms':>8} {'WCET us':>9} "
            f"{'p50':>8} {'p95':>8} {'p99':>8} {'mean':>8} {'stdev':>7} {'RSS+ MB':>8} {'acc':>6} {'F1':>6}")
    lines = [head, "-" * len(head)]
    for r in table:
        rss = r.get("peak_rss_increase_kb")
        lines.append(
            f"{r['model']:<{mw}} {r['backend']:<7} {r['threads']:>3} {r['_shape']:<{sw}} "
            f"{_fmt(float(r.get('gap_ms') or 0), 0):>6} "
            f"{_fmt(r.get('load_ms'), 1):>8} "
            f"{_fmt(r.get('wcet_us'), 1):>9} "
            f"{_fmt(r.get('p50_us'), 1):>8} {_fmt(r.get('p95_us'), 1):>8} {_fmt(r.get('p99_us'), 1):>8} "
            f"{_fmt(r.get('mean_us'), 1):>8} "
            f"{_fmt(r.get('stdev_us'), 1):>7} {_fmt(rss / 1024 if rss is not None else None, 1):>8} "
            f"{_fmt(r.get('accuracy'), 3):>6} {_fmt(r.get('macro_f1'), 3):>6}"
        )
    if any(r["_shape"].endswith("*") for r in table):
        lines.append("* the shape whose numbers are the model's top-level WCET (the largest measured)")
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
    p.add_argument("--layers", action="store_true",
                   help="also time the head and tail of every partition cut of each ONNX model (needs "
                        "pip install 'edged[partition]'); stored with the model's entry as 'cuts'. Cuts are "
                        "checked against the full model on the validation set first (--max-inputs caps it)")
    p.add_argument("--predict", action="store_true",
                   help="with --layers: fit the Neurosurgeon per-layer-type regression on this device and print "
                        "predicted against measured per layer and per cut, with the error")
    p.add_argument("--export", type=Path, default=None, metavar="FILE",
                   help="write this device's table (fingerprint, versions, per model x backend x threads: WCET, "
                        "p50/p99, RSS, accuracy, F1, FLOPs, GFLOPS, energy) as JSON for 'edged compare'")
    p.add_argument("--label", default=None, metavar="NAME",
                   help="the device's name in the export (default: the host name)")
    p.add_argument("--power", default="none", metavar="KIND",
                   help="with --export: power source to measure energy per inference with (auto, ina219, jtop, "
                        "hwmon; default none)")


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
    if args.show and args.export is not None:
        prof = load_profile(args.state_dir)
        if prof is None:
            raise EdgedError(f"no stored profile for this device in {state_dir(args.state_dir)} to export; "
                             "run 'edged profile' first")
        from edged.compare import write_export

        cat = Catalogue.discover(args.models_dir)
        flops = {e["model"]: cat.get(e["model"]).manifest.get("flops") for e in prof.entries.values()
                 if e.get("model") in cat}
        path = write_export(args.export, prof.fingerprint, list(prof.entries.values()), label=args.label, flops=flops)
        print(f"edged profile: exported {len(prof.entries)} entries to {path}", file=sys.stderr)
        return 0
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
    if args.predict and not args.layers:
        raise EdgedError("--predict needs --layers (it compares the prediction with the measured layers)")
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
             f"{args.repeats} passes over each validation set (a dynamic model: per shape)")
    if args.gap_ms < 0 or (args.max_inputs is not None and args.max_inputs < 1):
        raise EdgedError(f"--gap-ms must be >= 0 and --max-inputs >= 1 (got {args.gap_ms}, {args.max_inputs})")
    results = run_profile(cat, models, split_csv(args.backend), threads, args.repeats, args.warmup, progress,
                          args.gap_ms, args.max_inputs)
    layer_text = add_layer_profiles(cat, results, args, progress) if args.layers else []
    fp = device_fingerprint()
    if not args.no_store:
        prof = store_results(results, args.state_dir, fp)
        progress(f"stored in {prof.path}")
    if args.json:
        print(json.dumps({"fingerprint": fp, "results": results}, indent=2, sort_keys=True))
    else:
        print(describe_device(fp))
        print(format_table(results))
        for text in layer_text:
            print()
            print(text)
    if args.export is not None:
        from edged.compare import write_export

        energy = measure_energy(cat, results, args.power, progress) if args.power != "none" else {}
        flops = {m: cat.get(m).manifest.get("flops") for m in models}
        path = write_export(args.export, fp, results, label=args.label, flops=flops, energy_mj=energy)
        progress(f"exported this device's table to {path}")
    return 0


def add_layer_profiles(cat: Catalogue, results: List[Dict[str, Any]], args: argparse.Namespace,
                       progress: Callable[[str], None]) -> List[str]:
    """``--layers`` (and ``--predict``): per-cut head/tail times into each ONNX result (``cuts``, and
    ``neurosurgeon`` with ``--predict``); returns the tables to print."""
    from edged.partition import neurosurgeon as ns

    texts: List[str] = []
    models: Dict[int, Any] = {}
    for r in results:
        if r["backend"] != "onnx":
            continue
        lm = None
        if args.predict:
            if r["threads"] not in models:
                progress(f"neurosurgeon: profiling the synthetic layer grid (threads {r['threads']}) and fitting")
                models[r["threads"]] = ns.fit_on_device(threads=r["threads"])
            lm = models[r["threads"]]
        progress(f"{r['model']}/onnx/t{r['threads']}: timing the head and tail of every cut")
        try:
            extra = ns.profile_model_layers(cat.get(r["model"]), r["threads"], repeats=args.repeats,
                                            warmup=args.warmup, max_inputs=args.max_inputs or 64,
                                            latency_model=lm, max_verify=args.max_inputs)
        except EdgedError as exc:
            r["cuts_error"] = str(exc)
            progress(f"{r['model']}: no cuts: {exc}")
            continue
        r.update(extra)
        pred = extra.get("neurosurgeon", {}).get("cuts")
        texts.append(f"{r['model']} (onnx, {r['threads']} thread(s)): per-cut head (device) and tail times, us"
                     + (" -- measured vs Neurosurgeon prediction" if pred else "") + "\n"
                     + ns.format_cut_table(extra["cuts"], pred))
        if pred:
            texts.append(f"{r['model']}: per layer, measured (single-layer session minus "
                         f"{lm.overhead_us if lm else 0:.1f} us run overhead) vs predicted\n"
                         + ns.format_layer_table(extra["neurosurgeon"]["layers"]))
    return texts


def measure_energy(cat: Catalogue, results: Sequence[Dict[str, Any]], kind: Any,
                   progress: Callable[[str], None], seconds: float = 1.0) -> Dict[str, float]:
    """``model/backend/threads`` -> mJ per inference: run each model back to back for ``seconds`` while
    reading the power source every 50 ms; mean board power (W) x wall time / runs. The board's idle
    power is included (what a battery pays). {} when the source reports no total power. ``kind``: a
    power source name (``--power``) or a :class:`~edged.power.base.PowerSource`."""
    from edged.power.base import make_power_source

    src = make_power_source(kind) if isinstance(kind, str) else kind
    src.open()
    out: Dict[str, float] = {}
    try:
        for r in results:
            entry = cat.get(r["model"])
            with cat.load(r["model"], r["backend"], threads=int(r["threads"])) as m:
                x, _ = entry.load_validation()
                watts: List[float] = []
                n = 0
                t0 = time.monotonic()
                next_read = t0
                while time.monotonic() - t0 < seconds:
                    m.predict(x[n % len(x)])
                    n += 1
                    if time.monotonic() >= next_read:
                        w = src.read().total_w
                        if w is not None:
                            watts.append(float(w))
                        next_read += 0.05
                elapsed = time.monotonic() - t0
            if watts and n:
                out[entry_key(r["model"], r["backend"], int(r["threads"]))] = round(
                    statistics.fmean(watts) * elapsed / n * 1e3, 6)
            progress(f"{r['model']}/{r['backend']}/t{r['threads']}: energy "
                     + (f"{out.get(entry_key(r['model'], r['backend'], int(r['threads'])))} mJ per inference"
                        if watts else "not measured (no total power)"))
    finally:
        src.close()
    return out
