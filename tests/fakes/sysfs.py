"""``/sys/class/hwmon`` and ``/sys/class/thermal`` trees in a temporary directory.

Values are written in place (same inode), the way sysfs attributes change under a reader.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, Optional


def write_attr(path: str, value: object) -> None:
    """Write one attribute file (creating directories), with the trailing newline sysfs prints.

    Overwrites from offset 0 and then truncates, so a concurrent reader never sees an empty file.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = f"{value}\n".encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


class FakeHwmonDevice:
    """One ``hwmonN`` directory: ``name`` plus any attributes."""

    def __init__(self, root: str, index: int, name: str) -> None:
        self.path = os.path.join(root, f"hwmon{index}")
        write_attr(os.path.join(self.path, "name"), name)

    def set(self, attr: str, value: object) -> FakeHwmonDevice:
        write_attr(os.path.join(self.path, attr), value)
        return self

    def remove(self) -> None:
        """The device disappears (driver unbound, sensor unplugged)."""
        shutil.rmtree(self.path, ignore_errors=True)


def ina219_hwmon(root: str, index: int = 0, bus_mv: int = 5080, shunt_mv: int = 61, current_ma: int = 610,
                 power_uw: int = 3098800) -> FakeHwmonDevice:
    """What the kernel's ina2xx driver exposes for an INA219: in0 shunt mV, in1 bus mV, curr1 mA, power1 µW."""
    dev = FakeHwmonDevice(root, index, "ina219")
    dev.set("in0_input", shunt_mv).set("in1_input", bus_mv).set("curr1_input", current_ma)
    dev.set("power1_input", power_uw).set("shunt_resistor", 100000).set("update_interval", 1)
    return dev


def ina3221_hwmon(root: str, index: int = 1, rails: Optional[Dict[str, tuple]] = None) -> FakeHwmonDevice:
    """A Jetson-style ina3221: channels 1..3 with in<N>_label, in<N>_input (bus mV), curr<N>_input (mA)."""
    rails = rails or {"VDD_IN": (5000, 1400), "VDD_CPU_GPU_CV": (4968, 400), "NC": (0, 0)}
    dev = FakeHwmonDevice(root, index, "ina3221")
    for n, (label, (mv, ma)) in enumerate(rails.items(), start=1):
        dev.set(f"in{n}_label", label).set(f"in{n}_input", mv).set(f"curr{n}_input", ma)
        dev.set(f"in{n + 3}_input", ma // 10)  # shunt voltages: no curr channel, so not a rail
    return dev


def cpu_thermal_hwmon(root: str, index: int = 2) -> FakeHwmonDevice:
    """A temperature-only hwmon device (must be ignored by the power scan)."""
    return FakeHwmonDevice(root, index, "cpu_thermal").set("temp1_input", 48312)


def thermal_zone(root: str, index: int, zone_type: str, millideg: int) -> str:
    """``thermal_zoneN`` with ``type`` and ``temp`` (m°C); returns the temp file path."""
    zone = os.path.join(root, f"thermal_zone{index}")
    write_attr(os.path.join(zone, "type"), zone_type)
    temp = os.path.join(zone, "temp")
    write_attr(temp, millideg)
    return temp
