"""Per-cut timing on this device and the Neurosurgeon baseline (Kang et al., ASPLOS'17).

Measured (what ``edged profile --layers`` stores):

- :func:`profile_cuts`: for every usable cut, the head time (``nodes[:k]``, on the device) and
  the tail time (``nodes[k:]``, what this machine would spend as a fog) of single inputs from
  the validation set, µs (p50, p99 and the worst case).

The baseline (what ``--predict`` adds): Neurosurgeon predicts each layer's latency from its
configuration with one regression model per layer *kind* (conv, fc, pool, activation, ...),
fitted on layers profiled on the device -- here a fixed grid of synthetic single-layer ONNX
models (:func:`synthetic_layers`), never the model being partitioned -- and picks the cut from
the predicted head/tail sums. :class:`LatencyModel` is that regression; :func:`predict_cuts`
gives each cut's predicted head and tail time without running that model.

Features per kind (µs = a + b x f1 + c x f2, least squares, coefficients kept >= 0):
conv and fc: FLOPs and input + output elements; pool: FLOPs (kernel x output elements) and input
elements; everything else: input + output elements. Each layer time is its single-node session
time minus the session overhead (an Identity node), so a chain of layers is predicted as
overhead + the sum of its layers.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edged.partition.graph import GraphPlan, Layer, analyse

log = logging.getLogger(__name__)

KIND_FEATURES: Dict[str, Tuple[str, ...]] = {
    "conv": ("flops", "elements"),
    "fc": ("flops", "elements"),
    "pool": ("flops", "in_elements"),
}
DEFAULT_FEATURES: Tuple[str, ...] = ("elements",)


def _features(layer: Layer) -> List[float]:
    names = KIND_FEATURES.get(layer.kind, DEFAULT_FEATURES)
    out = []
    for n in names:
        if n == "flops":
            out.append(float(layer.flops))
        elif n == "in_elements":
            out.append(float(layer.in_elements))
        else:
            out.append(float(layer.in_elements + layer.out_elements))
    return out


def _session(model: Any, threads: int = 1) -> Any:
    from edged.partition.split import _session as make

    return make(model, threads)


def time_run(fn: Callable[[], object], warmup: int = 5, repeats: int = 30) -> List[float]:
    """µs of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    clock = time.perf_counter_ns
    for _ in range(repeats):
        t = clock()
        fn()
        out.append((clock() - t) / 1e3)
    return out


def _stats(times: Sequence[float]) -> Dict[str, float]:
    s = sorted(times)
    return {"p50_us": round(float(np.percentile(s, 50)), 1), "p99_us": round(float(np.percentile(s, 99)), 1),
            "wcet_us": round(s[-1], 1), "mean_us": round(statistics.fmean(s), 1)}


# ---- measured per-cut times --------------------------------------------------------------------------
def profile_cuts(pm: Any, x: np.ndarray, repeats: int = 3, warmup: int = 10,
                 stop: Optional[Callable[[], bool]] = None) -> List[Dict[str, Any]]:
    """Head and tail times of every usable cut of a :class:`~edged.partition.split.PartitionedModel`.

    ``x``: inputs in the canonical layout, timed one at a time (the session ``run`` alone: the layout
    transposition of the input is not included), ``repeats`` passes. All-fog has head 0
    and the full model as its tail; all-local the full model as its head and tail 0. Returns one dict
    per cut: ``name, k, bytes, tail_hash, head_{p50,p99,wcet,mean}_us, tail_{...}_us``."""
    rows = []
    inputs = [pm.to_file_layout(x[i]) for i in range(len(x))]
    for c in pm.cuts:
        if stop is not None and stop():
            break
        row: Dict[str, Any] = {"name": c.name, "k": c.k, "bytes": c.bytes, "tail_hash": c.tail_hash}
        sess = pm.sessions(c.name)
        mids = inputs
        if sess["head"] is not None:
            h, h_in = sess["head"]
            mids = [h.run(None, {h_in: a})[0] for a in inputs]
        for side, feeds in (("head", inputs), ("tail", mids)):
            if sess[side] is None:
                row.update({f"{side}_{k}": 0.0 for k in ("p50_us", "p99_us", "wcet_us", "mean_us")})
                continue
            s, name = sess[side]
            row.update({f"{side}_{k}": v for k, v in _stats(_time_each(s, name, feeds, repeats, warmup)).items()})
        rows.append(row)
    return rows


