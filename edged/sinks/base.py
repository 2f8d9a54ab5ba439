"""What every result sink shares: the Result, the filter, the config schema helper, the fan-out.

A *result* is one decided input: its decision record (exactly the dict written to
``decisions.jsonl``) and, when the model ran, its raw outputs. The dispatcher's writer
thread hands each written batch of results to :meth:`SinkSet.publish_many`, which gives
every sink the results its filter matches. A sink must never block that thread: it
sends without waiting (ZeroMQ ``NOBLOCK``, a non-blocking serial writer, paho's own
queue) and counts what it could not send as ``dropped``.

Life cycle of a sink: ``open()`` (bind/connect; the daemon calls it before READY=1;
an endpoint that cannot work raises :class:`~edged.errors.EdgedError` naming it),
``publish_many(results)`` any number of times from ONE thread, ``stats()`` and
``state()`` from any thread, ``close(timeout_s)`` once.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import fnmatch
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import numpy as np

from edged.errors import ConfigError

log = logging.getLogger("edged.sinks")

#: Minimum interval between two log lines about the same sink problem (s).
LOG_INTERVAL_S = 10.0


@dataclass
class Result:
    """One decided input as the sinks see it.

    Attributes:
        record: the decision record exactly as written to ``decisions.jsonl`` (``model``,
            ``seq``, ``sender``, ``source``, ``decision``, ``latency_us``, ``result`` (the
            summary), ``error`` ...). Sinks never modify it.
        outputs: the model's raw outputs for THIS input, output name -> array with the
            batch dimension removed; None for a rejected or failed input.
    """

    record: Dict[str, Any]
    outputs: Optional[Dict[str, np.ndarray]] = None


# --------------------------------------------------------------------------- filter


@dataclass(frozen=True)
class SinkFilter:
    """Which results a sink gets. Every non-empty list must match (an empty list matches all).

    Attributes:
        models: model names (exact).
        decisions: decisions to pass (``local``, ``offload``, ``fallback``, ``rejected`` ...).
        exclude_decisions: decisions to leave out (e.g. ``["rejected"]``).
        senders: ``fnmatch`` globs on the record's ``sender`` (``"dev-*"``); a record
            without a sender is matched as ``""``.
    """

    models: Tuple[str, ...] = ()
    decisions: Tuple[str, ...] = ()
    exclude_decisions: Tuple[str, ...] = ()
    senders: Tuple[str, ...] = ()

    @property
    def matches_all(self) -> bool:
        return not (self.models or self.decisions or self.exclude_decisions or self.senders)

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.models and record.get("model") not in self.models:
            return False
        decision = record.get("decision")
        if self.decisions and decision not in self.decisions:
            return False
        if self.exclude_decisions and decision in self.exclude_decisions:
            return False
        if self.senders:
            sender = record.get("sender") or ""
            if not any(fnmatch.fnmatchcase(str(sender), g) for g in self.senders):
                return False
        return True


# --------------------------------------------------------------------------- config schema


@dataclass(frozen=True)
class SinkConfig:
    """Keys every ``[[sinks]]`` table has. Subclasses add their own (with defaults).

    Field metadata understood by :func:`build_config`: ``choices`` (allowed values),
    ``min`` / ``max`` (inclusive bounds), ``secret`` (the value is never echoed in errors).
    """

    type: str = ""
    name: str = ""
    filter: SinkFilter = field(default_factory=SinkFilter)

    @classmethod
    def from_mapping(cls: Type[C], raw: Mapping[str, Any], where: str = "sinks[0]") -> C:
        """Build from one ``[[sinks]]`` table; :class:`ConfigError` lists every bad key at once,
        each as ``<where>.<key> = <value>: expected <what>``."""
        return build_config(cls, raw, where)

    def label(self) -> str:
        """``mqtt sink 'results'`` for messages."""
        return f"{self.type} sink {self.name or self.type!r}"


C = TypeVar("C", bound=SinkConfig)
D = TypeVar("D")

_TYPE_TEXT = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
              "Tuple[str, ...]": "a list of strings", "Optional[str]": "a string"}


def _coerce(tp: str, value: Any) -> Tuple[bool, Any]:
    if tp in ("str", "Optional[str]"):
        return isinstance(value, str), value
    if tp == "bool":
        return isinstance(value, bool), value
    if tp == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        return ok, float(value) if ok else value
    if tp == "Tuple[str, ...]":
        if isinstance(value, str):
            return False, value
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return ok, tuple(value) if ok else value
    return False, value  # pragma: no cover - a schema field of a type this helper does not know


def _show(value: Any, secret: bool = False) -> str:
    if secret:
        return "(hidden)"
    if isinstance(value, Mapping):
        return "a table"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unknown(where: str, key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(known))})"
    return f"{where}.{key}: unknown key{hint}"


def build_config(cls: Type[D], raw: Mapping[str, Any], where: str) -> D:
    """The frozen config ``cls`` from ``raw``: unknown keys, types, choices and bounds checked."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} = {_show(raw)}: expected a table")
    errors: List[str] = []
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: Dict[str, Any] = {}
    for key, value in raw.items():
        f = fields.get(key)
        if f is None:
            errors.append(_unknown(where, key, list(fields)))
            continue
        kp = f"{where}.{key}"
        if key == "filter":
            try:
                kwargs[key] = parse_filter(value, kp)
            except ConfigError as exc:
                errors.extend(str(exc).splitlines())
            continue
        tp = str(f.type)
        meta = f.metadata
        secret = bool(meta.get("secret"))
        ok, val = _coerce(tp, value)
        if not ok:
            errors.append(f"{kp} = {_show(value, secret)}: expected {_TYPE_TEXT.get(tp, tp)}")
            continue
        if "choices" in meta and val not in meta["choices"]:
            errors.append(f"{kp} = {_show(value, secret)}: expected one of "
                          + ", ".join(repr(c) for c in meta["choices"]))
            continue
        if "min" in meta and val < meta["min"]:
            errors.append(f"{kp} = {_show(value, secret)}: expected a value >= {meta['min']}")
            continue
        if "max" in meta and val > meta["max"]:
            errors.append(f"{kp} = {_show(value, secret)}: expected a value <= {meta['max']}")
            continue
        check = meta.get("check")
        if check is not None:
            problem = check(val)
            if problem:
                errors.append(f"{kp} = {_show(value, secret)}: expected {problem}")
                continue
        kwargs[key] = val
    if errors:
        raise ConfigError("\n".join(errors))
    cfg = cls(**kwargs)
    problems = getattr(cfg, "problems", None)
    if callable(problems):
        more = [f"{where}.{p}" for p in problems()]
        if more:
            raise ConfigError("\n".join(more))
    return cfg


