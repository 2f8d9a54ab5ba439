"""Board temperature from ``/sys/class/thermal`` and, on a Raspberry Pi, throttling flags from ``vcgencmd``.

``thermal_zone*/temp`` is in m°C. ``vcgencmd get_throttled`` prints ``throttled=0x50005``; the bits
are decoded by :func:`decode_throttled`. vcgencmd is run at most every ``throttle_period_s`` with a
timeout, and only when it is on ``PATH``; anything that fails yields None, never an exception.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from typing import Dict, List, Optional, Tuple, Union

from edged.power.hwmon import read_sysfs_int

log = logging.getLogger(__name__)

DEFAULT_THERMAL_ROOT = "/sys/class/thermal"
_THROTTLED_RE = re.compile(r"throttled=(0x[0-9a-fA-F]+)")

#: bit → meaning, from the Raspberry Pi documentation of ``vcgencmd get_throttled``
THROTTLE_BITS: Dict[int, str] = {
    0: "under-voltage",
    1: "arm-frequency-capped",
    2: "throttled",
    3: "soft-temperature-limit",
    16: "under-voltage-occurred",
    17: "arm-frequency-capping-occurred",
    18: "throttling-occurred",
    19: "soft-temperature-limit-occurred",
}


def parse_throttled(text: str) -> Optional[str]:
    """``'throttled=0x50005\\n'`` → ``'0x50005'``; None when the text has no such field."""
    match = _THROTTLED_RE.search(text)
    return match.group(1).lower() if match else None


def decode_throttled(value: Union[str, int]) -> List[str]:
    """The names of the set bits of a ``get_throttled`` value ('0x50005' or 0x50005)."""
    bits = int(value, 16) if isinstance(value, str) else int(value)
    return [name for bit, name in sorted(THROTTLE_BITS.items()) if bits & (1 << bit)]


class ThermalReader:
    """Reads the thermal zones (°C) and the Pi's throttle flags.

    Parameters: ``root`` (default ``/sys/class/thermal``), ``vcgencmd`` (path or name of the tool;
    None disables, "auto" uses it when found on PATH), ``throttle_period_s`` (run vcgencmd at most
    this often, s), ``timeout_s`` (vcgencmd timeout, s).
    """

    def __init__(self, root: str = DEFAULT_THERMAL_ROOT, vcgencmd: Optional[str] = "auto",
                 throttle_period_s: float = 5.0, timeout_s: float = 1.0) -> None:
        self.root = root
        self.throttle_period_s = throttle_period_s
        self.timeout_s = timeout_s
        self._vcgencmd: Optional[str] = shutil.which("vcgencmd" if vcgencmd == "auto" else vcgencmd) \
            if vcgencmd else None
        self._zones: Optional[List[Tuple[str, str]]] = None
        self._throttled: Optional[str] = None
        self._throttled_at = -float("inf")
        self._lock = threading.Lock()
        self.vcgencmd_failures = 0

    def zones(self) -> List[Tuple[str, str]]:
        """(zone name, temp path) pairs, named by the zone's ``type`` file (e.g. 'cpu-thermal')."""
        if self._zones is None:
            found = []
            for zone in sorted(glob.glob(os.path.join(self.root, "thermal_zone*"))):
                temp = os.path.join(zone, "temp")
                if os.path.exists(temp):
                    try:
                        with open(os.path.join(zone, "type"), encoding="utf-8") as fh:
                            name = fh.read().strip() or os.path.basename(zone)
                    except OSError:
                        name = os.path.basename(zone)
                    found.append((name, temp))
            self._zones = found
        return self._zones

    def read_zones(self) -> Dict[str, float]:
        """Every readable zone's temperature in °C (a zone that fails to read is left out)."""
        temps: Dict[str, float] = {}
        for name, path in self.zones():
            try:
                temps[name] = read_sysfs_int(path) / 1000.0
            except (OSError, ValueError):
                continue
        if not temps and self._zones:
            self._zones = None  # zones vanished (or never were): rescan next time
        return temps

    def max_temp_c(self) -> Optional[float]:
        """The hottest zone in °C, or None without thermal zones."""
        temps = self.read_zones()
        return max(temps.values()) if temps else None

    def throttled(self) -> Optional[str]:
        """The last ``get_throttled`` value ('0x0'…), refreshed at most every ``throttle_period_s``; None off a Pi."""
        if self._vcgencmd is None:
            return None
        with self._lock:
            now = time.monotonic()
            if now - self._throttled_at < self.throttle_period_s:
                return self._throttled
            self._throttled_at = now
            try:
                out = subprocess.run([self._vcgencmd, "get_throttled"], capture_output=True, text=True,
                                     timeout=self.timeout_s, check=False)
                value = parse_throttled(out.stdout)
            except (OSError, subprocess.SubprocessError) as exc:
                value = None
                self.vcgencmd_failures += 1
                if self.vcgencmd_failures == 1:
                    log.warning("vcgencmd get_throttled failed (%s); throttle flags will be null", exc)
            self._throttled = value
            return value
