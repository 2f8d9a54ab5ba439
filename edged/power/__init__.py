"""Power and thermal logging: sensor adapters, the sampler, energy per window, the learned power model.

Adapters (``ina219``, ``jtop``, ``hwmon``, ``none``) are built by :func:`make_power_source`;
their hardware libraries are imported only when opened.
"""

from __future__ import annotations

from edged.power.base import (
    NullPowerSource,
    PowerReading,
    PowerSource,
    PowerSourceError,
    RailReading,
    known_power_sources,
    make_power_source,
    register_power_source,
)
from edged.power.energy import ActivityTracker, PowerModel
from edged.power.sampler import PowerSampler, integrate_mj, reading_to_records
from edged.power.thermal import ThermalReader, decode_throttled

__all__ = [
    "ActivityTracker",
    "NullPowerSource",
    "PowerModel",
    "PowerReading",
    "PowerSampler",
    "PowerSource",
    "PowerSourceError",
    "RailReading",
    "ThermalReader",
    "decode_throttled",
    "integrate_mj",
    "known_power_sources",
    "make_power_source",
    "reading_to_records",
    "register_power_source",
]