def parse_filter(raw: Any, where: str) -> SinkFilter:
    """A :class:`SinkFilter` from a ``filter = {models = [...], ...}`` table."""
    return build_config(SinkFilter, raw, where)


# --------------------------------------------------------------------------- sinks


class RateLimitedLog:
    """One log line per key per :data:`LOG_INTERVAL_S`, saying how many were suppressed meanwhile."""

    def __init__(self, logger: logging.Logger = log, interval_s: float = LOG_INTERVAL_S) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, level: int, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            n = self._suppressed.pop(key, 0)
        self.logger.log(level, msg + (f" (+{n} more since last report)" if n else ""), *args, exc_info=exc_info)


class ResultSink(abc.ABC):
    """Where results go. Subclasses implement :meth:`open`, :meth:`publish_many` and :meth:`close`.

    Counters (``stats()``): ``published`` (handed to the transport), ``dropped`` (could not be
    sent without blocking: HWM, queue full, port busy, broker down), ``filtered`` (not for this
    sink: its filter, or no route such as a result from a non-serial source for a serial
    sink), ``errors`` (unexpected failures; each contained to its result). Subclasses add their
    own (``delivered``, ``queued`` ...).
    """

    #: the ``type`` name in ``[[sinks]]``
    type_name = ""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.name = config.name or config.type or self.type_name
        self.filter = config.filter
        self.published = 0
        self.dropped = 0
        self.filtered = 0
        self.errors = 0
        self._state: Optional[str] = None
        self._log = RateLimitedLog(logging.getLogger(f"edged.sinks.{self.type_name or 'sink'}"))

    def open(self) -> None:
        """Take the endpoint (bind, connect, open). Idempotent. Raises EdgedError naming it."""
        return None

    @abc.abstractmethod
    def publish_many(self, results: Sequence[Result]) -> None:
        """Send ``results`` (already filtered) without blocking; count what could not be sent."""

    def stats(self) -> Dict[str, int]:
        """Counters (ints only; what the sink is and where it points: :meth:`info`)."""
        return {"published": self.published, "dropped": self.dropped, "filtered": self.filtered,
                "errors": self.errors}

    def info(self) -> Dict[str, Any]:
        """What the sink is: ``{"sink": name, "type": ..., ...}`` (endpoint, broker, form ...)."""
        return {"sink": self.name, "type": self.type_name}

    def state(self) -> Optional[str]:
        """A short line for systemd ``STATUS=`` when the sink is not working normally, else None."""
        return self._state

    def close(self, timeout_s: float = 2.0) -> None:
        """Flush what can be flushed within ``timeout_s`` (s), then release the endpoint."""
        return None

    def count_error(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self._log(logging.ERROR, what, "sink %s: %s: %s: %s", self.name, what, type(exc).__name__,
                  str(exc)[:200], exc_info=True)


class SinkSet:
    """Fans results out to every sink whose filter matches; never raises.

    ``publish_many`` is meant for ONE thread (the dispatcher's writer thread).
    """

    def __init__(self, sinks: Sequence[ResultSink]) -> None:
        self.sinks: List[ResultSink] = list(sinks)
        self.failures = 0
        self._log = RateLimitedLog()

    def __len__(self) -> int:
        return len(self.sinks)

    def open(self) -> None:
        """Open every sink; on a failure close those already open and re-raise (start-up stops)."""
        opened: List[ResultSink] = []
        try:
            for s in self.sinks:
                s.open()
                opened.append(s)
        except BaseException:
            for s in opened:
                try:
                    s.close(0.0)
                except Exception:
                    pass
            raise

    def publish_many(self, results: Sequence[Result]) -> None:
        if not results:
            return
        for s in self.sinks:
            try:
                flt = s.filter
                if flt.matches_all:
                    mine: Sequence[Result] = results
                else:
                    mine = [r for r in results if flt.matches(r.record)]
                    s.filtered += len(results) - len(mine)
                    if not mine:
                        continue
                s.publish_many(mine)
            except Exception as exc:
                self.failures += 1
                s.errors += 1
                self._log(logging.ERROR, s.name, "sink %s failed on %d result(s): %s: %s", s.name, len(results),
                          type(exc).__name__, str(exc)[:200], exc_info=True)

    def publish(self, result: Result) -> None:
        self.publish_many([result])

    def stats(self) -> Dict[str, Dict[str, int]]:
        """sink name -> its counters (a failing ``stats()`` counts as ``{"errors": 1}`` and is logged)."""
        out: Dict[str, Dict[str, int]] = {}
        for s in self.sinks:
            try:
                out[s.name] = s.stats()
            except Exception as exc:
                self._log(logging.ERROR, f"stats:{s.name}", "sink %s: stats() failed: %s", s.name, exc)
                out[s.name] = {"errors": 1}
        return out

    def states(self) -> List[str]:
        """``sink <name>: <state>`` for every sink not working normally (for systemd STATUS=)."""
        lines = []
        for s in self.sinks:
            try:
                st = s.state()
            except Exception as exc:
                st = f"state() failed: {exc}"
            if st:
                lines.append(f"sink {s.name}: {st}")
        return lines

    def close(self, timeout_s: float = 2.0) -> None:
        """Close every sink, each within ``timeout_s``; never raises."""
        for s in self.sinks:
            try:
                s.close(timeout_s)
            except Exception as exc:
                self._log(logging.ERROR, f"close:{s.name}", "sink %s: close failed: %s", s.name, exc)


#: writer_for(source_name) -> a non-blocking ``write(data) -> bool`` for that source's port, or None
WriterFor = Callable[[str], Optional[Callable[[bytes], bool]]]


def header_of(record: Mapping[str, Any], keys: Sequence[str]) -> Dict[str, Any]:
    """The keys of ``record`` a result header carries (absent ones left out; None kept)."""
    return {k: record[k] for k in keys if k in record}


def output_items(outputs: Optional[Mapping[str, np.ndarray]]) -> List[Tuple[str, np.ndarray]]:
    """``(name, array)`` pairs, each array C-contiguous little-endian (the wire form)."""
    if not outputs:
        return []
    items = []
    for name, arr in outputs.items():
        a = arr if type(arr) is np.ndarray else np.asarray(arr)
        bo = a.dtype.byteorder
        if bo == ">" or (bo == "=" and not _LITTLE):
            a = a.astype(a.dtype.newbyteorder("<"))
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        items.append((name if type(name) is str else str(name), a))
    return items


def describe_outputs(items: Sequence[Tuple[str, np.ndarray]]) -> List[Dict[str, Any]]:
    """``[{"name", "dtype", "shape"}]`` of the wire arrays (dtype as a numpy name, e.g. ``float32``)."""
    names = _DTYPE_NAMES
    out = []
    for n, a in items:
        dt = a.dtype
        dn = names.get(dt)
        if dn is None:
            dn = names[dt] = dt.name  # numpy computes the name on each access: ~5 us
        out.append({"name": n, "dtype": dn, "shape": list(a.shape)})
    return out


_DTYPE_NAMES: Dict[Any, str] = {}


_LITTLE = np.little_endian
