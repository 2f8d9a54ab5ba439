"""An in-memory :class:`PowerSource` whose power is a function of time, and which fails on demand."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from edged.power.base import PowerReading, PowerSource, RailReading


class FakePowerSource(PowerSource):
    """Two rails ("cpu", "board"); "board" is the total and follows ``watts_at(t_mono)`` (W).

    ``failing`` makes open() and read() raise ``OSError`` (the sensor vanished) until cleared.
    """

    name = "fake"

    def __init__(self, watts_at: Optional[Callable[[float], float]] = None, min_interval: float = 0.001,
                 volts: float = 5.0) -> None:
        self.watts_at = watts_at or (lambda t: 3.0)
        self._min_interval = min_interval
        self.volts = volts
        self.failing = False
        self.opens = 0
        self.reads = 0
        self.is_open = False
        self.lock = threading.Lock()

    @property
    def min_interval_s(self) -> float:
        return self._min_interval

    def open(self) -> None:
        self.opens += 1
        if self.failing:
            raise OSError(19, "No such device (fake sensor unplugged)")
        self.is_open = True

    def read(self) -> PowerReading:
        if self.failing or not self.is_open:
            raise OSError(19, "No such device (fake sensor unplugged)")
        self.reads += 1
        ts, mono = time.time(), time.monotonic()
        total = self.watts_at(mono)
        rails = [
            RailReading("cpu", volts=self.volts, amps=total * 0.4 / self.volts, watts=total * 0.4),
            RailReading("board", volts=self.volts, amps=total / self.volts, watts=total, is_total=True),
        ]
        return PowerReading(ts=ts, t_mono=mono, source=self.name, rails=rails, total_w=total)

    def close(self) -> None:
        self.is_open = False
