"""A register-level TI INA219 on a fake I2C bus, under Adafruit-GPIO's SMBus seam.

``Adafruit_GPIO.I2C.Device`` does ``Adafruit_PureIO.smbus.SMBus(busnum)`` and then calls
``read_word_data`` / ``write_i2c_block_data`` on it. :func:`patch_smbus` swaps that class for
:class:`FakeSMBus`, which routes each transfer to a :class:`FakeINA219Chip` by address, so
pi-ina219's calibration, gain stepping and overflow handling run for real.

The chip model follows the datasheet (SBOS448): config 0x00 (RST, BRNG, PG1:0, BADC, SADC, MODE;
reset value 0x399F), shunt voltage 0x01 (signed, 10 µV LSB, clipped at the PGA full scale),
bus voltage 0x02 (bits 15:3 at 4 mV, CNVR bit 1, OVF bit 0), power 0x03 (current × bus / 5000),
current 0x04 (shunt × calibration / 4096), calibration 0x05 (bit 0 always reads 0).
"""

from __future__ import annotations

import contextlib
import errno
import math
import threading
from typing import Dict, Iterator, List, Optional, Tuple
from unittest import mock

REG_CONFIG, REG_SHUNT, REG_BUS, REG_POWER, REG_CURRENT, REG_CALIBRATION = range(6)
CONFIG_RESET_VALUE = 0x399F


def _s16(value: int) -> int:
    return value & 0xFFFF


class FakeINA219Chip:
    """The chip's registers plus the physics it measures: ``bus_volts`` (V) and ``amps`` (A) through ``shunt_ohms``."""

    def __init__(self, shunt_ohms: float = 0.1, bus_volts: float = 5.0, amps: float = 0.5) -> None:
        self.shunt_ohms = shunt_ohms
        self.bus_volts = bus_volts
        self.amps = amps
        self.config = CONFIG_RESET_VALUE
        self.calibration = 0
        self._cnvr = False
        self._lock = threading.Lock()
        self.writes: List[tuple] = []  # (register, value) in order, for assertions

    # -- what the datasheet calls the measurement engine -------------------------------------
    @property
    def gain_index(self) -> int:
        """PG1:0: 0 → ±40 mV, 1 → ±80 mV, 2 → ±160 mV, 3 → ±320 mV full scale."""
        return (self.config >> 11) & 0x3

    @property
    def brng_32v(self) -> bool:
        return bool(self.config & (1 << 13))

    def _shunt_raw(self) -> Tuple[int, bool]:
        limit = 4000 << self.gain_index  # full scale in 10 µV steps
        raw = int(round(self.amps * self.shunt_ohms / 10e-6))
        if abs(raw) > limit:
            return (limit if raw > 0 else -limit), True
        return raw, False

    def _bus_raw(self) -> int:
        full_scale = 32.0 if self.brng_32v else 16.0
        volts = min(max(self.bus_volts, 0.0), full_scale)
        return min(int(round(volts / 0.004)), 0x1FFF)

    def _current_raw(self) -> Tuple[int, bool]:
        shunt, clipped = self._shunt_raw()
        current = math.trunc(shunt * self.calibration / 4096)
        overflow = clipped or not -32768 <= current <= 32767
        return max(-32768, min(32767, current)), overflow

    def _power_raw(self) -> Tuple[int, bool]:
        current, overflow = self._current_raw()
        power = math.trunc(abs(current) * self._bus_raw() / 5000)
        return min(power, 0xFFFF), overflow or power > 0xFFFF

    # -- register file ------------------------------------------------------------------------
    def write_register(self, register: int, value: int) -> None:
        with self._lock:
            self.writes.append((register, value))
            if register == REG_CONFIG:
                if value & 0x8000:  # RST: back to power-on defaults
                    self.config, self.calibration = CONFIG_RESET_VALUE, 0
                else:
                    self.config = value & 0x7FFF
                self._cnvr = False
            elif register == REG_CALIBRATION:
                self.calibration = value & 0xFFFE
            else:
                raise OSError(errno.EREMOTEIO, f"register {register:#04x} is read-only")

    def read_register(self, register: int) -> int:
        with self._lock:
            if register == REG_CONFIG:
                return self.config
            if register == REG_SHUNT:
                return _s16(self._shunt_raw()[0])
            if register == REG_BUS:
                _, overflow = self._power_raw()
                self._cnvr = True  # a conversion has always completed by the time the host asks
                return (self._bus_raw() << 3) | (2 if self._cnvr else 0) | (1 if overflow else 0)
            if register == REG_POWER:
                self._cnvr = False  # reading the power register clears CNVR
                return self._power_raw()[0]
            if register == REG_CURRENT:
                return _s16(self._current_raw()[0])
            if register == REG_CALIBRATION:
                return self.calibration
            raise OSError(errno.EREMOTEIO, "Remote I/O error")


