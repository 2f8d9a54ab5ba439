"""LiteRT heads and tails: TFLite has no graph extraction, so ``models/build.py`` writes them.

For a model built from a Keras ``Sequential``, ``models/build.py`` splits the Keras model after
chosen layers and converts each part (``cuts/<cut>.head.tflite``, ``cuts/<cut>.tail.tflite``),
listed in the manifest under ``partition.litert_splits``::

    "partition": {"litert_splits": {"p1": {"head": "cuts/p1.head.tflite", "head_sha256": "...",
                                           "tail": "cuts/p1.tail.tflite", "tail_sha256": "...",
                                           "layout": "NHWC", "shape": [null, 16, 16, 8], "bytes": 8192}}}

A cut has the name of the same cut in the ONNX graph. Its intermediate tensor is NHWC here and
NCHW in the ONNX graph: :meth:`LitertSplit.head_for_onnx` transposes, so a LiteRT edge can send
its intermediate tensor to a fog that runs the ONNX tail (same weights; the two runtimes agree
to ~1e-6). Each pair is verified against ``model.tflite`` like the ONNX cuts.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from edged.errors import IntegrityError
from edged.models import ModelEntry, sha256_file
from edged.partition.graph import PartitionError

DEFAULT_TOLERANCE = 1e-5


def _backend(path: str, threads: int) -> Any:
    from edged.runtime.litert import LiteRTBackend

    b = LiteRTBackend()
    b.load(path, threads=threads)
    return b


class LitertSplit:
    """The LiteRT head and tail interpreters of every split a manifest lists, verified before use."""

    def __init__(self, entry: ModelEntry, threads: int = 1, verify: bool = True,
                 tolerance: float = DEFAULT_TOLERANCE, max_verify: Optional[int] = None) -> None:
        splits = (entry.manifest.get("partition") or {}).get("litert_splits") or {}
        if not isinstance(splits, dict) or not splits:
            raise PartitionError(f"model {entry.name!r} has no LiteRT heads and tails (manifest "
                                 "partition.litert_splits); models/build.py writes them for Keras models")
        if "litert" not in entry.artifacts:
            raise PartitionError(f"model {entry.name!r} has no litert artifact")
        self.entry = entry
        self.name = entry.name
        self.tolerance = tolerance
        self.specs: Dict[str, Dict[str, Any]] = {}
        self._heads: Dict[str, Any] = {}
        self._tails: Dict[str, Any] = {}
        for cut, spec in splits.items():
            for part in ("head", "tail"):
                path = entry.dir / str(spec[part])
                if not path.is_file():
                    raise IntegrityError(f"model {entry.name!r}: LiteRT {part} of cut {cut!r} ({path}) is missing")
                if sha256_file(path) != str(spec.get(f"{part}_sha256", "")).lower():
                    raise IntegrityError(f"model {entry.name!r}: refusing {path}: its sha256 differs from "
                                         f"partition.litert_splits.{cut}.{part}_sha256")
            self.specs[cut] = dict(spec)
            self._heads[cut] = _backend(str(entry.dir / spec["head"]), threads)
            self._tails[cut] = _backend(str(entry.dir / spec["tail"]), threads)
        self._full = _backend(str(entry.artifacts["litert"].path), threads)
        self.rejected: Dict[str, str] = {}
        self.deltas: Dict[str, float] = {}
        if verify:
            self.verify(max_verify)

    @property
    def cut_names(self) -> List[str]:
        return list(self._heads)

    def _batch(self, x: Any) -> np.ndarray:
        arr = np.asarray(x, dtype=np.dtype(self.entry.input.dtype))
        return arr[np.newaxis] if arr.ndim == len(self.entry.input.sample_shape) else np.ascontiguousarray(arr)

    def _get(self, table: Dict[str, Any], cut: str) -> Any:
        b = table.get(cut)
        if b is None:
            why = self.rejected.get(cut)
            raise PartitionError(f"model {self.name!r} has no usable LiteRT cut {cut!r}" + (f" ({why})" if why else "")
                                 + f"; usable: {', '.join(self.cut_names) or 'none'}")
        return b

    def head(self, cut: str, x: Any) -> np.ndarray:
        """The NHWC intermediate tensor (batch axis first) of ``x`` (canonical layout, sample or batch)."""
        return self._get(self._heads, cut).infer(self._batch(x))

    def head_for_onnx(self, cut: str, x: Any) -> np.ndarray:
        """:meth:`head`, in the ONNX graph's layout (NHWC -> NCHW for a 4-D tensor): for an ONNX fog tail."""
        t = self.head(cut, x)
        return np.ascontiguousarray(t.transpose(0, 3, 1, 2)) if t.ndim == 4 else t

    def tail(self, cut: str, t: Any) -> np.ndarray:
        """The first output of the tail on an NHWC intermediate tensor (batch axis first, or one sample)."""
        arr = np.asarray(t, dtype=np.float32)
        shape = self.specs[cut].get("shape") or []
        if arr.ndim == len(shape) - 1:
            arr = arr[np.newaxis]
        return self._get(self._tails, cut).infer(np.ascontiguousarray(arr))

    def verify(self, max_verify: Optional[int] = None) -> Dict[str, float]:
        try:
            x, _ = self.entry.load_validation()
        except Exception:
            x = self.entry.make_feeds(seed=0, batch=64)[self.entry.input.name]
        if max_verify is not None:
            x = x[:max_verify]
        want = self._full.infer(x)
        for cut in list(self._heads):
            try:
                got = self._tails[cut].infer(self._heads[cut].infer(x))
                delta = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            except Exception as exc:
                self.rejected[cut] = f"head+tail failed: {type(exc).__name__}: {exc}"
                del self._heads[cut], self._tails[cut]
                continue
            self.deltas[cut] = delta
            if not delta <= self.tolerance:
                self.rejected[cut] = f"head+tail differ from model.tflite by {delta:.3g} (> {self.tolerance:g})"
                del self._heads[cut], self._tails[cut]
        return dict(self.deltas)
