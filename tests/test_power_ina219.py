"""pi-ina219 + Adafruit-GPIO running unmodified above a register-level fake INA219 (tests/fakes/ina219.py)."""

from __future__ import annotations

import errno
import logging
import sys
import time
from typing import List

import pytest

from edged.errors import ConfigError, MissingDependencyError
from edged.power import PowerSampler, make_power_source
from edged.power.ina219 import INA219Source
from tests.fakes.ina219 import REG_CALIBRATION, FakeI2CBus, FakeINA219Chip, patch_smbus


@pytest.fixture()
def chip():
    chip = FakeINA219Chip(shunt_ohms=0.1, bus_volts=5.08, amps=0.61)
    bus = FakeI2CBus({0x40: chip})
    with patch_smbus({1: bus}):
        chip.bus = bus  # type: ignore[attr-defined]
        yield chip


def test_calibration_and_reading_run_through_the_real_library(chip):
    src = INA219Source(shunt_ohms=0.1, max_expected_amps=2.0, busnum=1, bus_adc="128samp", shunt_adc=16)
    src.open()
    # pi-ina219: current_lsb = 2.0 A / 32800, cal = trunc(0.04096 / (lsb * 0.1)), bit 0 reads as 0
    assert chip.calibration == 6716
    assert (REG_CALIBRATION, 6717) in chip.writes
    assert chip.gain_index == 3  # 2 A × 0.1 Ω = 200 mV needs the 320 mV range
    assert (chip.config >> 7) & 0xF == 15 and (chip.config >> 3) & 0xF == 12  # 128 / 16 sample averaging
    assert src.min_interval_s == pytest.approx(68.10e-3 + 8.51e-3)
    reading = src.read()
    (rail,) = reading.rails
    assert rail.volts == pytest.approx(5.08, abs=0.004)
    assert rail.amps == pytest.approx(0.61, abs=2e-4)
    assert rail.watts == pytest.approx(5.08 * 0.61, rel=2e-3)
    assert rail.is_total and reading.total_w == rail.watts and reading.source == "ina219"


def test_auto_gain_steps_up_on_overflow(chip):
    chip.amps = 0.2  # 20 mV: fits the 40 mV range pi-ina219 starts with
    src = INA219Source(shunt_ohms=0.1, busnum=1)
    src.open()
    assert chip.gain_index == 0
    assert src.read().rails[0].amps == pytest.approx(0.2, abs=1e-3)
    chip.amps = 1.5  # 150 mV: OVF set until the library reaches the 160 mV range
    reading = src.read()
    assert chip.gain_index == 2
    assert reading.rails[0].amps == pytest.approx(1.5, abs=5e-3)


def test_fixed_gain_overflow_gives_none_and_one_warning(chip, caplog):
    chip.amps = 1.0  # 100 mV > 40 mV full scale
    src = INA219Source(shunt_ohms=0.1, busnum=1, gain=40)
    src.open()
    with caplog.at_level(logging.WARNING, logger="edged.power.ina219"):
        first, second = src.read(), src.read()
    for reading in (first, second):
        (rail,) = reading.rails
        assert rail.amps is None and rail.watts is None and reading.total_w is None
        assert rail.volts == pytest.approx(5.08, abs=0.004)  # bus voltage stays valid
    assert src.range_errors == 2
    assert len([r for r in caplog.records if "out of range" in r.getMessage()]) == 1
    chip.amps = 0.3
    assert src.read().rails[0].amps == pytest.approx(0.3, abs=1e-3)


def test_device_limit_even_with_auto_gain(chip):
    chip.amps = 4.0  # 400 mV > 320 mV, the widest range
    src = INA219Source(shunt_ohms=0.1, busnum=1)
    src.open()
    assert src.read().rails[0].watts is None


def test_failing_bus_raises_oserror_to_the_caller(chip):
    src = INA219Source(busnum=1)
    src.open()
    src.read()
    chip.bus.failing = True
    with pytest.raises(OSError) as err:
        src.read()
    assert err.value.errno == errno.EREMOTEIO


def test_missing_bus_wrong_address_and_bad_range():
    with patch_smbus({1: FakeI2CBus({0x40: FakeINA219Chip()})}):
        with pytest.raises(FileNotFoundError):
            INA219Source(busnum=3).open()
        with pytest.raises(OSError):
            INA219Source(busnum=1, address=0x41).open()
        with pytest.raises(ConfigError, match="max_expected_amps"):
            INA219Source(shunt_ohms=0.1, max_expected_amps=5.0, busnum=1).open()  # > 320 mV / 0.1 Ω
    with pytest.raises(ConfigError):
        INA219Source(bus_adc="13bit")
    with pytest.raises(ConfigError):
        INA219Source(voltage_range=24)


def test_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ina219", None)
    with pytest.raises(MissingDependencyError, match=r"edged\[pi\]"):
        make_power_source("ina219", busnum=1)


@pytest.mark.timeout(30)
def test_sampler_survives_a_bus_failure_and_recalibrates_a_reset_chip(chip):
    records: List[dict] = []
    sampler = PowerSampler(INA219Source(shunt_ohms=0.1, max_expected_amps=2.0, busnum=1), rate_hz=50,
                           sink=records.append)
    sampler.start()
    try:
        _wait(lambda: sampler.stats()["samples"] >= 5)
        chip.bus.failing = True
        _wait(lambda: sampler.stats()["failures"] >= 1)
        assert sampler.stats()["state"] == "failing"
        # the chip browns out while the bus is down: it forgets calibration and gain
        chip.write_register(0, 0x8000)
        assert chip.calibration == 0
        before = sampler.stats()["samples"]
        chip.bus.failing = False
        _wait(lambda: sampler.stats()["samples"] >= before + 3)
    finally:
        assert sampler.close(timeout=5)
    assert chip.calibration == 6716  # open() ran configure() again
    assert sampler.stats()["failure_episodes"] == 1
    assert records[-1]["amps"] == pytest.approx(0.61, abs=2e-4)


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
