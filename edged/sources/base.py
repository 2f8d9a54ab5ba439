"""What every source shares: a name, stats, open/start/stop, numbering and rejection reporting."""

from __future__ import annotations

import abc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence

import numpy as np

from edged.runtime.base import TensorSpec
from edged.sources.framing import FrameError
from edged.sources.sample import Sample
from edged.sources.stats import SourceStats
from edged.sources.validate import (
    HeaderInfo,
    ModelContract,
    check_header,
    describe_rejected,
    inputs_from_body,
    inputs_from_frames,
    inputs_from_json,
    make_sample,
    model_contract,
    v1_in_other_dtype,
)

log = logging.getLogger("edged.sources")

#: Downstream callback: returns False if the sample was not accepted (queue full/closed).
Sink = Callable[[Sample], bool]


class BatchSink(Protocol):
    """A :data:`Sink` that can also take several samples received back to back in one call (one hand-off,
    one decision round and, for same-model neighbours, one batched inference instead of one per sample).
    ``many`` returns how many of ``samples`` it accepted; like ``__call__`` it never drops one silently."""

    def __call__(self, sample: Sample) -> bool: ...

    def many(self, samples: Sequence[Sample]) -> int: ...


def batch_sink(sink: Sink) -> Optional[Callable[[Sequence[Sample]], int]]:
    """``sink.many`` when ``sink`` is a :class:`BatchSink`, else None (deliver one by one)."""
    many = getattr(sink, "many", None)
    return many if callable(many) else None

#: Reason under which an exception nobody expected, raised while handling one message, is counted.
INTERNAL_ERROR = "internal_error"
#: Minimum interval between two tracebacks logged for unexpected per-message errors (s).
_TRACEBACK_INTERVAL_S = 10.0


@dataclass
class Rejection:
    """One refused input whose header named a catalogue model: enough for a ``rejected`` record.

    Attributes:
        source: name of the source it arrived on.
        model: the catalogue model the header named.
        reason: the counter key (``non_finite``, ``wrong_size``, ``bad_sender`` ...; docs/protocol.md §5).
        detail: human explanation (bounded; never echoes a huge value).
        sender: the header's ``sender`` if it was a valid one, else None.
        seq: the header's ``seq`` if it was a valid one, else None (sources number only valid inputs).
        t_arrival: ``time.monotonic()`` when the message was received (s).
        ts_arrival: wall-clock unix time when it was received (s).
        sender_ts: the header's ``ts`` if it was a finite number, else None.
        meta: the header's metadata keys that are within the bounds (others left out).
    """

    source: str
    model: str
    reason: str
    detail: str
    sender: Optional[str]
    seq: Optional[int]
    t_arrival: float
    ts_arrival: float
    sender_ts: Optional[float]
    meta: Dict[str, Any] = field(default_factory=dict)


