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

What this edge has in flight (issue 14). The dispatcher announces each offload
with :meth:`LinkEstimator.on_send` and ends it with :meth:`observe_round_trip`
(``key=``) or :meth:`on_fail`. From that the estimator keeps two timelines:

* the **uplink**: this edge's bytes queue behind each other at the learned
  bandwidth, so T_L of a new input is ``latency + (bytes ahead + its bytes) /
  bandwidth`` (:meth:`t_l_in_us`). A reply's transfer is fitted with the bytes
  that were ahead of it, so a burst teaches the bandwidth instead of a bogus
  latency;
* the **fog**: this edge's requests queue on the fog at its T_F, so the fog
  queue a new input meets is this edge's own work ahead of it (exact, re-anchored
  on each reply) plus the *foreign* queue the fog last reported, net of this
  edge's own share, drained at one µs per µs since the report
  (:meth:`fog_queue_at_us`). A report is never a median of old reports: an idle
  fog is seen idle as soon as its queue has drained.

**Collapse** (bandwidth or a stall): when the oldest request in flight is overdue
(older than ``overdue_ratio`` × its expected round trip + ``overdue_margin_us``),
the link is at least as slow as that request shows: a new input waits at least
the time it is overdue, and when that request carried enough bytes to say so
(:data:`BANDWIDTH_EVIDENCE_BYTES`), its bytes and those queued ahead of it go at
the µs per byte it implies. A timeout leaves the same bounds until the next reply.
So a collapse shows within one round trip, before any reply arrives.