def _time_each(sess: Any, name: str, feeds: Sequence[np.ndarray], repeats: int, warmup: int) -> List[float]:
    """µs of one session ``run`` per input, ``repeats`` passes after ``warmup`` untimed runs."""
    n = len(feeds)
    for i in range(warmup):
        sess.run(None, {name: feeds[i % n]})
    clock = time.perf_counter_ns
    out = []
    for _ in range(repeats):
        for a in feeds:
            f = {name: a}
            t = clock()
            sess.run(None, f)
            out.append((clock() - t) / 1e3)
    return out


# ---- single-layer models ------------------------------------------------------------------------------
def layer_model(plan: GraphPlan, layer: Layer) -> Tuple[Any, Dict[str, np.ndarray]]:
    """A one-node ONNX model of ``layer`` (batch 1) and zero feeds for it."""
    from onnx import helper

    node = plan.nodes[layer.index]
    data_in = [t for t in node.input if t and t not in plan.initializers and t not in plan.constants]
    consts = [nd for nd in plan.nodes if nd.op_type == "Constant" and any(o in node.input for o in nd.output)]
    inputs, feeds = [], {}
    for t in data_in:
        shape = [1, *[d if d is not None else 1 for d in plan.tensor_shape(t)[1:]]]
        dtype = np.dtype(plan.tensor_dtype(t))
        inputs.append(helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(dtype), shape))
        feeds[t] = np.zeros(shape, dtype=dtype) + np.asarray(0.5, dtype=dtype)
    outs = [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(np.dtype(plan.tensor_dtype(o))), None)
            for o in node.output]
    inits = [plan.initializers[t] for t in node.input if t in plan.initializers]
    graph = helper.make_graph([*consts, node], f"layer_{layer.index}", inputs, outs, inits)
    m = helper.make_model(graph, opset_imports=list(plan.model.opset_import), producer_name="edged-neurosurgeon")
    m.ir_version = plan.model.ir_version
    return m, feeds


