"""``hwmon``: power sensors the kernel already drives, read from ``/sys/class/hwmon`` (no root, no I2C access).

Covers the kernel's ina2xx driver (an INA219/INA226 declared in the device tree on a Pi), the
ina3221 driver on Jetsons, and SBC PMICs that expose power or current. Per the hwmon ABI:
``power<N>_input`` is µW, ``curr<N>_input`` mA, ``in<N>_input`` mV. A rail is channel N of a device
having ``power<N>_input`` or ``curr<N>_input``; its volts come from ``in<N>_input`` when present and
its watts from ``power<N>_input`` or volts × amps. Rail names come from ``*_label`` files, else the
device ``name`` (suffixed with the channel when a device has several). The board total is the rail
named by ``total_rail``, a rail labelled like a board input (``VDD_IN``…), the only rail, or else
the sum of all rails.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set

from edged.power.base import PowerReading, PowerSource, PowerSourceError, RailReading

log = logging.getLogger(__name__)

DEFAULT_HWMON_ROOT = "/sys/class/hwmon"
#: labels jetson boards give unconnected INA3221 channels
UNCONNECTED_LABELS = frozenset({"NC", "N/C"})
#: rail labels that measure a Jetson's whole input
TOTAL_LABELS = ("VDD_IN", "POM_5V_IN", "VIN", "VIN_SYS_5V0")

_CHANNEL_RE = re.compile(r"^(power|curr)(\d+)_input$")


def read_sysfs_int(path: str) -> int:
    """One integer attribute (sysfs files are re-read from offset 0 on every call)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 64)
    finally:
        os.close(fd)
    text = data.split(b" ", 1)[0].strip()
    if not text:
        raise OSError(errno.ENODATA, "empty sysfs attribute", path)
    return int(text)


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class HwmonChannel:
    """The files of one rail: any of power (µW), curr (mA), in (mV) may be None."""

    rail: str
    device: str
    power_path: Optional[str]
    curr_path: Optional[str]
    in_path: Optional[str]
    is_total: bool = False


def scan_hwmon(root: str = DEFAULT_HWMON_ROOT, names: Optional[Sequence[str]] = None,
               total_rail: Optional[str] = None) -> List[HwmonChannel]:
    """Every power/current channel under ``root`` (optionally only devices whose ``name`` is in ``names``).

    The total is ``total_rail`` if given, else a rail labelled like a board input (``VDD_IN``…),
    else the only rail when there is exactly one.
    """
    channels: List[HwmonChannel] = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return []
    for entry in entries:
        dev = os.path.join(root, entry)
        dev_name = _read_text(os.path.join(dev, "name")) or entry
        if names and dev_name not in names:
            continue
        try:
            files = set(os.listdir(dev))
        except OSError:
            continue
        indices = sorted({int(m.group(2)) for m in map(_CHANNEL_RE.match, files) if m})
        for n in indices:
            label = None
            for kind in ("power", "curr", "in"):
                if f"{kind}{n}_label" in files:
                    label = _read_text(os.path.join(dev, f"{kind}{n}_label"))
                    if label:
                        break
            if label is not None and label.strip().upper() in UNCONNECTED_LABELS:
                continue
            rail = label or (dev_name if len(indices) == 1 else f"{dev_name}_{n}")

            def path(kind: str, n: int = n, files: Set[str] = files, dev: str = dev) -> Optional[str]:
                fname = f"{kind}{n}_input"
                return os.path.join(dev, fname) if fname in files else None

            channels.append(HwmonChannel(rail, dev, path("power"), path("curr"), path("in")))
    # rail names must be unique in the log
    seen: Dict[str, int] = {}
    unique: List[HwmonChannel] = []
    for ch in channels:
        count = seen.get(ch.rail, 0)
        seen[ch.rail] = count + 1
        unique.append(ch if count == 0 else _with(ch, rail=f"{ch.rail}#{count + 1}"))
    return _mark_total(unique, total_rail)


def _with(ch: HwmonChannel, **changes: object) -> HwmonChannel:
    values = dict(ch.__dict__)
    values.update(changes)
    return HwmonChannel(**values)  # type: ignore[arg-type]


def _mark_total(channels: List[HwmonChannel], total_rail: Optional[str]) -> List[HwmonChannel]:
    target: Optional[str] = None
    rails = [c.rail for c in channels]
    if total_rail is not None:
        target = total_rail if total_rail in rails else None
    else:
        for label in TOTAL_LABELS:
            if label in rails:
                target = label
                break
        if target is None and len(channels) == 1:
            target = channels[0].rail
    return [_with(c, is_total=True) if c.rail == target else c for c in channels]


class HwmonSource(PowerSource):
    """Rails from the kernel hwmon class.

    Parameters: ``root`` (default ``/sys/class/hwmon``; tests pass a temp dir), ``names`` (only
    devices whose ``name`` is listed, e.g. ``["ina219"]``), ``total_rail`` (the rail that is the
    whole board), ``min_interval`` (s; most hwmon drivers refresh every few ms, default 0.01).
    """

    name = "hwmon"

    def __init__(self, root: str = DEFAULT_HWMON_ROOT, names: Optional[Sequence[str]] = None,
                 total_rail: Optional[str] = None, min_interval: float = 0.01) -> None:
        self.root = root
        self.names = list(names) if names else None
        self.total_rail = total_rail
        self._min_interval = float(min_interval)
        self.channels: List[HwmonChannel] = []

    @property
    def min_interval_s(self) -> float:
        return self._min_interval

    def describe(self) -> str:
        rails = ", ".join(c.rail for c in self.channels) or "no rails"
        return f"hwmon under {self.root} ({rails})"

    def open(self) -> None:
        self.channels = scan_hwmon(self.root, self.names, self.total_rail)
        if not self.channels:
            which = f" named {self.names}" if self.names else ""
            raise PowerSourceError(f"hwmon: no sensor{which} with power*_input or curr*_input under {self.root}")

    def read(self) -> PowerReading:
        if not self.channels:
            raise PowerSourceError("hwmon is not open")
        ts, mono = time.time(), time.monotonic()
        rails: List[RailReading] = []
        total_w: Optional[float] = None
        for ch in self.channels:
            volts = read_sysfs_int(ch.in_path) / 1000.0 if ch.in_path else None
            amps = read_sysfs_int(ch.curr_path) / 1000.0 if ch.curr_path else None
            if ch.power_path:
                watts: Optional[float] = read_sysfs_int(ch.power_path) / 1e6
            else:
                watts = volts * amps if volts is not None and amps is not None else None
            rails.append(RailReading(ch.rail, volts=volts, amps=amps, watts=watts, is_total=ch.is_total))
            if ch.is_total:
                total_w = watts
        if not any(ch.is_total for ch in self.channels):
            watts_all = [r.watts for r in rails]
            total_w = sum(w for w in watts_all if w is not None) if None not in watts_all else None
        return PowerReading(ts=ts, t_mono=mono, source=self.name, rails=rails, total_w=total_w)

    def close(self) -> None:
        self.channels = []
