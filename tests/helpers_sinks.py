"""Results as the dispatcher makes them, for the sink tests and the bench: real model runs, real summaries."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import numpy as np

from edged.results import summarize
from edged.sinks import Result


def record(model: str, seq: int, decision: str = "local", sender: Optional[str] = None, source: str = "zmq",
           result: Any = None, error: Optional[str] = None, reason: str = "local policy") -> Dict[str, Any]:
    """A decision record with the keys the dispatcher writes (the ones sinks read, plus a few more)."""
    return {"ts": round(time.time(), 6), "seq": seq, "source": source, "model": model, "policy": "local",
            "decision": decision, "reason": reason, "wcet_us": 40.0, "latency_us": 123.4, "exec_us": 31.2,
            "result": result, "error": error, "fog_error": None, "batch": 1, "sender": sender, "sender_ts": None}


def model_results(catalogue, n: int, model: str = "mlp", senders: int = 4, source: str = "zmq",
                  batch: int = 32) -> List[Result]:
    """``n`` results of the shipped ``model`` run by onnxruntime on its validation inputs (cycled)."""
    entry = catalogue.get(model)
    x, _ = entry.load_validation()
    out: List[Result] = []
    with catalogue.load(model, "onnx") as m:
        for start in range(0, n, batch):
            idx = [(start + k) % len(x) for k in range(min(batch, n - start))]
            outs = m.run(x[idx])
            for k in range(len(idx)):
                row = {name: v[k] for name, v in outs.items()}
                seq = start + k
                rec = record(model, seq, sender=f"dev-{seq % senders}", source=source,
                             result=summarize(entry, {name: v[None] for name, v in row.items()}))
                out.append(Result(rec, row))
    return out


def two_output_result(seq: int, sender: str = "cam-1") -> Result:
    """A result of a made-up detector with two tensor outputs of different dtypes and shapes."""
    rng = np.random.default_rng(seq)
    boxes = rng.standard_normal((3, 4)).astype(np.float32)
    ids = rng.integers(0, 100, size=5).astype(np.int64)
    res = {"boxes": {"shape": [3, 4], "dtype": "float32", "min": float(boxes.min()), "max": float(boxes.max()),
                     "mean": float(boxes.mean())},
           "ids": {"shape": [5], "dtype": "int64", "min": 0, "max": 99, "mean": 1.0}}
    return Result(record("det", seq, sender=sender, result=res), {"boxes": boxes, "ids": ids})


def rejected_result(seq: int, model: str = "mlp", sender: Optional[str] = "dev-0", source: str = "zmq") -> Result:
    return Result(record(model, seq, decision="rejected", sender=sender, source=source, reason="non_finite",
                         error="model 'mlp' input has 1 NaN/inf value(s)"), None)