class FakeI2CBus:
    """``/dev/i2c-N``: chips by 7-bit address; can be made to fail (every transfer raises EREMOTEIO/EIO)."""

    def __init__(self, chips: Optional[Dict[int, FakeINA219Chip]] = None) -> None:
        self.chips: Dict[int, FakeINA219Chip] = dict(chips or {})
        self.failing = False
        self.fail_errno = errno.EREMOTEIO
        self.transfers = 0

    def _chip(self, address: int) -> FakeINA219Chip:
        self.transfers += 1
        if self.failing:
            raise OSError(self.fail_errno, "Remote I/O error (fake bus failing)")
        chip = self.chips.get(address)
        if chip is None:  # no ACK from that address
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return chip


class FakeSMBus:
    """The subset of ``Adafruit_PureIO.smbus.SMBus`` that ``Adafruit_GPIO.I2C.Device`` calls.

    Byte order is the wire's: the INA219 sends MSB first and SMBus word reads are little-endian,
    so ``read_word_data`` returns the byte-swapped register (Adafruit-GPIO's ``readU16BE`` swaps back).
    """

    buses: Dict[int, FakeI2CBus] = {}

    def __init__(self, bus: Optional[int] = None) -> None:
        self._bus: Optional[FakeI2CBus] = None
        if bus is not None:
            self.open(bus)

    def open(self, bus: int) -> None:
        if bus not in self.buses:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", f"/dev/i2c-{bus}")
        self._bus = self.buses[bus]

    def close(self) -> None:
        self._bus = None

    def _chip(self, addr: int) -> FakeINA219Chip:
        if self._bus is None:
            raise OSError(errno.EBADF, "bus not open")
        return self._bus._chip(addr)

    def read_word_data(self, addr: int, cmd: int) -> int:
        value = self._chip(addr).read_register(cmd)
        return ((value & 0xFF) << 8) | (value >> 8)

    def read_byte_data(self, addr: int, cmd: int) -> int:
        return self._chip(addr).read_register(cmd) >> 8

    def read_i2c_block_data(self, addr: int, cmd: int, length: int = 32) -> bytearray:
        value = self._chip(addr).read_register(cmd)
        return bytearray([value >> 8, value & 0xFF] + [0] * max(0, length - 2))[:length]

    def write_i2c_block_data(self, addr: int, cmd: int, vals: List[int]) -> None:
        if len(vals) != 2:
            raise OSError(errno.EIO, "INA219 registers take exactly 2 bytes")
        self._chip(addr).write_register(cmd, (vals[0] << 8) | vals[1])

    def write_word_data(self, addr: int, cmd: int, val: int) -> None:
        self._chip(addr).write_register(cmd, ((val & 0xFF) << 8) | ((val >> 8) & 0xFF))


@contextlib.contextmanager
def patch_smbus(buses: Dict[int, FakeI2CBus]) -> Iterator[Dict[int, FakeI2CBus]]:
    """Replace ``Adafruit_PureIO.smbus.SMBus`` with :class:`FakeSMBus` serving ``buses`` (busnum → bus)."""
    import Adafruit_PureIO.smbus

    cls = type("BoundFakeSMBus", (FakeSMBus,), {"buses": buses})
    with mock.patch.object(Adafruit_PureIO.smbus, "SMBus", cls):
        yield buses