**Dispersion**: an EWMA of the absolute deviation (like TCP's RTTVAR) of the
round-trip transfer around the fit (:meth:`transfer_dev_us`) and of each
model's T_F around its estimate (:meth:`t_f_dev_us`); the policy's risk term
uses them.

All times are µs, sizes bytes, ages seconds.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Hashable, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

#: a late request says how slow a byte is only when it (with the bytes ahead of it) is at least this big
BANDWIDTH_EVIDENCE_BYTES = 8192


def _quantile(values: List[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of a short list; plain Python is faster here."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


@dataclass
class _Flight:
    """One offload this edge has in flight (times: monotonic seconds; sizes: bytes; durations: µs)."""

    t_sent: float
    bytes_out: int
    bytes_in: int
    model: Optional[str]
    bytes_ahead: float  # this edge's bytes queued on the uplink before it, at send time
    arrive_at: float  # expected arrival at the fog
    t_f_us: float  # expected fog execution time
    expected_rtt_us: float  # expected round trip (send → reply), at send time
    fog_done_at: float = 0.0  # expected end of its fog execution (re-simulated on every reply)
    unacked_before: int = 0  # this edge's request bytes unanswered when it was sent (at most this many ahead)


@dataclass(frozen=True)
class LinkEstimates:
    """A consistent, immutable view of the sample-derived estimates (µs, bytes/s).

    Recomputed only when a sample arrived since the previous call (``version`` changes); the
    time-dependent parts (the edge's own queues, a collapse, the ageing of a fog report) are
    not in here: :meth:`LinkEstimator.t_l_in_us` and :meth:`LinkEstimator.fog_queue_at_us` add them.
    """

    version: int
    latency_us: Optional[float]
    us_per_byte: Optional[float]
    transfer_dev_us: float
    t_f_us: Mapping[str, float] = field(default_factory=dict)
    t_f_dev_us: Mapping[str, float] = field(default_factory=dict)

    def t_l_us(self, nbytes: int) -> Optional[float]:
        """One-way transfer time of ``nbytes`` on an idle link (µs), or ``None`` if unknown."""
        if self.latency_us is None or self.us_per_byte is None:
            return None
        return self.latency_us + self.us_per_byte * nbytes


class OffloadNumbers(NamedTuple):
    """The estimator's numbers for one input's offload decision (µs; ``None`` = unknown)."""

    t_l_in_us: Optional[float]  # T_L of the request, this edge's bytes ahead and a collapse included
    t_l_out_us: Optional[float]  # T_L of the reply on an idle link
    t_f_us: Optional[float]
    fog_queue_us: float  # at the request's arrival: the last report drained + this edge's own work ahead
    t_l_dev_us: Optional[float]  # dispersion of a round trip's transfer
    t_f_dev_us: Optional[float]
    t_l_tx_us: float  # the request's own time on the uplink (bytes / bandwidth)


class LinkEstimator:
    """Learns T_L(bytes), T_F per model and the fog queue wait from fog round trips.

    Args:
        window: observations kept for the link fit.
        max_age_s: observations older than this are dropped (estimates go unknown).
        stale_after_s: :meth:`is_stale` turns true when no link observation is newer than this.
        t_f_quantile: quantile of recent fog-reported T_F used as the estimate (0.5 = median).
        t_f_window: fog reports kept per model for T_F (short: the fog's load changes).
        queue_max_age_s: a fog queue report older than this is ignored (it has drained long before anyway).
        change_window: this many consecutive observations all far off the fit mean the link changed:
            the older observations are dropped (0 disables).
        change_ratio: "far off" = more than this factor above or below the fit (and 500 µs).
        dev_alpha: weight of a new sample in the EWMA absolute deviations (TCP's RTTVAR uses 1/4).
        overdue_ratio / overdue_margin_us: a request in flight older than ``ratio × expected round trip +
            margin`` is overdue: the link (or the fog) is slower than estimated.
        fog_workers: the fog's worker count until a ping reports it (its queue drains that many times faster).
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, window: int = 64, max_age_s: float = 60.0, stale_after_s: float = 1.0,
                 t_f_quantile: float = 0.5, queue_max_age_s: float = 2.0, change_window: int = 3,
                 t_f_window: int = 16,
                 change_ratio: float = 1.5, clock: Callable[[], float] = time.monotonic,
                 dev_alpha: float = 0.25, overdue_ratio: float = 1.5, overdue_margin_us: float = 2000.0,
                 fog_workers: int = 1) -> None:
        self.change_window = change_window
        self.t_f_window = t_f_window
        self.change_ratio = change_ratio
        self.changes = 0
        self.window = window
        self.max_age_s = max_age_s
        self.stale_after_s = stale_after_s
        self.t_f_quantile = t_f_quantile
        self.queue_max_age_s = queue_max_age_s
        self.dev_alpha = dev_alpha
        self.overdue_ratio = overdue_ratio
        self.overdue_margin_us = overdue_margin_us
        self.fog_workers = max(1, int(fog_workers))
        self._clock = clock
        self._lock = threading.RLock()
        self._link: Deque[Tuple[float, float, float]] = deque(maxlen=window)  # (t, bytes, transfer_us)
        self._t_f: Dict[str, Deque[Tuple[float, float]]] = {}
        self._t_f_real_at: Dict[str, float] = {}  # model -> time of the last real (non-ping) T_F
        self._fit: Optional[Tuple[float, float]] = None  # (round-trip intercept µs, µs per byte)
        self._dirty = True
        self.observations = 0
        # dispersions (EWMA of absolute deviations, µs)
        self._transfer_dev = 0.0
        self._t_f_dev: Dict[str, float] = {}
        # cached snapshot of the sample-derived estimates
        self._version = 0
        self._cached: Optional[LinkEstimates] = None
        self._t_f_cache: Dict[str, Optional[float]] = {}
        # this edge's own work in flight
        self._flights: OrderedDict[Hashable, _Flight] = OrderedDict()
        self._unacked_bytes = 0
        self._q_bytes = 0.0  # this edge's bytes queued on the uplink at _q_at (drained at the current rate since)
        self._q_at = 0.0
        self._own_fog_free_at = 0.0  # when the fog has run this edge's work, per worker (s)
        self._fog_report: Optional[Tuple[float, float]] = None  # (report time s, foreign queue µs)
        self._floor_us_per_byte = 0.0  # a timeout's lower bound on µs/byte, until the next reply
        self._floor_extra_us = 0.0  # a timeout's lower bound on the extra transfer time, until the next reply
        self.collapses = 0  # times an overdue request (or a timeout) raised the link estimate
        self._last_probe_at = -1e18  # when the last round trip without a model (a probe) came back
        self._changes_at_probe = 0
        self._overdue_key: Optional[Hashable] = None  # the request seen overdue (one collapse counted)

    # ---- feeding -------------------------------------------------------------------------------
    def on_send(self, key: Hashable, bytes_out: int, model: Optional[str] = None, bytes_in: int = 300) -> None:
        """This edge sent an offload: ``bytes_out`` request bytes (header included), a reply of about
        ``bytes_in`` expected. End it with :meth:`observe_round_trip` (``key=key``) or :meth:`on_fail`."""
        now = self._clock()
        with self._lock:
            if key in self._flights:
                self._drop_flight(key)
            est = self._estimates_locked(now)
            lat = est.latency_us or 0.0
            upb = self._us_per_byte_now(now, est)
            ahead = self._queued_bytes(now, upb)
            self._q_bytes, self._q_at = ahead + bytes_out, now
            arrive = now + ((ahead + bytes_out) * upb + lat) / 1e6
            t_f = self._t_f_locked(model) if model is not None else None
            t_f = t_f if t_f is not None else 0.0
            fog_start = max(arrive, self._own_fog_free_at, arrive + self._foreign_queue_us(arrive) / 1e6)
            self._own_fog_free_at = fog_start + t_f / 1e6 / self.fog_workers
            done = fog_start + t_f / 1e6
            rtt = (done - now) * 1e6 + lat + bytes_in * upb
            self._flights[key] = _Flight(now, int(bytes_out), int(bytes_in), model, ahead, arrive, t_f, rtt, done,
                                         unacked_before=self._unacked_bytes)
            self._unacked_bytes += int(bytes_out)

    def on_fail(self, key: Hashable, timed_out: bool = False) -> None:
        """The offload ``key`` ended without a reply. A timeout is evidence: until the next reply the
        link counts at least as slow as that request showed (its bytes did not make it in the time)."""
        now = self._clock()
        with self._lock:
            f = self._flights.get(key)
            if f is None:
                return
            if timed_out:
                est = self._estimates_locked(now)
                if self._floor_extra_us == 0.0 and self._floor_us_per_byte == 0.0:
                    self.collapses += 1
                self._floor_us_per_byte = max(self._floor_us_per_byte, self._upb_bound(f, now, est))
                self._floor_extra_us = max(self._floor_extra_us, (now - f.t_sent) * 1e6 - f.expected_rtt_us)
            self._drop_flight(key)

    def _drop_flight(self, key: Hashable) -> None:
        f = self._flights.pop(key)
        if key == self._overdue_key:
            self._overdue_key = None
        self._unacked_bytes = max(0, self._unacked_bytes - f.bytes_out)
        if not self._flights:
            self._unacked_bytes = 0

    def observe_round_trip(self, bytes_out: int, bytes_in: int, rtt_us: float, t_f_us: float = 0.0,
                           queue_us: float = 0.0, model: Optional[str] = None, key: Optional[Hashable] = None,
                           fog_queue_est_us: Optional[float] = None) -> None:
        """Record one completed round trip (request ``bytes_out`` + reply ``bytes_in``, bytes).

        ``t_f_us`` and ``queue_us`` are what the fog reported; the rest of ``rtt_us`` is transfer.
        A ``model`` name also records ``t_f_us`` as a T_F observation for that model. ``key`` ends the
        flight announced by :meth:`on_send`: the bytes that were ahead of it count in the fit, and the
        edge's own fog timeline is re-anchored at its real end. ``fog_queue_est_us`` is the fog's
        queue estimate sent with the reply (work ahead of a new request, µs), if the fog sends one.
        """
        now = self._clock()
        transfer = max(0.0, rtt_us - t_f_us - queue_us)
        with self._lock:
            f = self._flights.get(key) if key is not None else None
            ahead = f.bytes_ahead if f is not None else 0.0
            x = float(bytes_out + bytes_in) + ahead
            if self._fit is not None and len(self._link) >= 3:  # a fit from fewer points is no baseline yet
                pred = self._fit[0] + self._fit[1] * x
                self._transfer_dev += self.dev_alpha * (abs(transfer - pred) - self._transfer_dev)
            self._link.append((now, x, transfer))
            self._dirty = True
            self._fit_line()  # eagerly, so a slope learned from varied sizes survives a window of one size
            self._detect_change()
            self.observations += 1
            self._floor_us_per_byte = self._floor_extra_us = 0.0  # a reply: the fit knows the link again
            if model is not None:
                self._add_t_f(model, t_f_us, now)
                self._t_f_real_at[model] = now
            else:
                self._last_probe_at = now
                self._changes_at_probe = self.changes
            self._bump()
            if f is not None and key is not None:
                self._drop_flight(key)
                # it (and everything sent before it) left the uplink: at most the bytes sent after it are queued
                after = sum(g.bytes_out for g in self._flights.values() if g.t_sent >= f.t_sent)
                upb_now = self._us_per_byte_now(now, self._estimates_locked(now))
                self._q_bytes, self._q_at = min(self._queued_bytes(now, upb_now), float(after)), now
                lat_out = (self._fit[0] / 2.0 + self._fit[1] * bytes_in) if self._fit else 0.0
                self._reanchor(now - lat_out / 1e6, f.t_sent)
            if fog_queue_est_us is not None:
                t_rep = now - ((self._fit[0] / 2.0) if self._fit else 0.0) / 1e6
                self._set_fog_report(t_rep, fog_queue_est_us)

    def observe_t_f(self, model: str, t_f_us: float) -> None:
        """Record a fog execution time for ``model`` (µs), e.g. the fog's own median from a ping."""
        with self._lock:
            self._add_t_f(model, t_f_us, self._clock())
            self._bump()

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
            self._bump()

    def observe_fog_queue(self, queue_us: float, workers: Optional[int] = None, age_us: float = 0.0) -> None:
        """The fog's queue estimate (µs of work ahead of a new request, e.g. a ping's ``queue_est_us``),
        made ``age_us`` ago. It replaces the previous report: this edge's own share is subtracted and the
        rest drains at one µs per µs from the report on. ``workers`` is the fog's worker count."""
        with self._lock:
            if workers:
                self.fog_workers = max(1, int(workers))
            self._set_fog_report(self._clock() - age_us / 1e6, queue_us)

    def forget_link(self) -> None:
        """Drop every link and queue observation (T_F stays): call when the fog went down, so the
        link that comes back is learned from fresh probes, not from how it was before."""
        with self._lock:
            self._link.clear()
            self._fit = None
            self._dirty = True
            self._transfer_dev = 0.0
            self._fog_report = None
            self._floor_us_per_byte = self._floor_extra_us = 0.0
            self._bump()

    def _add_t_f(self, model: str, t_f_us: float, now: float) -> None:
        dq = self._t_f.get(model)
        if dq is None:
            dq = self._t_f[model] = deque(maxlen=self.t_f_window)
        elif dq:
            cur = _quantile([v for _, v in dq], self.t_f_quantile)
            dev = self._t_f_dev.get(model, 0.0)
            self._t_f_dev[model] = dev + self.dev_alpha * (abs(float(t_f_us) - cur) - dev)
        dq.append((now, float(t_f_us)))

    def _bump(self) -> None:
        self._version += 1
        self._cached = None
        self._t_f_cache.clear()

    def _set_fog_report(self, t_report: float, queue_us: float) -> None:
        own = self._own_backlog_at(t_report)
        self._fog_report = (t_report, max(0.0, float(queue_us) - own))

    # ---- the edge's own timelines -----------------------------------------------------------------
    def _reanchor(self, fog_done_at: float, t_sent: float) -> None:
        """A reply says this edge's request sent at ``t_sent`` left the fog at ``fog_done_at``: the
        requests sent after it run after it; re-simulate them from there."""
        free = fog_done_at
        for f in self._flights.values():
            if f.t_sent < t_sent:
                continue  # sent earlier, still unanswered (several workers, or lost): leave it
            start = max(f.arrive_at, free)
            free = start + f.t_f_us / 1e6 / self.fog_workers
            f.fog_done_at = start + f.t_f_us / 1e6
        self._own_fog_free_at = free

    def _own_backlog_at(self, t: float) -> float:
        """This edge's fog work (µs per worker) that a request arriving at the fog at ``t`` waits behind:
        the requests that arrived by then and are not done."""
        free = -1e18
        for f in self._flights.values():
            if f.arrive_at > t:
                break
            free = max(f.arrive_at, free) + f.t_f_us / 1e6 / self.fog_workers
        return max(0.0, (free - t) * 1e6)

    def _foreign_queue_us(self, at: float) -> float:
        if self._fog_report is None:
            return 0.0
        t_rep, q = self._fog_report
        if at - t_rep > self.queue_max_age_s:
            return 0.0
        return max(0.0, q - max(0.0, at - t_rep) * 1e6)

    def _upb_bound(self, f: _Flight, now: float, est: LinkEstimates) -> float:
        """µs per byte at least, given that ``f`` has not come back after ``now - f.t_sent``; 0 when ``f`` and
        the bytes ahead of it are fewer than :data:`BANDWIDTH_EVIDENCE_BYTES` (a small request that is late
        says the link is late, not how slow a byte is: its lateness counts as latency only)."""
        nbytes = max(f.bytes_ahead, f.unacked_before) + f.bytes_out + f.bytes_in
        if nbytes < BANDWIDTH_EVIDENCE_BYTES:
            return 0.0
        lat2 = 2.0 * (est.latency_us or 0.0)
        transfer_at_least = (now - f.t_sent) * 1e6 - lat2 - f.t_f_us
        return max(0.0, transfer_at_least) / nbytes

    def _overdue(self, now: float) -> Tuple[float, Optional[_Flight]]:
        """(µs the oldest request in flight is overdue, that request) or (0, None). Counts a new collapse
        the first time a request is seen overdue."""
        if not self._flights:
            return 0.0, None
        key, f = next(iter(self._flights.items()))
        age_us = (now - f.t_sent) * 1e6
        limit = self.overdue_ratio * f.expected_rtt_us + self.overdue_margin_us
        if age_us <= limit:
            return 0.0, None
        if key != self._overdue_key:
            if self._overdue_key is None:
                self.collapses += 1
            self._overdue_key = key
        return age_us - f.expected_rtt_us, f

    def _us_per_byte_now(self, now: float, est: LinkEstimates) -> float:
        upb = max(est.us_per_byte or 0.0, self._floor_us_per_byte)
        overdue, f = self._overdue(now)
        if f is not None:
            upb = max(upb, self._upb_bound(f, now, est))
        return upb

    def _queued_bytes(self, now: float, upb: float) -> float:
        """This edge's bytes still queued on the uplink: the queue at the last send, drained since at ``upb``."""
        if upb <= 0.0:
            return 0.0
        return max(0.0, self._q_bytes - (now - self._q_at) * 1e6 / upb)

    def _link_backlog_us(self, now: float, est: LinkEstimates, upb: float, lateness: bool = True) -> float:
        """µs before a new input's first byte goes out: this edge's bytes queued ahead of it (at the
        collapsed rate while a collapse holds); with ``lateness``, while a request is overdue (or after a
        timeout) at least the time it is overdue (a stall delays everything behind it)."""
        backlog = self._queued_bytes(now, upb) * upb
        if not lateness:
            return backlog
        overdue, _ = self._overdue(now)
        return max(backlog, overdue, self._floor_extra_us)

    # ---- estimates -----------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        cutoff = now - self.max_age_s
        changed = False
        while self._link and self._link[0][0] < cutoff:
            self._link.popleft()
            self._dirty = True
            changed = True
        for dq in self._t_f.values():
            while dq and dq[0][0] < cutoff:
                dq.popleft()
                changed = True
        if changed:
            self._bump()

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
            fit = self._fit_line()
            if fit is not None:  # the old link's dispersion says nothing about the new one
                self._transfer_dev = sum(abs(t - fit[0] - fit[1] * b) for _, b, t in recent) / len(recent)

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

    def _t_f_locked(self, model: str) -> Optional[float]:
        if model in self._t_f_cache:
            return self._t_f_cache[model]
        dq = self._t_f.get(model)
        v = _quantile([x for _, x in dq], self.t_f_quantile) if dq else None
        self._t_f_cache[model] = v
        return v

    def _estimates_locked(self, now: float) -> LinkEstimates:
        self._expire(now)
        if self._cached is not None:
            return self._cached
        fit = self._fit_line()
        models = [m for m, dq in self._t_f.items() if dq]
        t_f = {m: v for m in models if (v := self._t_f_locked(m)) is not None}
        self._cached = LinkEstimates(
            version=self._version,
            latency_us=None if fit is None else fit[0] / 2.0,
            us_per_byte=None if fit is None else fit[1],
            transfer_dev_us=self._transfer_dev,
            t_f_us=t_f,
            t_f_dev_us={m: self._t_f_dev.get(m, 0.0) for m in t_f})
        return self._cached

    def estimates(self) -> LinkEstimates:
        """The sample-derived estimates as one frozen object, recomputed only after a new sample."""
        with self._lock:
            return self._estimates_locked(self._clock())

    @property
    def version(self) -> int:
        """Changes whenever a sample (or expiry) changed the estimates."""
        return self._version

    def t_l_us(self, nbytes: int) -> Optional[float]:
        """Expected one-way transfer time of a ``nbytes`` message on an idle link (µs), or ``None`` if unknown."""
        return self.estimates().t_l_us(nbytes)

    def t_l_in_us(self, nbytes: int) -> Optional[float]:
        """Expected transfer time of a new ``nbytes`` request sent now (µs), or ``None`` if unknown:
        :meth:`t_l_us` plus this edge's bytes queued ahead of it on the uplink; while a request is overdue
        (or after a timeout) every unacknowledged byte at the rate it implies, and at least the overdue time."""
        base = self.t_l_us(nbytes)
        if base is None:
            return None
        now = self._clock()
        with self._lock:
            est = self._estimates_locked(now)
            upb = self._us_per_byte_now(now, est)
            backlog = self._link_backlog_us(now, est, upb)
            extra_rate = nbytes * max(0.0, upb - (est.us_per_byte or 0.0))
        return base + backlog + extra_rate

    def offload_numbers(self, nbytes: int, reply_bytes: int, model: str) -> OffloadNumbers:
        """Every number an offload decision for a ``nbytes`` request of ``model`` needs, under one lock (the
        dispatcher's hot path). Equal to :meth:`t_l_in_us`, :meth:`t_l_us` (reply), :meth:`t_f_us`,
        :meth:`fog_queue_at_us` (at the request's arrival), :meth:`transfer_dev_us`, :meth:`t_f_dev_us`;
        a subclass that overrides ``t_l_us``, ``t_f_us`` or ``fog_queue_us`` (a test double pinning numbers)
        gets those called instead (a pinned ``t_l_us`` is the request's T_L as it is: no queue, no collapse)."""
        cls = type(self)
        if (cls.t_l_us is not LinkEstimator.t_l_us or cls.t_f_us is not LinkEstimator.t_f_us
                or cls.fog_queue_us is not LinkEstimator.fog_queue_us):
            pinned = cls.t_l_us is not LinkEstimator.t_l_us
            t_in = self.t_l_us(nbytes) if pinned else self.t_l_in_us(nbytes)  # pinned: no queue, no collapse
            bw = self.bandwidth_bps()
            return OffloadNumbers(t_in, self.t_l_us(reply_bytes), self.t_f_us(model),
                                  self.fog_queue_at_us(t_in) if cls.fog_queue_us is LinkEstimator.fog_queue_us
                                  else self.fog_queue_us(),
                                  self.transfer_dev_us(), self.t_f_dev_us(model), nbytes * 1e6 / bw if bw else 0.0)
        now = self._clock()
        with self._lock:
            est = self._estimates_locked(now)
            upb_fit = est.us_per_byte
            base = est.t_l_us(nbytes)
            t_l_in: Optional[float] = None
            if base is not None:
                upb = self._us_per_byte_now(now, est)
                t_l_in = base + self._link_backlog_us(now, est, upb) + nbytes * max(0.0, upb - (upb_fit or 0.0))
            at = now + max(0.0, t_l_in or 0.0) / 1e6
            fog_queue = self._foreign_queue_us(at) + max(0.0, (self._own_fog_free_at - at) * 1e6)
            return OffloadNumbers(
                t_l_in, est.t_l_us(reply_bytes), est.t_f_us.get(model), fog_queue,
                None if est.latency_us is None else est.transfer_dev_us, est.t_f_dev_us.get(model),
                nbytes * upb_fit if upb_fit else 0.0)

    def t_f_us(self, model: str) -> Optional[float]:
        """Expected fog execution time of ``model`` (µs): a quantile of recent reports, or ``None``."""
        return self.estimates().t_f_us.get(model)

    def t_f_dev_us(self, model: str) -> Optional[float]:
        """Dispersion of the fog execution time of ``model`` (µs, EWMA of |T_F − estimate|), or ``None``."""
        return self.estimates().t_f_dev_us.get(model)

    def transfer_dev_us(self) -> Optional[float]:
        """Dispersion of a round trip's transfer time (µs, EWMA of |transfer − fit|), ``None`` if no fit."""
        est = self.estimates()
        return None if est.latency_us is None else est.transfer_dev_us

    def fog_queue_us(self) -> float:
        """Expected fog queue wait (µs) of a request arriving at the fog now (see :meth:`fog_queue_at_us`)."""
        return self.fog_queue_at_us(0.0)

    def fog_queue_at_us(self, arrival_in_us: Optional[float]) -> float:
        """Expected fog queue wait (µs) of a request that reaches the fog ``arrival_in_us`` from now: the
        foreign queue of the last fog report, drained since, plus this edge's own work ahead of it."""
        now = self._clock()
        at = now + max(0.0, arrival_in_us or 0.0) / 1e6
        with self._lock:
            own = max(0.0, (self._own_fog_free_at - at) * 1e6)
            return self._foreign_queue_us(at) + own

    def in_flight(self) -> Tuple[int, int]:
        """(offloads in flight, their request bytes not yet acknowledged by a reply)."""
        with self._lock:
            return len(self._flights), self._unacked_bytes

    def is_collapsed(self) -> bool:
        """True while a request is overdue or a timeout's bound holds (the link counts slower than its fit)."""
        now = self._clock()
        with self._lock:
            return (self._overdue(now)[1] is not None or self._floor_us_per_byte > 0.0
                    or self._floor_extra_us > 0.0)

    def latency_us(self) -> Optional[float]:
        """Learned one-way link latency (µs)."""
        return self.estimates().latency_us

    def bandwidth_bps(self) -> Optional[float]:
        """Learned bandwidth (bytes/s); ``None`` when unknown or too high to measure."""
        upb = self.estimates().us_per_byte
        if upb is None or upb <= 0:
            return None
        return 1e6 / upb

    def age_s(self) -> Optional[float]:
        """Seconds since the newest link observation, or ``None`` if there is none."""
        with self._lock:
            return None if not self._link else self._clock() - self._link[-1][0]

    def is_stale(self) -> bool:
        """True when no link observation is newer than ``stale_after_s`` (time to probe)."""
        age = self.age_s()
        return age is None or age > self.stale_after_s

    def wants_probe(self, min_interval_s: float = 0.25) -> bool:
        """True when a full probe (a small and a padded ping) would teach something (see :meth:`probe_kind`)."""
        return self.probe_kind(min_interval_s) == "full"

    def probe_kind(self, min_interval_s: float = 0.25) -> Optional[str]:
        """What probe to send now: ``"full"`` (a small and a padded ping), ``"ping"`` (a small one) or ``None``.

        ``"full"`` when the estimate is stale; or, at most every ``min_interval_s``, while a request is
        overdue, after a link change, while the newest round trip is far off the fit (a change under way:
        three such confirm it), or when the recent round trips all had about one size (the fit cannot tell
        latency from bandwidth: a burst of equal big inputs on a collapsed link reads as a huge latency for
        small inputs). ``"ping"`` when no round trip came back for ``min_interval_s``: an edge that keeps
        everything local because the link was bad learns within a fraction of a second that it is good
        again (a ping far off the fit then asks for full probes), for ~100 bytes each way."""
        if self.is_stale():
            return "full"
        now = self._clock()
        with self._lock:
            if now - self._last_probe_at < min_interval_s:
                return None
            if self._overdue(now)[1] is not None or self._floor_extra_us > 0.0:
                return "full"
            if self.changes != self._changes_at_probe:
                return "full"
            if self._link and self._fit is not None:  # the newest round trip is far off the fit: a change?
                _, b, t = self._link[-1]
                pred = self._fit[0] + self._fit[1] * b
                ratio = t / max(pred, 1.0)
                if abs(t - pred) >= 500.0 and (ratio > self.change_ratio or ratio < 1.0 / self.change_ratio):
                    return "full"
            recent = [b for _, b, _ in list(self._link)[-8:]]
            if len(recent) >= 3 and max(recent) - min(recent) <= 64.0:
                return "full"
            if self._link and now - self._link[-1][0] >= min_interval_s:
                return "ping"
            return None

    def snapshot(self) -> Dict[str, Any]:
        """JSON-ready view of the current estimates."""
        est = self.estimates()
        lat = est.latency_us
        bw = self.bandwidth_bps()
        age = self.age_s()
        n, unacked = self.in_flight()
        return {
            "latency_us": None if lat is None else round(lat, 1),
            "bandwidth_Bps": None if bw is None else round(bw),
            "t_l_1kB_us": _round(est.t_l_us(1024)),
            "transfer_dev_us": _round(self.transfer_dev_us()),
            "t_f_us": {m: _round(v) for m, v in est.t_f_us.items()},
            "t_f_dev_us": {m: _round(v) for m, v in est.t_f_dev_us.items()},
            "fog_queue_us": round(self.fog_queue_us(), 1),
            "in_flight": n, "unacked_bytes": unacked, "collapsed": self.is_collapsed(),
            "age_s": None if age is None else round(age, 3),
            "observations": self.observations,
            "changes": self.changes,
            "collapses": self.collapses,
        }


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 1)


class LocalEstimator:
    """Online local execution time per model: a quantile over a window of recent runs (µs).

    Seeded from the profile (p50 or WCET); the seed is used until the first run is
    observed. With a short window a slowdown (thermal throttling) shows within a
    few inputs. :meth:`dev_us` is the dispersion (for the policy's risk term).
    """

    def __init__(self, seeds: Optional[Mapping[str, float]] = None, window: int = 16,
                 quantile: float = 0.5, prior_weight: int = 2, dev_alpha: float = 0.25) -> None:
        self.window = window
        self.prior_weight = prior_weight
        self.quantile = quantile
        self._lock = threading.Lock()
        self._seeds: Dict[str, float] = dict(seeds or {})
        self._runs: Dict[str, Deque[float]] = {}
        self._cached: Dict[str, float] = {}  # quantile per model, recomputed on observe (read per input)
        self.dev_alpha = dev_alpha
        self._dev: Dict[str, float] = {}  # EWMA of |run - estimate| per model (µs)

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
            cur = self._cached.get(model, self._seeds.get(model))
            if cur is not None:
                dev = self._dev.get(model, 0.0)
                self._dev[model] = dev + self.dev_alpha * (abs(float(exec_us) - cur) - dev)
            dq.append(float(exec_us))
            self._cached[model] = _quantile(list(dq), self.quantile)

    def exec_us(self, model: str) -> Optional[float]:
        """Expected local execution time of ``model`` (µs), or ``None`` if neither seeded nor observed."""
        v = self._cached.get(model)  # a dict read is atomic; observe() keeps it current
        if v is not None:
            return v
        with self._lock:
            return self._seeds.get(model)

    def dev_us(self, model: str) -> Optional[float]:
        """Dispersion of the local execution time of ``model`` (µs, EWMA of |run − estimate|; weight
        ``dev_alpha``), or ``None`` before a run was observed against an estimate."""
        return self._dev.get(model)

    def snapshot(self) -> Dict[str, Optional[float]]:
        with self._lock:
            names = set(self._seeds) | set(self._runs)
        return {m: _round(self.exec_us(m)) for m in sorted(names)}
