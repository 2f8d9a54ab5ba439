"""Replay source: inputs from a ``.npz`` (array ``x``) or ``.csv`` file, in-process.

Used by benchmarks, tests and ``make run`` when no sensor is attached. Each
row goes through the same validation as wire inputs.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from edged.errors import InputError
from edged.sources.base import Sink, Source
from edged.sources.framing import FrameError
from edged.sources.validate import sample_from_values

log = logging.getLogger("edged.sources.replay")

PathOrArray = Union[str, Path, np.ndarray]


def load_inputs(path_or_array: PathOrArray) -> np.ndarray:
    """Rows to replay: ``x`` from a ``.npz``, a ``.npy`` array, or a numeric ``.csv`` (one input per row).

    Raises :class:`InputError` naming the file when it cannot be read.
    """
    if isinstance(path_or_array, np.ndarray):
        return path_or_array
    path = Path(path_or_array)
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                if "x" not in data:
                    raise InputError(f"{path}: no array 'x' (has {sorted(data.files)})")
                return np.asarray(data["x"])
        if path.suffix == ".npy":
            return np.asarray(np.load(path))
        if path.suffix in (".csv", ".txt"):
            rows = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, comments="#")
            return rows
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read inputs: {exc}") from None
    raise InputError(f"{path}: unsupported input file (use .npz with array 'x', .npy or .csv)")


class ReplaySource(Source):
    """Replays rows of a dataset as samples of one model.

    Args:
        specs: model name -> ``ModelEntry``, ``LoadedModel`` or ``TensorSpec`` (see :class:`Source`).
        model: model every row is for (one with a single data input: a row is one input).
        path_or_arrays: ``.npz``/``.npy``/``.csv`` path or an array (rows = inputs).
        rate_hz: inputs per second (None or 0 = as fast as the sink takes them).
        count: stop after this many inputs (None = one pass, or forever with ``loop``).
        loop: start again at the first row after the last.
        name: source name.
    """

    def __init__(
        self,
        specs: Mapping[str, Any],
        model: str,
        path_or_arrays: PathOrArray,
        rate_hz: Optional[float] = None,
        count: Optional[int] = None,
        loop: bool = False,
        name: str = "replay",
    ) -> None:
        super().__init__(specs, name)
        if model not in self.specs:
            raise InputError(f"replay: unknown model {model!r}; known: {sorted(self.specs)}")
        if not self.contracts[model].v1:
            c = self.contracts[model]
            raise InputError(f"replay: model {model!r} takes data inputs {', '.join(map(repr, c.data_names))}; "
                             "replay feeds one input per row (send several with edged sim, protocol v2)")
        self.model = model
        self.rows = load_inputs(path_or_arrays)
        if len(self.rows) == 0:
            raise InputError(f"replay: no inputs to replay for model {model!r}")
        self.rate_hz = rate_hz or None
        self.count = count
        self.loop = loop
        self.done = threading.Event()

    def run(self, sink: Sink, stop: threading.Event) -> None:
        period = 1.0 / self.rate_hz if self.rate_hz else 0.0
        next_t = time.monotonic()
        sent = 0
        i = 0
        n_rows = len(self.rows)
        try:
            while not stop.is_set():
                if self.count is not None and sent >= self.count:
                    break
                if i >= n_rows:
                    if not (self.loop or self.count is not None):
                        break
                    i = 0
                if period:
                    delay = next_t - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                    next_t += period
                row = self.rows[i]
                i += 1
                sent += 1
                try:
                    sample = sample_from_values(self.specs, self.model, row, self.name, -1)
                except FrameError as err:
                    self.reject(err.reason, f"row {i - 1}: {err.detail}", model=self.model)
                    continue
                except Exception as exc:  # one bad row never stops the replay
                    self.reject_unexpected(exc, model=self.model)
                    continue
                sample.seq = self.next_local_seq(self.model)
                self.deliver(sample, sink)
        finally:
            self.done.set()
