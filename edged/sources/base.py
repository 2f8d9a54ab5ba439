"""What every source shares: a name, stats, a stoppable ``run`` loop and ``start``."""

from __future__ import annotations

import abc
import logging
import threading
from typing import Callable, Dict, Mapping

from edged.runtime.base import TensorSpec
from edged.sources.sample import Sample
from edged.sources.stats import SourceStats

log = logging.getLogger("edged.sources")

#: Downstream callback: returns False if the sample was not accepted (queue full/closed).
Sink = Callable[[Sample], bool]


class Source(abc.ABC):
    """A producer of validated :class:`Sample` objects.

    ``run(sink, stop)`` loops until ``stop`` is set and never raises: bad
    input is counted in ``stats.rejected``; unexpected errors are logged and
    counted in ``stats.errors``.
    """

    def __init__(self, specs: Mapping[str, TensorSpec], name: str) -> None:
        self.specs: Dict[str, TensorSpec] = dict(specs)
        self.name = name
        self.stats = SourceStats(name)
        self._local_seq: Dict[str, int] = {}

    @abc.abstractmethod
    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Deliver samples to ``sink`` until ``stop`` is set."""

    def start(self, sink: Sink, stop: threading.Event) -> threading.Thread:
        """Run in a daemon thread named after the source; returns the started thread."""
        thread = threading.Thread(target=self._run_guarded, args=(sink, stop), name=f"source:{self.name}", daemon=True)
        thread.start()
        return thread

    def _run_guarded(self, sink: Sink, stop: threading.Event) -> None:
        try:
            self.run(sink, stop)
        except Exception:  # run() must not raise; this is the last line of defence
            self.stats.count_error()
            log.exception("source %s stopped by an unexpected error", self.name)

    def next_local_seq(self, model: str) -> int:
        """Source-assigned sequence number for inputs that carry none (per model, from 0)."""
        seq = self._local_seq.get(model, 0)
        self._local_seq[model] = seq + 1
        return seq

    def deliver(self, sample: Sample, sink: Sink) -> bool:
        """Hand a validated sample to ``sink``; count it as accepted or refused downstream."""
        self.stats.count_accepted()
        ok = sink(sample)
        if not ok:
            self.stats.count_downstream_refusal()
        return bool(ok)
