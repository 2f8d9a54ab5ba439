"""Battery state from ``/sys/class/power_supply`` (the Linux power-supply class), for the power log.

Every ``<root>/<name>/`` whose ``type`` is ``Battery`` is a battery. Its attributes, in the
kernel's units (Documentation/ABI/testing/sysfs-class-power): ``capacity`` (%),
``energy_now`` / ``energy_full`` (µWh), ``power_now`` (µW), ``voltage_now`` (µV),
``current_now`` (µA), ``charge_now`` / ``charge_full`` (µAh), ``status`` (Charging,
Discharging, Full, Not charging, Unknown). A driver may provide any subset: what is missing
is None, and a battery that reports ``charge_*`` instead of ``energy_*`` gets its energy as
charge x voltage. Power is ``power_now``, else ``voltage_now x current_now``.

Reads are rate-limited (``period_s``: batteries update every few seconds and some drivers
talk to an I2C fuel gauge on every read); a read that fails yields None, never an exception.
The root is injectable so tests use a fake sysfs directory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

log = logging.getLogger(__name__)

DEFAULT_POWER_SUPPLY_ROOT = "/sys/class/power_supply"


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return None


def _read_micro(path: str) -> Optional[float]:
    """A sysfs integer in micro-units as base units (µWh -> Wh, µW -> W, ...), or None."""
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text) / 1e6
    except ValueError:
        return None


@dataclass(frozen=True)
class BatteryReading:
    """One battery's state. Units: %, Wh, W, V, A; None where the driver does not say.

    ``power_w`` is the magnitude the kernel reports (discharge power while ``Discharging``)."""

    name: str
    status: Optional[str] = None
    capacity_pct: Optional[float] = None
    energy_wh: Optional[float] = None
    energy_full_wh: Optional[float] = None
    power_w: Optional[float] = None
    volts: Optional[float] = None
    amps: Optional[float] = None

    def to_record(self) -> Dict[str, Any]:
        """The battery fields of a power-log record."""
        return {
            "battery": self.name,
            "battery_status": self.status,
            "battery_pct": _round(self.capacity_pct, 1),
            "battery_wh": _round(self.energy_wh, 6),
            "battery_full_wh": _round(self.energy_full_wh, 6),
            "battery_w": _round(self.power_w, 6),
        }


def _round(v: Optional[float], digits: int) -> Optional[float]:
    return None if v is None else round(v, digits)


def find_batteries(root: str = DEFAULT_POWER_SUPPLY_ROOT) -> List[str]:
    """Names of the power supplies under ``root`` whose ``type`` is ``Battery``, sorted."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [n for n in names if (_read_text(os.path.join(root, n, "type")) or "").lower() == "battery"]


def read_battery(name: str, root: str = DEFAULT_POWER_SUPPLY_ROOT) -> BatteryReading:
    """Read one battery's attributes (missing ones are None)."""
    d = os.path.join(root, name)
    capacity = _read_text(os.path.join(d, "capacity"))
    volts = _read_micro(os.path.join(d, "voltage_now"))
    amps = _read_micro(os.path.join(d, "current_now"))
    energy = _read_micro(os.path.join(d, "energy_now"))
    energy_full = _read_micro(os.path.join(d, "energy_full"))
    if energy is None and volts is not None:
        charge = _read_micro(os.path.join(d, "charge_now"))  # Ah
        energy = None if charge is None else charge * volts
        charge_full = _read_micro(os.path.join(d, "charge_full"))
        energy_full = energy_full if charge_full is None else charge_full * volts
    power = _read_micro(os.path.join(d, "power_now"))
    if power is None and volts is not None and amps is not None:
        power = abs(volts * amps)
    try:
        pct = float(capacity) if capacity is not None else None
    except ValueError:
        pct = None
    if pct is None and energy is not None and energy_full:
        pct = 100.0 * energy / energy_full
    return BatteryReading(name, _read_text(os.path.join(d, "status")), pct, energy, energy_full,
                          None if power is None else abs(power), volts, amps)


class BatteryReader:
    """The batteries under ``root`` (or only ``names``), read at most every ``period_s``.

    ``available`` is False on a board without a battery (most Pis and Jetsons on a wall supply):
    then :meth:`read` returns [] and the power log is unchanged."""

    def __init__(self, root: str = DEFAULT_POWER_SUPPLY_ROOT, names: Optional[Sequence[str]] = None,
                 period_s: float = 5.0, clock: Any = time.monotonic) -> None:
        self.root = root
        self.names = list(names) if names is not None else find_batteries(root)
        self.period_s = period_s
        self._clock = clock
        self._last: List[BatteryReading] = []
        self._last_t: Optional[float] = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return bool(self.names)

    def read(self) -> List[BatteryReading]:
        """Every battery's state, re-read when the last read is older than ``period_s``."""
        if not self.names:
            return []
        with self._lock:
            now = self._clock()
            if self._last_t is None or now - self._last_t >= self.period_s:
                out = []
                for n in self.names:
                    try:
                        out.append(read_battery(n, self.root))
                    except Exception as exc:  # a driver error costs this read, never the sampler
                        log.debug("battery %s: %s", n, exc)
                self._last, self._last_t = out, now
            return list(self._last)

    def records(self, ts: float, t_mono: float, seq: int) -> List[Dict[str, Any]]:
        """One power-log record per battery, shaped like a rail record of the sampler (``rail``
        ``battery:<name>``, ``watts`` the battery's power, ``total`` false) plus the battery fields."""
        out = []
        for b in self.read():
            out.append({
                "ts": round(ts, 6), "t_mono": round(t_mono, 6), "seq": seq, "source": "battery",
                "rail": f"battery:{b.name}", "volts": _round(b.volts, 6), "amps": _round(b.amps, 6),
                "watts": _round(b.power_w, 6), "total": False, **b.to_record(),
            })
        return out
