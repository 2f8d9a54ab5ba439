"""The power-source interface: one reading = volts, amps, watts per rail plus a board total.

Every adapter (``ina219``, ``jtop``, ``hwmon``, ``none``) implements :class:`PowerSource`.
Units are SI throughout: volts (V), amperes (A), watts (W), degrees Celsius, seconds.
Adapters import their hardware library inside ``open()`` (or ``check_dependencies()``),
so importing this package never needs pi-ina219 or jetson-stats.
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

from edged.errors import ConfigError, EdgedError

log = logging.getLogger(__name__)

#: A Pi's ``vcgencmd get_throttled`` value as printed ("0x50005") or a raw int.
Throttled = Union[str, int]


class PowerSourceError(EdgedError):
    """A sensor could not be opened or read; the message says what to fix.

    The sampler treats it like any I/O error: report once, back off, retry.
    """


@dataclass(frozen=True)
class RailReading:
    """One rail's instantaneous measurement. ``None`` where the sensor cannot tell (or overflowed).

    ``volts`` in V, ``amps`` in A, ``watts`` in W. ``is_total`` marks the rail that measures the
    whole board (e.g. INA219 on the 5 V input, jtop's ``tot``); summing rails would double-count.
    """

    rail: str
    volts: Optional[float] = None
    amps: Optional[float] = None
    watts: Optional[float] = None
    is_total: bool = False


@dataclass(frozen=True)
class PowerReading:
    """One sample of a power source.

    ``ts``: wall clock (unix s); ``t_mono``: ``time.monotonic()`` s at the read;
    ``source``: adapter name; ``rails``: every rail read; ``total_w``: whole-board power in W
    (None when unknown); ``temp_c``: hottest thermal zone in °C; ``throttled``: Pi throttle flags.
    """

    ts: float
    t_mono: float
    source: str
    rails: List[RailReading] = field(default_factory=list)
    total_w: Optional[float] = None
    temp_c: Optional[float] = None
    throttled: Optional[Throttled] = None


def now_pair() -> Tuple[float, float]:
    """(unix s, monotonic s) taken together."""
    return time.time(), time.monotonic()


def total_of(rails: List[RailReading]) -> Optional[float]:
    """The board total in W: the rail flagged ``is_total``; else the single rail; else None."""
    for r in rails:
        if r.is_total:
            return r.watts
    if len(rails) == 1:
        return rails[0].watts
    return None


class PowerSource(abc.ABC):
    """A power sensor adapter. Lifecycle: ``open()`` → ``read()``… → ``close()``.

    ``read()`` raises (``OSError``, :class:`PowerSourceError`, …) when the sensor fails; the sampler
    then calls ``close()`` and later ``open()`` again, so ``open()`` must work after ``close()``.
    """

    #: registry name of the adapter ("ina219", "jtop", "hwmon", "none")
    name: str = "abstract"
    #: True only for the no-op source: the sampler then runs no thread and writes nothing
    is_null: bool = False

    @classmethod
    def check_dependencies(cls) -> None:
        """Raise :class:`edged.errors.MissingDependencyError` naming the pip extra if a library is missing."""
        return None

    def require_dependencies(self) -> None:
        """Like :meth:`check_dependencies`, for this instance (an injected client needs no library)."""
        self.check_dependencies()

    @property
    def min_interval_s(self) -> float:
        """The shortest sane sampling interval in s (sensor conversion time, service refresh period)."""
        return 0.01

    @abc.abstractmethod
    def open(self) -> None:
        """Connect to / configure the sensor. Raises on failure."""

    @abc.abstractmethod
    def read(self) -> PowerReading:
        """Take one reading now. Raises on I/O failure."""

    def close(self) -> None:
        """Release the sensor. Never raises."""
        return None

    def describe(self) -> str:
        """One line naming the sensor for logs (e.g. 'ina219 bus 1 addr 0x40')."""
        return self.name


class NullPowerSource(PowerSource):
    """``none``: no sensor. The sampler writes nothing and ``energy_mj`` returns None."""

    name = "none"
    is_null = True

    def __init__(self, **_options: Any) -> None:
        pass

    def open(self) -> None:
        pass

    def read(self) -> PowerReading:
        ts, mono = now_pair()
        return PowerReading(ts=ts, t_mono=mono, source=self.name)


_REGISTRY: Dict[str, Callable[[], Type[PowerSource]]] = {}


def register_power_source(name: str, loader: Callable[[], Type[PowerSource]]) -> None:
    """Register an adapter class under ``name``; ``loader`` imports it lazily."""
    _REGISTRY[name] = loader


def power_source_class(name: str) -> Type[PowerSource]:
    """The adapter class for ``name``; :class:`ConfigError` naming the known kinds otherwise."""
    try:
        loader = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(list(_REGISTRY) + ["auto"]))
        raise ConfigError(f"unknown power source type {name!r}: expected one of {known}") from None
    return loader()


def known_power_sources() -> List[str]:
    """Registered adapter names (without 'auto')."""
    return sorted(_REGISTRY)


#: the order ``auto`` tries adapters in: a running jtop service, a kernel hwmon sensor, an INA219 on I2C
AUTO_ORDER = ("jtop", "hwmon", "ina219")


def make_power_source(kind: str = "auto", **options: Any) -> PowerSource:
    """Build a power source by type name; the result is not opened yet (the sampler opens it).

    ``kind``: "auto" | "ina219" | "jtop" | "hwmon" | "none" (or any registered name).
    ``options``: constructor keywords of that adapter. For ``auto``, pass one dict per kind
    (``make_power_source("auto", ina219={"busnum": 1}, hwmon={"root": "/sys/class/hwmon"})``);
    ``auto`` opens and reads each candidate once in :data:`AUTO_ORDER`, logs which it picked
    and why the others were skipped, and falls back to ``none``.

    Raises :class:`ConfigError` for an unknown kind or bad options and
    :class:`edged.errors.MissingDependencyError` when an explicit kind's library is missing.
    """
    if kind != "auto":
        cls = power_source_class(kind)
        try:
            source = cls(**options)
        except TypeError as exc:
            raise ConfigError(f"power source {kind!r}: bad options {sorted(options)}: {exc}") from exc
        source.require_dependencies()
        return source
    unknown = [k for k in options if k not in _REGISTRY]
    if unknown:
        raise ConfigError(f"power source 'auto' takes per-kind option tables {list(AUTO_ORDER)}, got {unknown}")
    skipped: List[str] = []
    for candidate in AUTO_ORDER:
        opts = options.get(candidate) or {}
        try:
            source = power_source_class(candidate)(**opts)
            source.require_dependencies()
            source.open()
            try:
                source.read()
            finally:
                source.close()
        except Exception as exc:  # probing: any failure just means "not this one"
            skipped.append(f"{candidate}: {exc}")
            continue
        log.info("power source auto-detected: %s (skipped: %s)", source.describe(), "; ".join(skipped) or "none")
        return source
    log.info("no power sensor found, power logging off (%s)", "; ".join(skipped))
    return NullPowerSource()


def _load_none() -> Type[PowerSource]:
    return NullPowerSource


def _load_ina219() -> Type[PowerSource]:
    from edged.power.ina219 import INA219Source

    return INA219Source


def _load_jtop() -> Type[PowerSource]:
    from edged.power.jtop import JtopSource

    return JtopSource


def _load_hwmon() -> Type[PowerSource]:
    from edged.power.hwmon import HwmonSource

    return HwmonSource


register_power_source("none", _load_none)
register_power_source("ina219", _load_ina219)
register_power_source("jtop", _load_jtop)
register_power_source("hwmon", _load_hwmon)
