"""Learning the powers the energy objective needs: idle, running a model locally, transmitting.

The daemon brackets work with an :class:`ActivityTracker`::

    token = tracker.begin("local")      # or "radio" around an offload transfer
    ...run the model...
    tracker.end(token)

and registers :meth:`PowerModel.observe` as a sampler listener. Each reading is attributed to the
activity running at that instant and filling the ``window_s`` before it (a reading whose window mixes
activities is ambiguous and skipped), and folded into an exponentially weighted mean per activity. The policy then
compares ``p_active_w × expected local time`` with ``p_radio_w × transfer time + p_idle_w × waiting
time``. All powers are whole-board watts.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Any, Deque, Dict, Optional, Tuple

from edged.errors import ConfigError
from edged.power.base import PowerReading

ACTIVITIES = ("local", "radio")

#: priors (W) before any measurement: a Raspberry Pi 4 idles near 2.7 W and runs a core flat out near 4 W
DEFAULT_PRIORS_W: Dict[str, float] = {"idle": 2.7, "active": 4.0, "radio": 3.2}


class ActivityTracker:
    """Thread-safe record of when local inference and radio transfers ran (``time.monotonic()`` s).

    ``history`` bounds the number of finished intervals kept (oldest dropped first).
    """

    def __init__(self, history: int = 4096, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._open: Dict[int, Tuple[str, float]] = {}
        self._done: Deque[Tuple[float, float, str]] = collections.deque(maxlen=history)

    def begin(self, kind: str, t_mono: Optional[float] = None) -> int:
        """Mark the start of ``kind`` ("local" or "radio"); returns the token for :meth:`end`."""
        if kind not in ACTIVITIES:
            raise ValueError(f"activity {kind!r}: expected one of {ACTIVITIES}")
        t = self._clock() if t_mono is None else t_mono
        with self._lock:
            token = next(self._tokens)
            self._open[token] = (kind, t)
        return token

    def end(self, token: int, t_mono: Optional[float] = None) -> None:
        """Mark the end of the activity ``token`` started. Unknown or repeated tokens are ignored."""
        t = self._clock() if t_mono is None else t_mono
        with self._lock:
            started = self._open.pop(token, None)
            if started is not None:
                kind, t0 = started
                self._done.append((t0, max(t, t0), kind))

    def active(self) -> Dict[str, int]:
        """How many of each activity are running right now."""
        with self._lock:
            counts = dict.fromkeys(ACTIVITIES, 0)
            for kind, _ in self._open.values():
                counts[kind] += 1
            return counts

    def running_at(self, t: float) -> Dict[str, bool]:
        """Whether each activity was running at instant ``t``."""
        with self._lock:
            spans = [(a, b, k) for a, b, k in self._done if a <= t < b]
            spans += [(a, float("inf"), k) for k, a in self._open.values() if a <= t]
        return {kind: any(k == kind for _, _, k in spans) for kind in ACTIVITIES}

    def occupancy(self, t0: float, t1: float) -> Dict[str, float]:
        """Fraction (0..1) of [t0, t1] during which each activity ran (overlaps of one kind merged)."""
        span = t1 - t0
        if span <= 0:
            return dict.fromkeys(ACTIVITIES, 0.0)
        with self._lock:
            intervals = [(a, b, k) for a, b, k in self._done if b > t0 and a < t1]
            intervals += [(a, t1, k) for k, a in self._open.values() if a < t1]
        result: Dict[str, float] = {}
        for kind in ACTIVITIES:
            covered = 0.0
            cursor = t0
            for a, b in sorted((max(a, t0), min(b, t1)) for a, b, k in intervals if k == kind):
                if b <= cursor:
                    continue
                covered += b - max(a, cursor)
                cursor = b
            result[kind] = min(covered / span, 1.0)
        return result


class _Ewma:
    __slots__ = ("value", "count", "alpha")

    def __init__(self, prior: float, alpha: float) -> None:
        self.value = prior
        self.count = 0
        self.alpha = alpha

    def add(self, x: float) -> None:
        self.value = x if self.count == 0 else self.value + self.alpha * (x - self.value)
        self.count += 1


class PowerModel:
    """Mean whole-board power (W) when idle, running locally and transmitting, learned by EWMA.

    ``tracker``: the :class:`ActivityTracker` the daemon updates; ``window_s``: the span before each
    reading that decides its activity (≈ the sensor's averaging time; 0.05 s suits an INA219, use the
    jtop interval for jtop); ``alpha``: EWMA weight of a new sample; ``priors_w``: values reported
    before any sample ("idle", "active", "radio"); ``purity``: minimum share of the window one
    activity must fill (and the others may not exceed 1 - purity) for the reading to count.
    """

    def __init__(self, tracker: ActivityTracker, window_s: float = 0.05, alpha: float = 0.05,
                 priors_w: Optional[Dict[str, float]] = None, purity: float = 0.8) -> None:
        if not 0 < alpha <= 1:
            raise ConfigError(f"power model alpha={alpha!r}: must be in (0, 1]")
        if window_s <= 0:
            raise ConfigError(f"power model window_s={window_s!r}: must be > 0 s")
        priors = dict(DEFAULT_PRIORS_W)
        priors.update(priors_w or {})
        self.tracker = tracker
        self.window_s = window_s
        self.purity = purity
        self._lock = threading.Lock()
        self._means = {k: _Ewma(priors[k], alpha) for k in ("idle", "active", "radio")}
        self.skipped = 0

    def classify(self, t_mono: float) -> Optional[str]:
        """'idle' | 'active' | 'radio' for a reading at ``t_mono``, or None when mixed.

        The activity must be running at ``t_mono`` and fill ≥ ``purity`` of the window before it
        while the other fills ≤ 1 - ``purity``; idle means nothing ran in the window at all.
        """
        occ = self.tracker.occupancy(t_mono - self.window_s, t_mono)
        now = self.tracker.running_at(t_mono)
        local, radio = occ["local"], occ["radio"]
        other = 1.0 - self.purity
        if local <= 0.0 and radio <= 0.0 and not any(now.values()):
            return "idle"
        if now["local"] and not now["radio"] and local >= self.purity and radio <= other:
            return "active"
        if now["radio"] and not now["local"] and radio >= self.purity and local <= other:
            return "radio"
        return None

    def observe(self, reading: PowerReading) -> None:
        """Fold one reading's total power in (a sampler listener). Readings without a total are ignored."""
        if reading.total_w is None:
            return
        self.add(reading.t_mono, reading.total_w)

    def add(self, t_mono: float, watts: float) -> Optional[str]:
        """Fold ``watts`` measured at ``t_mono`` into the mean of its activity; returns that activity."""
        kind = self.classify(t_mono)
        with self._lock:
            if kind is None:
                self.skipped += 1
            else:
                self._means[kind].add(watts)
        return kind

    @property
    def p_idle_w(self) -> float:
        return self._means["idle"].value

    @property
    def p_active_w(self) -> float:
        return self._means["active"].value

    @property
    def p_radio_w(self) -> float:
        return self._means["radio"].value

    def snapshot(self) -> Dict[str, Any]:
        """``{"p_idle_w", "p_active_w", "p_radio_w": W, "n_idle", "n_active", "n_radio": samples behind each
        (0 = still the prior), "skipped": ambiguous readings}``."""
        with self._lock:
            out: Dict[str, Any] = {}
            for kind, mean in self._means.items():
                out[f"p_{kind}_w"] = round(mean.value, 4)
            for kind, mean in self._means.items():
                out[f"n_{kind}"] = mean.count
            out["skipped"] = self.skipped
            return out