def session_overhead_us(threads: int = 1, repeats: int = 200) -> float:
    """Median µs of running a one-node Identity session on 4 floats: the fixed cost of any ``run``."""
    from onnx import helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "overhead",
                          [helper.make_tensor_value_info("x", 1, [1, 4])],
                          [helper.make_tensor_value_info("y", 1, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    s = _session(m, threads)
    x = {"x": np.zeros((1, 4), np.float32)}
    return float(statistics.median(time_run(lambda: s.run(None, x), warmup=50, repeats=repeats)))


def measure_layers(plan: GraphPlan, threads: int = 1, repeats: int = 50, overhead_us: Optional[float] = None
                   ) -> List[Tuple[Layer, float]]:
    """(layer, measured µs) for every node of ``plan``: its single-node session's median minus the overhead."""
    ovh = session_overhead_us(threads) if overhead_us is None else overhead_us
    out = []
    for layer in plan.layers:
        if plan.nodes[layer.index].op_type == "Constant":
            continue
        m, feeds = layer_model(plan, layer)
        s = _session(m, threads)
        def call(s: Any = s, feeds: Dict[str, np.ndarray] = feeds) -> object:
            return s.run(None, feeds)

        t = float(statistics.median(time_run(call, warmup=10, repeats=repeats)))
        out.append((layer, max(0.0, t - ovh)))
    return out


def synthetic_layers(seed: int = 0) -> List[Any]:
    """A fixed grid of single-layer ONNX models per kind (conv, fc, pool, activation, reshape, softmax): the
    configurations Neurosurgeon's regression is fitted on (never the partitioned model's own layers)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    models = []

    def vi(name: str, shape: Sequence[int]) -> Any:
        return helper.make_tensor_value_info(name, 1, list(shape))

    def mk(nodes: List[Any], inp: Sequence[int], inits: Sequence[Tuple[str, np.ndarray]], name: str) -> Any:
        g = helper.make_graph(nodes, name, [vi("x", inp)], [helper.make_tensor_value_info("y", 1, None)],
                              [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m

    conv_grid = [(cin, cout, hw, 3, 1) for cin in (4, 16, 48) for cout in (8, 32, 64) for hw in (8, 16, 32)]
    conv_grid += [(cin, cout, hw, 1, 1) for cin in (32, 96) for cout in (8, 24) for hw in (8, 16, 32)]
    conv_grid += [(1, 8, 8, 3, 1), (3, 8, 32, 3, 2), (3, 16, 64, 3, 2), (3, 24, 64, 3, 2), (3, 8, 64, 5, 2),
                  (32, 64, 4, 3, 1), (96, 96, 8, 3, 1)]
    for cin, cout, hw, k, s in conv_grid:
        pad = k // 2
        models.append(mk([helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[s, s],
                                           pads=[pad] * 4)],
                         [1, cin, hw, hw], [("w", rng.standard_normal((cout, cin, k, k)) * 0.1),
                                            ("b", np.zeros(cout))], f"conv_{cin}_{cout}_{hw}_{k}_{s}"))
    for fin, fout in [(30, 32), (128, 10), (512, 64), (512, 128), (1024, 256), (256, 256), (64, 10), (2048, 64)]:
        models.append(mk([helper.make_node("Gemm", ["x", "w", "b"], ["y"])], [1, fin],
                         [("w", rng.standard_normal((fin, fout)) * 0.1), ("b", np.zeros(fout))], f"fc_{fin}_{fout}"))
    for c, hw in [(8, 32), (16, 16), (32, 8), (8, 64), (16, 32), (4, 16)]:
        models.append(mk([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                         [1, c, hw, hw], [], f"pool_{c}_{hw}"))
    for n in [16, 256, 1024, 4096, 8192, 16384]:
        models.append(mk([helper.make_node("Relu", ["x"], ["y"])], [1, n], [], f"relu_{n}"))
        models.append(mk([helper.make_node("Flatten", ["x"], ["y"], axis=1)], [1, n], [], f"flatten_{n}"))
    for c, hw in [(8, 8), (32, 4), (16, 16), (8, 32)]:
        models.append(mk([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])], [1, c, hw, hw], [],
                         f"transpose_{c}_{hw}"))
    for n in [10, 100, 1000]:
        models.append(mk([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [1, n], [], f"softmax_{n}"))
    return models


# ---- the regression -----------------------------------------------------------------------------------
@dataclass
class LatencyModel:
    """Per-layer-kind linear latency models: ``µs = coef[0] + coef[1] x f1 + ...`` (see the module docstring).

    ``overhead_us`` is the fixed cost of one session ``run``; :meth:`predict_chain` adds it once."""

    coefs: Dict[str, List[float]]
    overhead_us: float
    n_fitted: Dict[str, int]

    def predict(self, layer: Layer) -> float:
        """Predicted µs of ``layer`` (its kind's model; a kind never fitted uses the ``other`` model)."""
        coef = self.coefs.get(layer.kind)
        f = _features(layer)
        if coef is None:  # a kind the grid does not cover: priced like a data-movement layer of its size
            coef = self.coefs.get("reshape") or self.coefs.get("activation") or [0.0, 0.0]
            f = [float(layer.in_elements + layer.out_elements)]
        return max(0.0, coef[0] + sum(c * v for c, v in zip(coef[1:], f)))

    def predict_chain(self, layers: Sequence[Layer]) -> float:
        """Predicted µs of one ``run`` of these layers in one session (0 for none)."""
        return self.overhead_us + sum(self.predict(layer) for layer in layers) if layers else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {"coefs": self.coefs, "overhead_us": self.overhead_us, "n_fitted": self.n_fitted,
                "features": {k: list(KIND_FEATURES.get(k, DEFAULT_FEATURES)) for k in self.coefs}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyModel:
        return cls({str(k): [float(x) for x in v] for k, v in d["coefs"].items()}, float(d["overhead_us"]),
                   {str(k): int(v) for k, v in d.get("n_fitted", {}).items()})


#: layers faster than this (µs) weigh as if they took this long in the relative least squares
RELATIVE_FLOOR_US = 0.5


def fit(samples: Sequence[Tuple[Layer, float]], overhead_us: float) -> LatencyModel:
    """Least squares of the relative error per layer kind on (layer, measured µs); a negative coefficient is
    dropped and the rest refitted."""
    by_kind: Dict[str, List[Tuple[Layer, float]]] = {}
    for layer, us in samples:
        by_kind.setdefault(layer.kind, []).append((layer, us))
    coefs: Dict[str, List[float]] = {}
    for kind, rows in by_kind.items():
        X = np.array([[1.0, *_features(layer)] for layer, _ in rows])
        y = np.array([us for _, us in rows])
        # relative error: a layer of 1 us and one of 1 ms count alike (times span three decades)
        w = 1.0 / np.maximum(y, RELATIVE_FLOOR_US)
        active = list(range(X.shape[1]))
        coef = np.zeros(X.shape[1])
        for _ in range(X.shape[1]):  # non-negative least squares by elimination (few features)
            sol, *_ = np.linalg.lstsq(X[:, active] * w[:, None], y * w, rcond=None)
            if (sol >= 0).all() or len(active) == 1:
                coef[:] = 0.0
                coef[active] = np.maximum(sol, 0.0)
                break
            active.pop(int(np.argmin(sol)))
        coefs[kind] = [float(c) for c in coef]
    return LatencyModel(coefs, overhead_us, {k: len(v) for k, v in by_kind.items()})


def fit_on_device(threads: int = 1, repeats: int = 50) -> LatencyModel:
    """Profile :func:`synthetic_layers` on this device and fit the per-kind regression."""
    ovh = session_overhead_us(threads)
    samples: List[Tuple[Layer, float]] = []
    for m in synthetic_layers():
        plan = analyse(m)
        samples += measure_layers(plan, threads, repeats, overhead_us=ovh)
    return fit(samples, ovh)


def predict_cuts(plan: GraphPlan, model: LatencyModel, cut_names: Optional[Sequence[str]] = None
                 ) -> Dict[str, Dict[str, float]]:
    """cut -> ``{"head_us", "tail_us"}`` predicted from the layers alone (nothing of the model is run)."""
    layers = [la for la in plan.layers if plan.nodes[la.index].op_type != "Constant"]
    out: Dict[str, Dict[str, float]] = {}
    for c in plan.cuts:
        if cut_names is not None and c.name not in cut_names:
            continue
        head = [la for la in layers if la.index < c.k]
        tail = [la for la in layers if la.index >= c.k]
        out[c.name] = {"head_us": round(model.predict_chain(head), 1), "tail_us": round(model.predict_chain(tail), 1)}
    return out


def layer_table(plan: GraphPlan, model: LatencyModel, measured: Sequence[Tuple[Layer, float]]
                ) -> List[Dict[str, Any]]:
    """Per layer: kind, FLOPs, measured and predicted µs and the error (predicted - measured)."""
    rows = []
    for layer, us in measured:
        pred = model.predict(layer)
        rows.append({"index": layer.index, "name": layer.name, "op": layer.op, "kind": layer.kind,
                     "flops": layer.flops, "measured_us": round(us, 2), "predicted_us": round(pred, 2),
                     "error_us": round(pred - us, 2),
                     "error_pct": round(100.0 * (pred - us) / us, 1) if us > 0 else None})
    return rows


def format_layer_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = f"{'#':>3} {'layer':<14} {'kind':<10} {'MFLOPs':>8} {'measured us':>12} {'predicted us':>13} {'error':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        pct = "-" if r.get("error_pct") is None else f"{r['error_pct']:+.0f}%"
        lines.append(f"{r['index']:>3} {str(r['name'])[:14]:<14} {r['kind']:<10} {r['flops'] / 1e6:>8.3f} "
                     f"{r['measured_us']:>12.2f} {r['predicted_us']:>13.2f} {pct:>8}")
    tm = sum(float(r["measured_us"]) for r in rows)
    tp = sum(float(r["predicted_us"]) for r in rows)
    if rows:
        lines.append(f"{'':>3} {'sum':<14} {'':<10} {'':>8} {tm:>12.2f} {tp:>13.2f} "
                     f"{(100.0 * (tp - tm) / tm if tm else 0.0):>+7.0f}%")
    return "\n".join(lines)


def format_cut_table(rows: Sequence[Mapping[str, Any]], predicted: Optional[Mapping[str, Mapping[str, float]]] = None
                     ) -> str:
    head = (f"{'k':>3} {'cut':<12} {'bytes':>7} {'head p50':>9} {'head wcet':>10} {'tail p50':>9}"
            + (f" {'pred head':>10} {'err':>6} {'pred tail':>10} {'err':>6}" if predicted else ""))
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['k']:>3} {str(r['name'])[:12]:<12} {r['bytes'] if r['bytes'] is not None else '-':>7} "
                f"{r['head_p50_us']:>9.1f} {r['head_wcet_us']:>10.1f} {r['tail_p50_us']:>9.1f}")
        if predicted:
            p = predicted.get(str(r["name"]), {})
            ph, pt = p.get("head_us"), p.get("tail_us")

            def err(pred: Optional[float], meas: float) -> str:
                return "-" if pred is None or not meas else f"{100.0 * (pred - meas) / meas:+.0f}%"

            line += (f" {ph if ph is not None else '-':>10} {err(ph, float(r['head_p50_us'])):>6} "
                     f"{pt if pt is not None else '-':>10} {err(pt, float(r['tail_p50_us'])):>6}")
        lines.append(line)
    return "\n".join(lines)


# ---- edged profile --layers ---------------------------------------------------------------------------
def profile_model_layers(entry: Any, threads: int = 1, repeats: int = 3, warmup: int = 10,
                         max_inputs: Optional[int] = 64, latency_model: Optional[LatencyModel] = None,
                         max_verify: Optional[int] = None) -> Dict[str, Any]:
    """What ``edged profile --layers`` adds to a model's ONNX entry: ``cuts`` (measured head/tail per cut,
    sizes from the graph) and, given ``latency_model`` (``--predict``), ``neurosurgeon``: the per-layer
    measured-vs-predicted table and each cut's predicted head/tail. Cuts are verified on ``max_verify``
    validation inputs (default: all)."""
    from edged.partition.split import PartitionedModel

    pm = PartitionedModel(entry, threads=threads, max_verify=max_verify)
    try:
        x, _ = entry.load_validation()
        what = f"validation set, first {min(len(x), max_inputs or len(x))}"
    except Exception:
        x = entry.make_feeds(seed=0, batch=32)[entry.input.name]
        what = "32 synthetic inputs"
    if max_inputs:
        x = x[:max_inputs]
    out: Dict[str, Any] = {"cuts": profile_cuts(pm, x, repeats, warmup), "cuts_inputs": what,
                           "cuts_rejected": dict(pm.rejected)}
    if latency_model is not None:
        measured = measure_layers(pm.plan, threads, overhead_us=latency_model.overhead_us)
        out["neurosurgeon"] = {
            "layers": layer_table(pm.plan, latency_model, measured),
            "cuts": predict_cuts(pm.plan, latency_model, pm.cut_names),
            "model": latency_model.to_dict(),
        }
    return out