class Source(abc.ABC):
    """A producer of validated :class:`Sample` objects.

    Life cycle: ``open()`` (take the endpoint; the daemon calls it before READY=1 and a
    failure that must stop start-up raises :class:`~edged.errors.SourceError`), then
    ``start(sink, stop)`` (runs ``run`` in a thread; calls ``open()`` itself if needed),
    then ``stop.set()``. ``run`` never raises: bad input is counted in ``stats.rejected``
    (and reported to :attr:`on_rejected` when attributable); unexpected errors are
    logged and counted in ``stats.errors``.

    Args:
        specs: model name -> the model's contract: a catalogue ``ModelEntry`` (every input;
            what the daemon passes), a ``LoadedModel`` (the same, plus a quantised input's
            integer dtype if it has ``accepted_dtypes(input)``), or a bare ``TensorSpec`` of
            the one input (v1 form, kept for tests and old callers).
        name: source name in stats and logs.

    Attributes:
        contracts: model name -> :class:`~edged.sources.validate.ModelContract` (every input).
        specs: model name -> the primary input's spec (batch dimension first), what v1 checks use.
        on_rejected: called (from the source's thread) with a :class:`Rejection` for every
            refused input whose header named a model in ``specs``; an exception it raises
            is contained and counted in ``stats.errors``.
    """

    def __init__(self, specs: Mapping[str, Any], name: str) -> None:
        self.contracts: Dict[str, ModelContract] = {str(n): model_contract(str(n), m) for n, m in specs.items()}
        self.specs: Dict[str, TensorSpec] = {n: c.spec for n, c in self.contracts.items()}
        self.name = name
        self.stats = SourceStats(name)
        self.on_rejected: Optional[Callable[[Rejection], None]] = None
        self._local_seq: Dict[str, int] = {}
        self._thread: Optional[threading.Thread] = None
        self._last_traceback = -_TRACEBACK_INTERVAL_S * 2

    # ------------------------------------------------------------------ life cycle

    def open(self) -> None:
        """Take the transport endpoint now (bind, connect, open the port). Idempotent.

        Raises :class:`~edged.errors.SourceError` when the source cannot work at all (a
        ZeroMQ bind that fails). The default has nothing to open.
        """
        return None

    def state(self) -> Optional[str]:
        """A short line for systemd ``STATUS=`` when the source is not working normally, else None."""
        return None

    def close(self) -> None:
        """Release an endpoint taken by :meth:`open` when ``start`` will not be called (failed start-up)."""
        return None

    @abc.abstractmethod
    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Deliver samples to ``sink`` until ``stop`` is set."""

    def start(self, sink: Sink, stop: threading.Event) -> threading.Thread:
        """``open()`` if not done yet (may raise SourceError), then run in a daemon thread named after the source."""
        self.open()
        thread = threading.Thread(target=self._run_guarded, args=(sink, stop), name=f"source:{self.name}", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def _run_guarded(self, sink: Sink, stop: threading.Event) -> None:
        try:
            self.run(sink, stop)
        except Exception:  # run() must not raise; this is the last line of defence
            self.stats.count_error()
            log.exception("source %s stopped by an unexpected error", self.name)

    # ------------------------------------------------------------------ samples

    def next_local_seq(self, model: str) -> int:
        """Source-assigned sequence number for inputs that carry none (per model, from 0)."""
        seq = self._local_seq.get(model, 0)
        self._local_seq[model] = seq + 1
        return seq

    def make_sample(self, info: HeaderInfo, arr: np.ndarray, t_arrival: Optional[float],
                    feeds: Optional[Dict[str, np.ndarray]] = None) -> Sample:
        """The Sample of a fully validated input: numbered (the sender's ``seq``, tracked for gaps,
        or the source's own counter), so only valid inputs touch the sequence state."""
        seq = info.seq
        if seq is None:
            seq = self.next_local_seq(info.model)
        else:
            self.stats.track_seq((info.sender or "", info.model), seq)
        return make_sample(info, seq, arr, self.name, t_arrival, feeds)

    # ------------------------------------------------------------------ message forms (v1 and v2)

    def sample_from_frames(self, header: Dict[str, Any], payloads: Sequence[bytes],
                           t_arrival: Optional[float]) -> Sample:
        """A parsed header and its payload frames (ZeroMQ): v1 one payload, v2 one per ``tensors`` entry.

        Raises :class:`FrameError` (carrying ``header`` for attribution) on any refusal.
        """
        try:
            header = v1_in_other_dtype(self.contracts, header)
            info = check_header(self.specs, header)
            arr, feeds = inputs_from_frames(self.contracts[info.model], info, header, payloads)
        except FrameError as err:
            if err.header is None:
                err.header = header
            raise
        return self.make_sample(info, arr, t_arrival, feeds)

    def sample_from_body(self, header: Dict[str, Any], body: bytes, t_arrival: Optional[float]) -> Sample:
        """A parsed header and its payload bytes (COBS frame, MQTT binary): v1 one array, v2 the
        ``tensors`` back to back. Raises :class:`FrameError` (carrying ``header``)."""
        try:
            header = v1_in_other_dtype(self.contracts, header)
            info = check_header(self.specs, header)
            arr, feeds = inputs_from_body(self.contracts[info.model], info, header, body)
        except FrameError as err:
            if err.header is None:
                err.header = header
            raise
        return self.make_sample(info, arr, t_arrival, feeds)

    def sample_from_json(self, msg: Any, t_arrival: Optional[float]) -> Sample:
        """A parsed one-frame JSON message: an object with ``model`` and ``data`` (one input) or ``inputs``
        (input name -> values). Raises :class:`FrameError` (carrying the message as header)."""
        if not isinstance(msg, dict) or ("data" not in msg and "inputs" not in msg):
            raise FrameError("bad_header", "a JSON message must be an object with 'model' and 'data' "
                                           "(one input) or 'inputs' (input name -> values)")
        try:
            info = check_header(self.specs, msg)
            arr, feeds = inputs_from_json(self.contracts[info.model], info, msg)
        except FrameError as err:
            if err.header is None:
                err.header = msg
            raise
        return self.make_sample(info, arr, t_arrival, feeds)

    def deliver_many(self, samples: List[Sample], sink: Sink,
                     many: Optional[Callable[[Sequence[Sample]], int]]) -> None:
        """Hand validated samples received back to back to ``sink`` (in one call when it is a
        :class:`BatchSink`), count them as accepted or refused downstream, and clear ``samples``.
        Never raises: a sink failure is counted and logged, like :meth:`handle_message`'s."""
        if not samples:
            return
        try:
            if many is None or len(samples) == 1:
                for sample in samples:
                    self.deliver(sample, sink)
                return
            self.stats.count_accepted(len(samples))
            refused = len(samples) - many(samples)
            for _ in range(refused):
                self.stats.count_downstream_refusal()
        except Exception as exc:
            self.stats.count_error()
            self._log_traceback(f"sink failed for {len(samples)} sample(s) ({type(exc).__name__})", exc)
        finally:
            samples.clear()

    def deliver(self, sample: Sample, sink: Sink) -> bool:
        """Hand a validated sample to ``sink``; count it as accepted or refused downstream."""
        self.stats.count_accepted()
        ok = sink(sample)
        if not ok:
            self.stats.count_downstream_refusal()
        return bool(ok)

    # ------------------------------------------------------------------ rejections

    def reject(self, reason: str, detail: str, header: Optional[Mapping[str, Any]] = None,
               model: Optional[str] = None, t_arrival: Optional[float] = None, garbage_bytes: int = 0) -> None:
        """Count one refused input under ``reason``; if its header (or ``model``, for framings without
        a header) names a catalogue model, tell :attr:`on_rejected`. Never raises."""
        self.stats.count_rejected(reason, detail, garbage_bytes=garbage_bytes)
        try:
            about = describe_rejected(self.specs, header)
            if about["model"] is None and isinstance(model, str) and model in self.specs:
                about["model"] = model
            model_name = about["model"]
            callback = self.on_rejected
            if model_name is None or callback is None:
                self.stats.count_unattributed(reason)  # garbage with no record: it lives in the counters only
                if model_name is None:
                    return
            if about["seq"] is not None:
                self.stats.note_rejected_seq((about["sender"] or "", model_name), about["seq"])
            if callback is None:
                return
            callback(Rejection(
                source=self.name, model=model_name, reason=reason, detail=detail, sender=about["sender"],
                seq=about["seq"], t_arrival=time.monotonic() if t_arrival is None else t_arrival,
                ts_arrival=time.time(), sender_ts=about["sender_ts"], meta=about["meta"],
            ))
        except Exception:
            self.stats.count_error()
            self.stats.count_unattributed(reason)  # its record was not written
            self._log_traceback("on_rejected callback failed")

    def reject_error(self, err: FrameError, t_arrival: Optional[float] = None, model: Optional[str] = None,
                     garbage_bytes: int = 0) -> None:
        """:meth:`reject` for a :class:`FrameError` (its header, if parsing got that far, attributes it)."""
        self.reject(err.reason, err.detail, err.header, model=model, t_arrival=t_arrival,
                    garbage_bytes=garbage_bytes)

    def reject_unexpected(self, exc: BaseException, header: Optional[Mapping[str, Any]] = None,
                          model: Optional[str] = None, t_arrival: Optional[float] = None) -> None:
        """An exception nobody expected while handling ONE message: contained to it, counted as
        ``internal_error`` (and in ``stats.errors``), traceback logged at most every 10 s."""
        self.stats.count_error()
        self._log_traceback(f"unexpected error handling one message ({type(exc).__name__})", exc)
        self.reject(INTERNAL_ERROR, f"{type(exc).__name__}: {str(exc)[:200]}", header, model=model,
                    t_arrival=t_arrival)

    def _log_traceback(self, what: str, exc: Optional[BaseException] = None) -> None:
        now = time.monotonic()
        if now - self._last_traceback < _TRACEBACK_INTERVAL_S:
            return
        self._last_traceback = now
        log.error("source %s: %s; the message is counted and the source goes on", self.name, what,
                  exc_info=exc if exc is not None else True)
