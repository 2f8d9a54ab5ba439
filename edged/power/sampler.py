"""The power sampler: a background thread that reads a :class:`PowerSource` at a fixed rate.

Each sample becomes one JSON-ready record **per rail** (flat lines are easy to tail, grep and load
into a dataframe); the rails of one sample share ``seq``, ``ts`` and ``t_mono``::

    {"ts": 1718000000.123, "t_mono": 5021.337, "seq": 42, "source": "ina219", "rail": "ina219",
     "volts": 5.08, "amps": 0.61, "watts": 3.1, "total": true, "temp_c": 51.2, "throttled": "0x0"}

``total`` is true on the rail that measures the whole board (summing rails would double-count).
Temperature and throttle flags come from the optional :class:`ThermalReader` when the source has none.

A failing sensor is reported once (warning), retried with exponential backoff (0.5 s → 30 s, closing
and reopening the source) and logged again when it comes back; nothing escapes the thread.
A ring buffer of (t_mono, total W) feeds :meth:`PowerSampler.energy_mj`.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from edged.errors import ConfigError, MissingDependencyError
from edged.power.base import PowerReading, PowerSource
from edged.power.battery import BatteryReader
from edged.power.thermal import ThermalReader

log = logging.getLogger(__name__)

Record = Dict[str, Any]
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


def reading_to_records(reading: PowerReading, seq: int) -> List[Record]:
    """One JSON-ready dict per rail of ``reading`` (see the module docstring for the fields)."""
    return [
        {
            "ts": round(reading.ts, 6),
            "t_mono": round(reading.t_mono, 6),
            "seq": seq,
            "source": reading.source,
            "rail": rail.rail,
            "volts": _round(rail.volts),
            "amps": _round(rail.amps),
            "watts": _round(rail.watts),
            "total": rail.is_total,
            "temp_c": _round(reading.temp_c, 2),
            "throttled": reading.throttled,
        }
        for rail in reading.rails
    ]


def _round(value: Optional[float], digits: int = 6) -> Optional[float]:
    return None if value is None else round(value, digits)


def integrate_mj(points: List[Tuple[float, float]], t0: float, t1: float,
                 hold_s: float, max_gap_s: float) -> Optional[float]:
    """∫ P dt over [t0, t1] in mJ from (t_mono s, W) points sorted by time, by the trapezoid rule.

    P is linear between samples; beyond the first/last sample it is held for up to ``hold_s``.
    None if the window is not covered (no sample within ``hold_s`` of an edge, or a gap between
    samples longer than ``max_gap_s`` inside the window). A zero-length window integrates to 0.
    """
    if not points or t1 < t0:
        return None
    times = [p[0] for p in points]
    if times[0] - hold_s > t0 or times[-1] + hold_s < t1:
        return None

    def power_at(t: float) -> float:
        i = bisect.bisect_right(times, t)
        if i == 0:
            return points[0][1]
        if i == len(points):
            return points[-1][1]
        (ta, pa), (tb, pb) = points[i - 1], points[i]
        return pa if tb == ta else pa + (pb - pa) * (t - ta) / (tb - ta)

    lo = bisect.bisect_right(times, t0)
    hi = bisect.bisect_left(times, t1)
    knots = [(t0, power_at(t0))] + points[lo:hi] + [(t1, power_at(t1))]
    # gap check covers the samples bracketing the window too
    bracket = points[max(lo - 1, 0):min(hi + 1, len(points))]
    for (ta, _), (tb, _) in zip(bracket, bracket[1:]):
        if tb - ta > max_gap_s and tb > t0 and ta < t1:
            return None
    joules = 0.0
    for (ta, pa), (tb, pb) in zip(knots, knots[1:]):
        joules += (tb - ta) * (pa + pb) / 2.0
    return joules * 1000.0


class PowerSampler:
    """Samples ``source`` at ``rate_hz`` (bounded by ``source.min_interval_s``) on a daemon thread.

    ``sink(record)`` receives one dict per rail per sample (see :func:`reading_to_records`);
    ``buffer_s`` is how much (t_mono, total W) history :meth:`energy_mj` can integrate over;
    ``thermal`` adds temp_c/throttled when the source reports none; listeners added with
    :meth:`add_listener` get every :class:`PowerReading` (e.g. :meth:`PowerModel.observe`).
    With the ``none`` source nothing runs, nothing is written and :meth:`energy_mj` returns None.
    """

    def __init__(self, source: PowerSource, rate_hz: float = 10.0, sink: Optional[Callable[[Record], None]] = None,
                 buffer_s: float = 120.0, thermal: Optional[ThermalReader] = None,
                 battery: Optional[BatteryReader] = None) -> None:
        if rate_hz <= 0:
            raise ConfigError(f"power sample rate {rate_hz!r} Hz: must be > 0")
        if buffer_s <= 0:
            raise ConfigError(f"power buffer_s {buffer_s!r}: must be > 0 s")
        self.source = source
        self.requested_rate_hz = float(rate_hz)
        self.interval_s = max(1.0 / rate_hz, source.min_interval_s)
        if self.interval_s > 1.0 / rate_hz:
            log.info("power: %s cannot be sampled at %.3g Hz; using %.3g Hz (its minimum interval is %.3g s)",
                     source.name, rate_hz, 1.0 / self.interval_s, source.min_interval_s)
        self.sink = sink
        self.buffer_s = float(buffer_s)
        self.thermal = thermal
        self.battery = battery if battery is not None and battery.available else None
        self._listeners: List[Callable[[PowerReading], None]] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._buffer: Deque[Tuple[float, float]] = collections.deque(
            maxlen=int(buffer_s / self.interval_s * 1.5) + 16)
        self._opened = False
        self._seq = 0
        self._records = 0
        self._failures = 0
        self._failure_episodes = 0
        self._consecutive = 0
        self._reopens = 0
        self._sink_errors = 0
        self._listener_errors = 0
        self._last_error: Optional[str] = None
        self._failing_since: Optional[float] = None
        self._started_mono: Optional[float] = None
        self._thread_cpu_s = 0.0

    # -- lifecycle ----------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[PowerReading], None]) -> None:
        """Call ``listener(reading)`` on the sampler thread for every successful reading (must be quick)."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Open the source and start the thread. Returns at once.

        :class:`MissingDependencyError` and :class:`ConfigError` from ``open()`` are raised here (user
        errors); any other failure is reported and retried in the background.
        """
        if self.source.is_null or self._thread is not None:
            return
        self._started_mono = time.monotonic()
        try:
            self.source.open()
            self._opened = True
            log.info("power: sampling %s every %.3g s", self.source.describe(), self.interval_s)
        except (MissingDependencyError, ConfigError):
            raise
        except Exception as exc:
            self._on_failure(exc)
        self._thread = threading.Thread(target=self._run, name="edged-power", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (it finishes the read in progress, then closes the source)."""
        self._stop.set()

    def join(self, timeout: Optional[float] = 5.0) -> bool:
        """Wait up to ``timeout`` s for the thread; True when it has ended (or never ran)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> bool:
        """stop() + join(timeout)."""
        self.stop()
        return self.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        next_t = time.monotonic()
        backoff = BACKOFF_START_S
        try:
            while not self._stop.is_set():
                if not self._opened:
                    if self._try_reopen():
                        backoff = BACKOFF_START_S
                    else:
                        backoff = self._wait_backoff(backoff)
                        continue
                try:
                    reading = self.source.read()
                except Exception as exc:
                    self._on_failure(exc)
                    self._close_source()
                    backoff = self._wait_backoff(backoff)
                    next_t = time.monotonic()
                    continue
                self._on_success()
                self.ingest(reading)
                self._thread_cpu_s = time.thread_time()
                next_t += self.interval_s
                now = time.monotonic()
                if next_t < now:  # fell behind (slow read, suspended VM): skip, do not burst
                    next_t = now
                self._stop.wait(next_t - now)
        except BaseException as exc:  # pragma: no cover - last resort: the daemon must never die from power
            log.exception("power sampler stopped by an unexpected error: %s", exc)
        finally:
            self._close_source()

    def _wait_backoff(self, backoff: float) -> float:
        self._stop.wait(backoff)
        return min(backoff * 2.0, BACKOFF_MAX_S)

    def _try_reopen(self) -> bool:
        self._reopens += 1
        try:
            self.source.open()
        except Exception as exc:
            self._on_failure(exc)
            return False
        self._opened = True
        return True

    def _close_source(self) -> None:
        if self._opened:
            self._opened = False
            try:
                self.source.close()
            except Exception as exc:
                log.debug("power: closing %s: %s", self.source.name, exc)

    def _on_failure(self, exc: BaseException) -> None:
        self._failures += 1
        self._consecutive += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._consecutive == 1:
            self._failure_episodes += 1
            self._failing_since = time.monotonic()
            log.warning("power: %s failed (%s); retrying with backoff %.1f s .. %.0f s, logging continues",
                        self.source.name, self._last_error, BACKOFF_START_S, BACKOFF_MAX_S)
        else:
            log.debug("power: %s still failing (%d): %s", self.source.name, self._consecutive, self._last_error)

    def _on_success(self) -> None:
        if self._consecutive:
            down = time.monotonic() - (self._failing_since or time.monotonic())
            log.warning("power: %s is back after %d failed attempts (%.1f s)",
                        self.source.name, self._consecutive, down)
            self._consecutive = 0
            self._failing_since = None

    # -- per reading --------------------------------------------------------------------------
    def ingest(self, reading: PowerReading) -> None:
        """Handle one reading: add thermal data, buffer its total, notify listeners, emit records.

        Called by the thread; tests and replays may call it directly with synthetic readings.
        """
        if self.thermal is not None and (reading.temp_c is None or reading.throttled is None):
            reading = self._with_thermal(reading)
        with self._lock:
            self._seq += 1
            seq = self._seq
            if reading.total_w is not None:
                self._buffer.append((reading.t_mono, reading.total_w))
                horizon = reading.t_mono - self.buffer_s
                while self._buffer and self._buffer[0][0] < horizon:
                    self._buffer.popleft()
        for listener in self._listeners:
            try:
                listener(reading)
            except Exception as exc:
                self._listener_errors += 1
                if self._listener_errors == 1:
                    log.warning("power: a reading listener failed: %s", exc)
        if self.sink is None:
            return
        records = reading_to_records(reading, seq)
        if self.battery is not None:  # one extra rail-shaped record per battery (rate-limited reads)
            records += self.battery.records(reading.ts, reading.t_mono, seq)
        for record in records:
            try:
                self.sink(record)
                self._records += 1
            except Exception as exc:
                self._sink_errors += 1
                if self._sink_errors == 1:
                    log.warning("power: writing a power record failed (%s); further failures are counted", exc)

    def _with_thermal(self, reading: PowerReading) -> PowerReading:
        assert self.thermal is not None
        temp = reading.temp_c
        throttled = reading.throttled
        try:
            if temp is None:
                temp = self.thermal.max_temp_c()
            if throttled is None:
                throttled = self.thermal.throttled()
        except Exception as exc:  # thermal is best effort
            log.debug("power: thermal read failed: %s", exc)
        return PowerReading(ts=reading.ts, t_mono=reading.t_mono, source=reading.source, rails=reading.rails,
                            total_w=reading.total_w, temp_c=temp, throttled=throttled)

    # -- queries ------------------------------------------------------------------------------
    def energy_mj(self, t0_mono: float, t1_mono: float) -> Optional[float]:
        """Energy in mJ drawn by the board between two ``time.monotonic()`` instants.

        Trapezoid integral of the measured total power, interpolated at the window edges and held
        up to two sample intervals past the newest sample (so a window that ended a moment ago is
        covered). None with the ``none`` source, without samples covering the window, or across a
        sensor outage.
        """
        if self.source.is_null:
            return None
        with self._lock:
            lo = bisect.bisect_left(self._buffer, (t0_mono - 4 * self.interval_s,))
            points = [self._buffer[i] for i in range(lo, len(self._buffer))]
        hold = 2.0 * self.interval_s + 0.01
        return integrate_mj(points, t0_mono, t1_mono, hold_s=hold, max_gap_s=3.0 * self.interval_s + 0.05)

    def latest_total_w(self) -> Optional[float]:
        """The newest total power in W, or None."""
        with self._lock:
            return self._buffer[-1][1] if self._buffer else None

    def stats(self) -> Dict[str, Any]:
        """Counters for status lines: samples, records, failures, state, effective rate, thread CPU s."""
        with self._lock:
            samples = self._seq
            buffered = len(self._buffer)
        elapsed = time.monotonic() - self._started_mono if self._started_mono is not None else 0.0
        if self.source.is_null:
            state = "off"
        elif self._thread is None:
            state = "not started"
        elif not self.running:
            state = "stopped"
        else:
            state = "failing" if self._consecutive else "ok"
        return {
            "source": self.source.name,
            "state": state,
            "interval_s": self.interval_s,
            "samples": samples,
            "records": self._records,
            "buffered": buffered,
            "failures": self._failures,
            "failure_episodes": self._failure_episodes,
            "consecutive_failures": self._consecutive,
            "reopens": self._reopens,
            "sink_errors": self._sink_errors,
            "listener_errors": self._listener_errors,
            "last_error": self._last_error,
            "effective_rate_hz": samples / elapsed if elapsed > 0 else 0.0,
            "thread_cpu_s": self._thread_cpu_s,
        }
