"""``ina219``: a TI INA219 current/power monitor on I2C, read through pi-ina219.

pi-ina219 (``pip install 'edged[pi]'``) talks to the chip through Adafruit-GPIO's I2C layer.
``busnum`` is always passed (Adafruit-GPIO cannot guess the bus on a Pi 4 or a Jetson).
``configure()`` runs in :meth:`INA219Source.open`, so calibration is rewritten after every
reconnect (a chip that lost power forgets it).

A current above the configured range (``DeviceRangeError``) gives a reading whose amps and
watts are None (the bus voltage is still valid), counted and warned at most once a minute.
I/O errors (``OSError``) are raised to the sampler, which backs off and reopens.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional, Tuple, Union

from edged.errors import ConfigError, MissingDependencyError
from edged.power.base import PowerReading, PowerSource, RailReading

log = logging.getLogger(__name__)

PIP_HINT = "power source 'ina219' needs pi-ina219: pip install 'edged[pi]'"

#: ADC setting name → (pi-ina219 constant value, conversion time in s) from the INA219 datasheet table 5
ADC_MODES: Dict[str, Tuple[int, float]] = {
    "9bit": (0, 84e-6),
    "10bit": (1, 148e-6),
    "11bit": (2, 276e-6),
    "12bit": (3, 532e-6),
    "2samp": (9, 1.06e-3),
    "4samp": (10, 2.13e-3),
    "8samp": (11, 4.26e-3),
    "16samp": (12, 8.51e-3),
    "32samp": (13, 17.02e-3),
    "64samp": (14, 34.05e-3),
    "128samp": (15, 68.10e-3),
}

#: gain (full-scale shunt voltage in mV) → pi-ina219 constant; "auto" lets the library step up on overflow
GAINS: Dict[str, int] = {"auto": -1, "40": 0, "80": 1, "160": 2, "320": 3}

#: shortest interval the sampler may use, even with the fastest ADC setting (s)
MIN_INTERVAL_FLOOR_S = 0.002
#: at most one DeviceRangeError warning per this many seconds
RANGE_WARNING_PERIOD_S = 60.0


def _adc_mode(value: Union[str, int], key: str) -> Tuple[int, float]:
    name = str(value).lower().replace("-", "").replace("_", "").replace(" ", "")
    if name.isdigit():  # bare sample count: 1 → 12bit, 2..128 → averaged
        name = "12bit" if name == "1" else f"{name}samp"
    if name not in ADC_MODES:
        raise ConfigError(f"ina219 {key}={value!r}: expected one of {', '.join(ADC_MODES)} or a sample count 1..128")
    return ADC_MODES[name]


class INA219Source(PowerSource):
    """One INA219 measuring one rail (normally the board's 5 V input, so it is the total).

    Parameters: ``shunt_ohms`` (Ω, 0.1 on the common breakout), ``max_expected_amps`` (A; None
    lets pi-ina219 pick the widest range), ``busnum`` (I2C bus number, /dev/i2c-N; default 1 = Pi
    header pins 3/5), ``address`` (7-bit, 0x40..0x4F by the A0/A1 jumpers), ``voltage_range``
    (16 or 32 V), ``gain`` ("auto" or full-scale shunt mV 40/80/160/320), ``bus_adc``/``shunt_adc``
    ("9bit".."12bit" or "2samp".."128samp", or a sample count), ``rail`` (name in the log),
    ``is_total`` (this rail is the whole board's supply).
    """

    name = "ina219"

    def __init__(
        self,
        shunt_ohms: float = 0.1,
        max_expected_amps: Optional[float] = None,
        busnum: int = 1,
        address: int = 0x40,
        voltage_range: int = 32,
        gain: Union[str, int] = "auto",
        bus_adc: Union[str, int] = "12bit",
        shunt_adc: Union[str, int] = "12bit",
        rail: str = "ina219",
        is_total: bool = True,
    ) -> None:
        if shunt_ohms <= 0:
            raise ConfigError(f"ina219 shunt_ohms={shunt_ohms!r}: must be > 0 (Ω)")
        if voltage_range not in (16, 32):
            raise ConfigError(f"ina219 voltage_range={voltage_range!r}: expected 16 or 32 (V)")
        if str(gain).lower() not in GAINS:
            raise ConfigError(f"ina219 gain={gain!r}: expected 'auto', 40, 80, 160 or 320 (mV full scale)")
        if not 0x03 <= int(address) <= 0x77:
            raise ConfigError(f"ina219 address={address!r}: not a 7-bit I2C address")
        self.shunt_ohms = float(shunt_ohms)
        self.max_expected_amps = max_expected_amps
        self.busnum = int(busnum)
        self.address = int(address)
        self.voltage_range = voltage_range
        self.gain = GAINS[str(gain).lower()]
        self.bus_adc, bus_t = _adc_mode(bus_adc, "bus_adc")
        self.shunt_adc, shunt_t = _adc_mode(shunt_adc, "shunt_adc")
        self._conversion_s = bus_t + shunt_t
        self.rail = rail
        self.is_total = is_total
        self._dev: Any = None
        self._range_errors = 0
        self._range_errors_reported = 0
        self._last_range_warning = -RANGE_WARNING_PERIOD_S

    @classmethod
    def check_dependencies(cls) -> None:
        try:
            import ina219  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError(f"{PIP_HINT} ({exc})") from exc

    @property
    def min_interval_s(self) -> float:
        """Bus + shunt conversion time of the configured ADC modes (s), at least 2 ms."""
        return max(self._conversion_s, MIN_INTERVAL_FLOOR_S)

    @property
    def range_errors(self) -> int:
        """How many reads overflowed the configured current range."""
        return self._range_errors

    def describe(self) -> str:
        return f"ina219 on /dev/i2c-{self.busnum} address {self.address:#04x} (shunt {self.shunt_ohms} Ω)"

    def open(self) -> None:
        self.check_dependencies()
        from ina219 import INA219

        dev = INA219(self.shunt_ohms, self.max_expected_amps, busnum=self.busnum, address=self.address)
        try:
            dev.configure(
                voltage_range=INA219.RANGE_32V if self.voltage_range == 32 else INA219.RANGE_16V,
                gain=self.gain,
                bus_adc=self.bus_adc,
                shunt_adc=self.shunt_adc,
            )
        except ValueError as exc:  # pi-ina219's range checks: max_expected_amps vs shunt
            raise ConfigError(f"ina219: {exc} (shunt_ohms={self.shunt_ohms}, "
                              f"max_expected_amps={self.max_expected_amps})") from exc
        self._dev = dev

    def read(self) -> PowerReading:
        from ina219 import DeviceRangeError

        if self._dev is None:
            raise OSError("ina219 is not open")
        ts, mono = time.time(), time.monotonic()
        volts = float(self._dev.voltage())
        amps: Optional[float]
        watts: Optional[float]
        try:
            amps = float(self._dev.current()) / 1000.0
            watts = float(self._dev.power()) / 1000.0
        except DeviceRangeError as exc:
            amps = watts = None
            self._note_range_error(exc)
        rail = RailReading(self.rail, volts=volts, amps=amps, watts=watts, is_total=self.is_total)
        return PowerReading(ts=ts, t_mono=mono, source=self.name, rails=[rail],
                            total_w=watts if self.is_total else None)

    def _note_range_error(self, exc: Exception) -> None:
        self._range_errors += 1
        now = time.monotonic()
        if now - self._last_range_warning >= RANGE_WARNING_PERIOD_S:
            new = self._range_errors - self._range_errors_reported
            log.warning("ina219: current out of range (%s); %d such reads since the last warning, %d in total; "
                        "use a smaller shunt or a larger max_expected_amps", exc, new, self._range_errors)
            self._range_errors_reported = self._range_errors
            self._last_range_warning = now

    def close(self) -> None:
        self._dev = None  # pi-ina219 keeps no handle we can close; the SMBus file closes when collected
