#!/usr/bin/env python3
"""Per-input cost of the task-aware result summary (edged.results.summarize) and of StateStore.

summarize() runs once per decided input, so it must stay cheap next to inference. Each case
summarises the outputs of one sample (batch axis of 1) of a given kind and size; calls are
timed one by one and the median and p99 are printed. Prints a table and writes
bench/results/summarize.json. Target: <= 10 us median for classifiers of up to 64 classes,
regression, state and tiny tensors; large tensors and 1000-class logits cost what one pass
over their values costs (reported, no target).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edged.models import ModelEntry, ModelInput, ModelOutput  # noqa: E402
from edged.results import StateStore, summarize  # noqa: E402
from edged.runtime import TensorSpec  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "summarize.json"
TARGET_US = 10.0


def entry(outputs: List[ModelOutput], inputs: Tuple[ModelInput, ...] = ()) -> ModelEntry:
    ins = inputs or (ModelInput(TensorSpec("x", (None, 4), "float32")),)
    return ModelEntry(name="bench", dir=Path("."), manifest_path=Path("m.json"), manifest={}, input=ins[0].spec,
                      artifacts={}, inputs=ins, outputs=tuple(outputs))


def cases() -> List[Tuple[str, Callable[[], object]]]:
    rng = np.random.default_rng(0)

    def probs(n: int) -> np.ndarray:
        p = rng.random((1, n)).astype(np.float32)
        return p / p.sum()

    labels10 = tuple(str(i) for i in range(10))
    e2 = entry([ModelOutput("probs", "probabilities", ("malignant", "benign"))])
    o2 = {"probs": probs(2)}
    e10 = entry([ModelOutput("probs", "probabilities", labels10)])
    o10 = {"probs": probs(10)}
    e1000 = entry([ModelOutput("logits", "logits", top_k=5)])
    o1000 = {"logits": rng.standard_normal((1, 1000)).astype(np.float32)}
    ereg = entry([ModelOutput("y", "regression")])
    oreg = {"y": np.array([[0.73]], np.float32)}
    etwo = entry([ModelOutput("probs", "probabilities", ("a", "b", "c"), top_k=2), ModelOutput("emb", "tensor")])
    otwo = {"probs": probs(3), "emb": rng.standard_normal((1, 2, 2)).astype(np.float32)}
    emask = entry([ModelOutput("mask", "tensor")])
    omask = {"mask": rng.random((1, 1, 64, 64)).astype(np.float32)}
    obig = {"mask": rng.random((1, 1, 640, 640)).astype(np.float32)}
    evad = entry([ModelOutput("y", "regression"), ModelOutput("h_out", "state", state_input="h")],
                 (ModelInput(TensorSpec("x", (None, 512), "float32")),
                  ModelInput(TensorSpec("h", (None, 128), "float32"), state=True)))
    ovad = {"y": np.array([[0.2]], np.float32), "h_out": rng.standard_normal((1, 128)).astype(np.float32)}
    store = StateStore(max_entries=1024)
    senders = [f"mcu-{i}" for i in range(64)]
    k = [0]

    def state_step() -> object:
        s = senders[k[0] % len(senders)]
        k[0] += 1
        feeds = store.feeds(s, evad, {"x": None})
        store.update(s, evad, ovad)
        return feeds

    return [
        ("probabilities, 2 classes (mlp)", lambda: summarize(e2, o2)),
        ("probabilities, 10 classes (cnn)", lambda: summarize(e10, o10)),
        ("logits, 1000 classes, top 5", lambda: summarize(e1000, o1000)),
        ("regression, 1 value", lambda: summarize(ereg, oreg)),
        ("probabilities + tensor 2x2", lambda: summarize(etwo, otwo)),
        ("tensor 1x64x64 mask", lambda: summarize(emask, omask)),
        ("tensor 1x640x640 mask", lambda: summarize(emask, obig)),
        ("regression + state (VAD)", lambda: summarize(evad, ovad)),
        ("StateStore feeds+update", state_step),
    ]


def measure(fn: Callable[[], object], calls: int) -> Tuple[float, float]:
    for _ in range(min(200, calls)):
        fn()
    t = np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        fn()
        t[i] = clock() - t0
    return float(np.median(t) / 1e3), float(np.percentile(t, 99) / 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000, help="timed calls per case (default 20000)")
    args = ap.parse_args()
    rows: List[Dict[str, object]] = []
    print(f"{'case':<34} {'p50 us':>8} {'p99 us':>8}")
    print("-" * 52)
    for name, fn in cases():
        calls = args.calls if "640x640" not in name else max(200, args.calls // 50)
        p50, p99 = measure(fn, calls)
        rows.append({"case": name, "calls": calls, "median_us": round(p50, 2), "p99_us": round(p99, 2)})
        print(f"{name:<34} {p50:>8.2f} {p99:>8.2f}")
    small = [r for r in rows if not any(big in str(r["case"]) for big in ("640x640", "64x64", "1000 classes"))]
    worst = max(float(r["median_us"]) for r in small)  # type: ignore[arg-type]
    print(f"target: <= {TARGET_US} us median (classifiers <= 64 classes, regression, state, tiny tensors); "
          f"worst here {worst:.2f} us -> "
          f"{'MET' if worst <= TARGET_US else 'MISSED'}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                               "numpy": np.__version__, "rows": rows, "target_us": TARGET_US,
                               "worst_median_us": worst}, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
