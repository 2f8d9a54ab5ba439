"""Online estimates of link transfer time T_L, fog execution time T_F and local execution time.

Link model (one direction): ``T_L(bytes) = latency + bytes / bandwidth``.

Every round trip to the fog node gives one observation: the *transfer* part of
the round trip, ``rtt - t_f - queue`` (the fog reports its execution time T_F and
its queue wait), together with the bytes sent plus the bytes received. A round
trip carries two latencies, so ``transfer = 2·latency + (out + in) / bandwidth``.
:class:`LinkEstimator` fits that line with a Theil–Sen regression (median of
pairwise slopes, median intercept) over a window of recent observations: one
outlier (a retransmission, a GC pause) cannot move it. Observations older than
``max_age_s`` are forgotten, so an idle estimator becomes *unknown* rather than
wrong; active probes (a small ping and a ping padded to a few KB, so the slope
is learnable even when every real input is small) keep it fresh while all
inputs run locally. Asymmetric links are modelled as symmetric (a round trip
cannot separate the two directions).

All times are µs, sizes bytes, ages seconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

import numpy as np


def _quantile(values: List[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of a short list; plain Python is faster here."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


class LinkEstimator:
    """Learns T_L(bytes), T_F per model and the fog queue wait from fog round trips.

    Args:
        window: observations kept for the link fit.
        max_age_s: observations older than this are dropped (estimates go unknown).
        stale_after_s: :meth:`is_stale` turns true when no link observation is newer than this.
        t_f_quantile: quantile of recent fog-reported T_F used as the estimate (0.5 = median).
        t_f_window: fog reports kept per model for T_F (short: the fog's load changes).
        queue_max_age_s: fog queue reports older than this are ignored (queue assumed empty).
        change_window: this many consecutive observations all far off the fit mean the link changed:
            the older observations are dropped (0 disables).
        change_ratio: "far off" = more than this factor above or below the fit (and 500 µs).
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, window: int = 64, max_age_s: float = 60.0, stale_after_s: float = 1.0,
                 t_f_quantile: float = 0.5, queue_max_age_s: float = 2.0, change_window: int = 3,
                 t_f_window: int = 16,
                 change_ratio: float = 1.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.change_window = change_window
        self.t_f_window = t_f_window
        self.change_ratio = change_ratio
        self.changes = 0
        self.window = window
        self.max_age_s = max_age_s
        self.stale_after_s = stale_after_s
        self.t_f_quantile = t_f_quantile
        self.queue_max_age_s = queue_max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._link: Deque[Tuple[float, float, float]] = deque(maxlen=window)  # (t, bytes, transfer_us)
        self._t_f: Dict[str, Deque[Tuple[float, float]]] = {}
        self._t_f_real_at: Dict[str, float] = {}  # model -> time of the last real (non-ping) T_F
        self._queue: Deque[Tuple[float, float]] = deque(maxlen=16)
        self._fit: Optional[Tuple[float, float]] = None  # (round-trip intercept µs, µs per byte)
        self._dirty = True
        self.observations = 0

    # ---- feeding -------------------------------------------------------------------------------
    def observe_round_trip(self, bytes_out: int, bytes_in: int, rtt_us: float, t_f_us: float = 0.0,
                           queue_us: float = 0.0, model: Optional[str] = None) -> None:
        """Record one completed round trip (request ``bytes_out`` + reply ``bytes_in``, bytes).

        ``t_f_us`` and ``queue_us`` are what the fog reported; the rest of ``rtt_us`` is transfer.
        A ``model`` name also records ``t_f_us`` as a T_F observation for that model.
        """
        now = self._clock()
        transfer = max(0.0, rtt_us - t_f_us - queue_us)
        with self._lock:
            self._link.append((now, float(bytes_out + bytes_in), transfer))
            self._queue.append((now, max(0.0, queue_us)))
            self._dirty = True
            self._fit_line()  # eagerly, so a slope learned from varied sizes survives a window of one size
            self._detect_change()
            self.observations += 1
            if model is not None:
                self._add_t_f(model, t_f_us, now)
                self._t_f_real_at[model] = now

    def observe_t_f(self, model: str, t_f_us: float) -> None:
        """Record a fog execution time for ``model`` (µs), e.g. the fog's own median from a ping."""
        with self._lock:
            self._add_t_f(model, t_f_us, self._clock())

    def observe_fog_report(self, model: str, t_f_us: float) -> None:
        """The fog's own recent median T_F for ``model`` (µs), as a ping reports it.

        Ignored while real replies for the model are recent (they are the better evidence);
        otherwise it *replaces* the window, so an edge that offloads nothing still follows the
        fog's current speed instead of a median of old reports.
        """
        with self._lock:
            now = self._clock()
            if now - self._t_f_real_at.get(model, -1e18) <= 2.0 * self.stale_after_s:
                return
            self._t_f.pop(model, None)
            self._add_t_f(model, t_f_us, now)

    def observe_fog_queue(self, queue_us: float) -> None:
        """Record a fog queue wait (µs), e.g. the estimate a ping reply carries."""
        with self._lock:
            self._queue.append((self._clock(), max(0.0, queue_us)))

    def forget_link(self) -> None:
        """Drop every link and queue observation (T_F stays): call when the fog went down, so the
        link that comes back is learned from fresh probes, not from how it was before."""
        with self._lock:
            self._link.clear()
            self._queue.clear()
            self._fit = None
            self._dirty = True

    def _add_t_f(self, model: str, t_f_us: float, now: float) -> None:
        dq = self._t_f.get(model)
        if dq is None:
            dq = self._t_f[model] = deque(maxlen=self.t_f_window)
        dq.append((now, float(t_f_us)))

    # ---- estimates -----------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        cutoff = now - self.max_age_s
        while self._link and self._link[0][0] < cutoff:
            self._link.popleft()
            self._dirty = True
        for dq in self._t_f.values():
            while dq and dq[0][0] < cutoff:
                dq.popleft()

    def _detect_change(self) -> None:
        """Forget the older window when the link changed (the last ``change_window`` observations are
        *all* off the fit by more than ``change_ratio`` and 500 µs): a median over the full window
        would take half a window of bad round trips to move, which costs real inputs. A lone
        outlier cannot trigger this; a lasting change is followed within ``change_window``
        observations."""
        k = self.change_window
        if k <= 0 or len(self._link) < 2 * k or self._fit is None:
            return
        intercept, slope = self._fit
        recent = list(self._link)[-k:]
        ratios = []
        for _, b, t in recent:
            pred = intercept + slope * b
            if abs(t - pred) < 500.0:
                return
            ratios.append(t / max(pred, 1.0))
        if all(r > self.change_ratio for r in ratios) or all(r < 1.0 / self.change_ratio for r in ratios):
            self._link = deque(recent, maxlen=self.window)
            self._dirty = True
            self.changes += 1
            self._fit_line()

    def _fit_line(self) -> Optional[Tuple[float, float]]:
        if not self._dirty:
            return self._fit
        self._dirty = False
        if not self._link:
            self._fit = None
            return None
        x = np.array([b for _, b, _ in self._link], dtype=np.float64)
        y = np.array([t for _, _, t in self._link], dtype=np.float64)
        slope = 0.0
        if len(x) >= 3:
            dx = x[None, :] - x[:, None]
            dy = y[None, :] - y[:, None]
            mask = np.triu(np.abs(dx) > 64.0, 1)  # pairs whose sizes differ enough to say something
            if mask.sum() >= 2:
                slope = max(0.0, float(np.median(dy[mask] / dx[mask])))
            elif self._fit is not None:
                slope = self._fit[1]
        intercept = max(0.0, float(np.median(y - slope * x)))
        self._fit = (intercept, slope)
        return self._fit

    def t_l_us(self, nbytes: int) -> Optional[float]:
        """Expected one-way transfer time of a ``nbytes`` message (µs), or ``None`` if unknown."""
        with self._lock:
            self._expire(self._clock())
            fit = self._fit_line()
        if fit is None:
            return None
        intercept, slope = fit
        return intercept / 2.0 + slope * nbytes

    def t_f_us(self, model: str) -> Optional[float]:
        """Expected fog execution time of ``model`` (µs): a quantile of recent reports, or ``None``."""
        with self._lock:
            self._expire(self._clock())
            dq = self._t_f.get(model)
            if not dq:
                return None
            return _quantile([v for _, v in dq], self.t_f_quantile)

    def fog_queue_us(self) -> float:
        """Expected fog queue wait (µs): median of recent reports; 0 when none is recent."""
        with self._lock:
            cutoff = self._clock() - self.queue_max_age_s
            recent = [v for t, v in self._queue if t >= cutoff]
        return _quantile(recent, 0.5) if recent else 0.0

    def latency_us(self) -> Optional[float]:
        """Learned one-way link latency (µs)."""
        with self._lock:
            fit = self._fit_line()
        return None if fit is None else fit[0] / 2.0

    def bandwidth_bps(self) -> Optional[float]:
        """Learned bandwidth (bytes/s); ``None`` when unknown or too high to measure."""
        with self._lock:
            fit = self._fit_line()
        if fit is None or fit[1] <= 0:
            return None
        return 1e6 / fit[1]

    def age_s(self) -> Optional[float]:
        """Seconds since the newest link observation, or ``None`` if there is none."""
        with self._lock:
            return None if not self._link else self._clock() - self._link[-1][0]

    def is_stale(self) -> bool:
        """True when no link observation is newer than ``stale_after_s`` (time to probe)."""
        age = self.age_s()
        return age is None or age > self.stale_after_s

    def snapshot(self) -> Dict[str, Any]:
        """JSON-ready view of the current estimates."""
        lat = self.latency_us()
        bw = self.bandwidth_bps()
        age = self.age_s()
        with self._lock:
            models = list(self._t_f)
        return {
            "latency_us": None if lat is None else round(lat, 1),
            "bandwidth_Bps": None if bw is None else round(bw),
            "t_l_1kB_us": _round(self.t_l_us(1024)),
            "t_f_us": {m: _round(self.t_f_us(m)) for m in models},
            "fog_queue_us": round(self.fog_queue_us(), 1),
            "age_s": None if age is None else round(age, 3),
            "observations": self.observations,
            "changes": self.changes,
        }


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 1)


