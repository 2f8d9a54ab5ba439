#!/usr/bin/env python3
"""Per-call latency of edged's backend wrapper against the bare runtime, same model, same run.

For each shipped model x backend: the bare call (``InferenceSession.run`` on a
pre-shaped batch of one, or ``set_tensor``/``invoke``/``get_tensor``), edged's
``LoadedModel.predict`` without validation (the daemon's hot path: sources have
already validated the input), and with validation (shape, dtype, finiteness).
Calls are interleaved in blocks so drift on a shared machine hits all three alike.
Prints a table and writes bench/results/runtime.json. Target: wrapper overhead <= 5 us median.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edged.models import Catalogue  # noqa: E402
from edged.runtime import available_backends  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "runtime.json"


def bare_call(model) -> Callable[[np.ndarray], np.ndarray]:  # type: ignore[no-untyped-def]
    """The same artifact driven directly through its runtime's own API."""
    be = model.backend
    if model.backend_name == "onnx":
        sess, names, in_name = be._sess, be._out_names, be.input_spec.name
        return lambda xb: sess.run(names, {in_name: xb})[0]
    it, i_in, i_out = be._it, be._in_index, be._out_index

    def run(xb: np.ndarray) -> np.ndarray:
        it.set_tensor(i_in, xb)
        it.invoke()
        return it.get_tensor(i_out)

    return run


def measure(calls: Dict[str, Callable[[], object]], n: int, block: int = 200) -> Dict[str, List[float]]:
    out: Dict[str, List[float]] = {k: [] for k in calls}
    clock = time.perf_counter_ns
    for _ in range(max(1, n // block)):
        for name, fn in calls.items():
            ts = out[name]
            for _ in range(block):
                t = clock()
                fn()
                ts.append((clock() - t) / 1e3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000, help="calls per variant (default 20000)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    cat = Catalogue.discover()
    rows = []
    for name in ("mlp", "cnn"):
        x, _ = cat.get(name).load_validation()
        sample = x[0]
        for backend in ("onnx", "litert"):
            if backend not in available_backends():
                print(f"skip {name}/{backend}: runtime not installed", file=sys.stderr)
                continue
            m = cat.load(name, backend, threads=args.threads)
            xb = sample[np.newaxis]
            perm = m._perm
            xb_art = np.ascontiguousarray(xb.transpose(perm)) if perm else np.ascontiguousarray(xb)
            bare = bare_call(m)
            np.testing.assert_allclose(bare(xb_art)[0], m.predict(sample), atol=1e-6)
            for _ in range(500):  # warm-up
                bare(xb_art)
                m.predict(sample)
            t = measure({  # defaults bind this iteration's objects (the lambdas run before the loop moves on)
                "bare": lambda bare=bare, xb=xb_art: bare(xb),
                "wrapper": lambda m=m, s=sample: m.predict(s, validate=False),
                "wrapper+validate": lambda m=m, s=sample: m.predict(s),
            }, args.calls)
            med = {k: float(np.median(v)) for k, v in t.items()}
            p99 = {k: float(np.percentile(v, 99)) for k, v in t.items()}
            rows.append({
                "model": name, "backend": backend, "calls": len(t["bare"]),
                "bare_median_us": med["bare"], "bare_p99_us": p99["bare"],
                "wrapper_median_us": med["wrapper"], "wrapper_p99_us": p99["wrapper"],
                "validate_median_us": med["wrapper+validate"], "validate_p99_us": p99["wrapper+validate"],
                "overhead_median_us": med["wrapper"] - med["bare"],
                "overhead_validate_median_us": med["wrapper+validate"] - med["bare"],
                "ratio": med["wrapper"] / med["bare"],
            })
            m.close()
    hdr = (f"{'model':<5} {'backend':<7} {'bare p50':>9} {'p99':>7} {'wrap p50':>9} {'p99':>7} {'+val p50':>9} "
           f"{'p99':>7} {'ovh us':>7} {'ovh+val':>8} {'ratio':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['model']:<5} {r['backend']:<7} {r['bare_median_us']:>9.2f} {r['bare_p99_us']:>7.2f} "
              f"{r['wrapper_median_us']:>9.2f} {r['wrapper_p99_us']:>7.2f} {r['validate_median_us']:>9.2f} "
              f"{r['validate_p99_us']:>7.2f} {r['overhead_median_us']:>7.2f} {r['overhead_validate_median_us']:>8.2f} "
              f"{r['ratio']:>6.2f}")
    worst = max(r["overhead_median_us"] for r in rows)
    print(f"target: wrapper overhead <= 5 us median; worst here {worst:.2f} us -> {'MET' if worst <= 5 else 'MISSED'}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                               "threads": args.threads, "rows": rows, "target_us": 5.0, "worst_overhead_us": worst},
                              indent=2) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
