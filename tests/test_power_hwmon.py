"""The hwmon adapter and thermal reader against fake sysfs trees in a temporary directory."""

from __future__ import annotations

import json
import logging
import stat
import time
from typing import List

import pytest

from edged.power import PowerSampler, PowerSourceError, ThermalReader, decode_throttled
from edged.power.hwmon import HwmonSource, scan_hwmon
from edged.power.thermal import parse_throttled
from tests.fakes.sysfs import FakeHwmonDevice, cpu_thermal_hwmon, ina219_hwmon, ina3221_hwmon, thermal_zone


def test_ina2xx_driver_rail(tmp_path):
    root = str(tmp_path)
    ina219_hwmon(root)
    cpu_thermal_hwmon(root)  # temperature only: not a power rail
    src = HwmonSource(root=root)
    src.open()
    reading = src.read()
    (rail,) = reading.rails
    assert (rail.rail, rail.volts, rail.amps, rail.watts, rail.is_total) == ("ina219", 5.08, 0.61, 3.0988, True)
    assert reading.total_w == 3.0988


def test_ina3221_labels_total_and_unconnected_channels(tmp_path):
    root = str(tmp_path)
    ina3221_hwmon(root)
    channels = scan_hwmon(root)
    assert [c.rail for c in channels] == ["VDD_IN", "VDD_CPU_GPU_CV"]  # NC skipped, shunt-only in4..6 ignored
    src = HwmonSource(root=root)
    src.open()
    reading = src.read()
    vdd_in = reading.rails[0]
    assert vdd_in.is_total and vdd_in.watts == pytest.approx(5.0 * 1.4)
    assert reading.total_w == pytest.approx(7.0)
    override = HwmonSource(root=root, total_rail="VDD_CPU_GPU_CV")
    override.open()
    assert override.read().total_w == pytest.approx(4.968 * 0.4)


def test_unlabelled_multi_rail_device_sums_and_names_filter(tmp_path):
    root = str(tmp_path)
    dev = FakeHwmonDevice(root, 0, "pmic")
    dev.set("power1_input", 1_500_000).set("power2_input", 500_000)
    ina219_hwmon(root, index=1)
    src = HwmonSource(root=root, names=["pmic"])
    src.open()
    reading = src.read()
    assert [r.rail for r in reading.rails] == ["pmic_1", "pmic_2"]
    assert reading.total_w == pytest.approx(2.0)
    with pytest.raises(PowerSourceError, match="no sensor"):
        HwmonSource(root=root, names=["nothing"]).open()
    with pytest.raises(PowerSourceError):
        HwmonSource(root=str(tmp_path / "absent")).open()


@pytest.mark.timeout(30)
def test_sensor_disappearing_mid_run_is_reported_once_and_recovers(tmp_path, caplog):
    root = str(tmp_path)
    dev = ina219_hwmon(root, index=3)
    lines = []
    sampler = PowerSampler(HwmonSource(root=root), rate_hz=100, sink=lambda r: lines.append(json.dumps(r)))
    with caplog.at_level(logging.WARNING, logger="edged.power.sampler"):
        sampler.start()
        try:
            _wait(lambda: sampler.stats()["samples"] >= 5)
            dev.remove()
            _wait(lambda: sampler.stats()["failures"] >= 3)  # first read fails, then reopen attempts
            assert sampler.running and sampler.stats()["state"] == "failing"
            n = sampler.stats()["samples"]
            ina219_hwmon(root, index=4, power_uw=4_000_000)  # it comes back under a new hwmon number
            _wait(lambda: sampler.stats()["samples"] >= n + 3)
        finally:
            assert sampler.close()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "failed (" in m]) == 1
    assert len([m for m in messages if "is back" in m]) == 1
    assert json.loads(lines[-1])["watts"] == 4.0
    assert sampler.stats()["failure_episodes"] == 1


def test_thermal_zones_and_max(tmp_path):
    root = str(tmp_path)
    thermal_zone(root, 0, "cpu-thermal", 51234)
    thermal_zone(root, 1, "gpu-thermal", 47000)
    reader = ThermalReader(root=root, vcgencmd=None)
    assert reader.read_zones() == {"cpu-thermal": 51.234, "gpu-thermal": 47.0}
    assert reader.max_temp_c() == 51.234
    assert reader.throttled() is None
    assert ThermalReader(root=str(tmp_path / "none"), vcgencmd=None).max_temp_c() is None


def _script(path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_vcgencmd_parsed_rate_limited_and_timed_out(tmp_path):
    calls = tmp_path / "calls"
    tool = _script(tmp_path / "vcgencmd", f'echo x >> "{calls}"\necho "throttled=0x50005"\n')
    reader = ThermalReader(root=str(tmp_path), vcgencmd=tool, throttle_period_s=60)
    assert reader.throttled() == "0x50005"
    assert reader.throttled() == "0x50005"
    assert calls.read_text().count("x") == 1  # second call served from cache
    assert decode_throttled("0x50005") == ["under-voltage", "throttled", "under-voltage-occurred",
                                           "throttling-occurred"]
    assert parse_throttled("garbage") is None
    slow = _script(tmp_path / "slow", "sleep 5\n")
    t0 = time.monotonic()
    assert ThermalReader(root=str(tmp_path), vcgencmd=slow, timeout_s=0.2).throttled() is None
    assert time.monotonic() - t0 < 4


def test_sampler_records_carry_temperature_and_throttle(tmp_path):
    thermal_root = tmp_path / "thermal"
    thermal_zone(str(thermal_root), 0, "cpu-thermal", 62500)
    tool = _script(tmp_path / "vcgencmd", 'echo "throttled=0x0"\n')
    hw_root = str(tmp_path / "hwmon")
    ina219_hwmon(hw_root)
    records: List[dict] = []
    src = HwmonSource(root=hw_root)
    src.open()
    sampler = PowerSampler(src, sink=records.append, thermal=ThermalReader(str(thermal_root), vcgencmd=tool))
    sampler.ingest(src.read())
    (record,) = records
    assert record["temp_c"] == 62.5 and record["throttled"] == "0x0"


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