class LocalEstimator:
    """Online local execution time per model: a quantile over a window of recent runs (µs).

    Seeded from the profile (p50 or WCET); the seed is used until the first run is
    observed. With a short window a slowdown (thermal throttling) shows within a
    few inputs.
    """

    def __init__(self, seeds: Optional[Mapping[str, float]] = None, window: int = 16,
                 quantile: float = 0.5, prior_weight: int = 2) -> None:
        self.window = window
        self.prior_weight = prior_weight
        self.quantile = quantile
        self._lock = threading.Lock()
        self._seeds: Dict[str, float] = dict(seeds or {})
        self._runs: Dict[str, Deque[float]] = {}
        self._cached: Dict[str, float] = {}  # quantile per model, recomputed on observe (read per input)

    def seed(self, model: str, exec_us: float) -> None:
        """Set the prior for ``model`` (µs) used until a run is observed."""
        with self._lock:
            self._seeds[model] = float(exec_us)
            if model not in self._runs:
                self._cached.pop(model, None)

    def observe(self, model: str, exec_us: float) -> None:
        """Record one measured local execution of ``model`` (µs).

        The seed stays in the window as ``prior_weight`` pseudo-runs until real runs push it
        out, so one slow first run (a cold cache, a busy core) does not replace the profile.
        """
        with self._lock:
            dq = self._runs.get(model)
            if dq is None:
                dq = self._runs[model] = deque(maxlen=self.window)
                seed = self._seeds.get(model)
                if seed is not None:
                    dq.extend([seed] * self.prior_weight)
            dq.append(float(exec_us))
            self._cached[model] = _quantile(list(dq), self.quantile)

    def exec_us(self, model: str) -> Optional[float]:
        """Expected local execution time of ``model`` (µs), or ``None`` if neither seeded nor observed."""
        v = self._cached.get(model)  # a dict read is atomic; observe() keeps it current
        if v is not None:
            return v
        with self._lock:
            return self._seeds.get(model)

    def snapshot(self) -> Dict[str, Optional[float]]:
        with self._lock:
            names = set(self._seeds) | set(self._runs)
        return {m: _round(self.exec_us(m)) for m in sorted(names)}
