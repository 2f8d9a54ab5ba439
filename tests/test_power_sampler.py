"""Sampler records, rate bounds, the none source, sink failures, and energy integration on known curves."""

from __future__ import annotations

import json
import math
import time
from typing import Dict, List

import pytest

from edged.errors import ConfigError
from edged.power import (
    NullPowerSource,
    PowerReading,
    PowerSampler,
    RailReading,
    integrate_mj,
    make_power_source,
)
from edged.power.hwmon import HwmonSource
from tests.fakes.power import FakePowerSource
from tests.fakes.sysfs import ina219_hwmon

RECORD_KEYS = {"ts", "t_mono", "seq", "source", "rail", "volts", "amps", "watts", "total", "temp_c", "throttled"}


@pytest.mark.timeout(30)
def test_records_one_per_rail_json_ready(tmp_path):
    lines = []
    sampler = PowerSampler(FakePowerSource(lambda t: 4.0), rate_hz=100, sink=lambda r: lines.append(json.dumps(r)))
    sampler.start()
    try:
        _wait(lambda: sampler.stats()["samples"] >= 10)
    finally:
        assert sampler.close()
    records = [json.loads(line) for line in lines]
    assert all(set(r) == RECORD_KEYS for r in records)
    by_seq: Dict[int, List[dict]] = {}
    for r in records:
        by_seq.setdefault(r["seq"], []).append(r)
    assert all(sorted(x["rail"] for x in group) == ["board", "cpu"] for group in by_seq.values())
    board = [r for r in records if r["rail"] == "board"]
    assert all(r["total"] and r["watts"] == 4.0 and r["amps"] == 0.8 and r["volts"] == 5.0 for r in board)
    assert all(not r["total"] for r in records if r["rail"] == "cpu")
    stats = sampler.stats()
    assert stats["state"] == "stopped" and stats["records"] == len(records) and stats["failures"] == 0
    (tmp_path / "power.jsonl").write_text("\n".join(lines[:4]) + "\n")


def test_rate_is_bounded_by_the_sensor():
    assert PowerSampler(FakePowerSource(min_interval=0.2), rate_hz=100).interval_s == 0.2
    assert PowerSampler(FakePowerSource(min_interval=0.001), rate_hz=50).interval_s == pytest.approx(0.02)
    with pytest.raises(ConfigError):
        PowerSampler(FakePowerSource(), rate_hz=0)


def test_none_source_writes_nothing_and_has_no_energy():
    sink_calls: List[dict] = []
    source = make_power_source("none")
    assert isinstance(source, NullPowerSource)
    sampler = PowerSampler(source, rate_hz=100, sink=sink_calls.append)
    sampler.start()
    assert not sampler.running and sampler.join(0.1)
    now = time.monotonic()
    assert sampler.energy_mj(now - 1, now) is None
    assert sink_calls == [] and sampler.stats()["state"] == "off"


@pytest.mark.timeout(30)
def test_a_failing_sink_never_stops_sampling():
    def sink(_record):
        raise OSError("disk full")

    sampler = PowerSampler(FakePowerSource(), rate_hz=200, sink=sink)
    sampler.start()
    try:
        _wait(lambda: sampler.stats()["samples"] >= 5)
        assert sampler.running
    finally:
        assert sampler.close()
    assert sampler.stats()["sink_errors"] >= 10


@pytest.mark.timeout(30)
def test_unplugged_sensor_backs_off_then_recovers():
    source = FakePowerSource()
    sampler = PowerSampler(source, rate_hz=200)
    sampler.start()
    try:
        _wait(lambda: sampler.stats()["samples"] >= 3)
        source.failing = True
        _wait(lambda: sampler.stats()["failures"] >= 2)
        reads_while_failing = source.reads
        opens = source.opens
        time.sleep(0.2)
        assert source.opens <= opens + 1  # backing off, not spinning
        source.failing = False
        _wait(lambda: source.reads > reads_while_failing + 3)
    finally:
        assert sampler.close()
    assert sampler.stats()["failure_episodes"] == 1 and not source.is_open


# -- energy ---------------------------------------------------------------------------------------
def _points(f, t0: float, t1: float, hz: float):
    n = int(round((t1 - t0) * hz))
    return [(t0 + i / hz, f(t0 + i / hz)) for i in range(n + 1)]


def test_integrate_constant_and_linear_are_exact():
    const = _points(lambda t: 2.0, 0.0, 3.0, 10)
    assert integrate_mj(const, 0.5, 2.0, hold_s=0.2, max_gap_s=0.35) == pytest.approx(3000.0)
    ramp = _points(lambda t: t, 0.0, 2.0, 10)
    # ∫ t dt from 0.55 to 1.43 (edges between samples, interpolated) = (1.43² − 0.55²) / 2 J
    assert integrate_mj(ramp, 0.55, 1.43, 0.2, 0.35) == pytest.approx((1.43**2 - 0.55**2) / 2 * 1000)
    assert integrate_mj(ramp, 1.0, 1.0, 0.2, 0.35) == 0.0


def test_integrate_smooth_curve_converges_with_rate():
    def f(t):
        return 3.0 + math.sin(2 * math.pi * t)

    exact = 3.0 * 0.5 + (math.cos(2 * math.pi * 0.1) - math.cos(2 * math.pi * 0.6)) / (2 * math.pi)
    e10 = integrate_mj(_points(f, 0, 1, 10), 0.1, 0.6, 0.2, 0.5)
    e100 = integrate_mj(_points(f, 0, 1, 100), 0.1, 0.6, 0.02, 0.05)
    assert e10 is not None and e100 is not None
    err10, err100 = abs(e10 / 1000 - exact), abs(e100 / 1000 - exact)
    assert 0 < err10 < 0.03 and err100 < err10 / 10


def test_integrate_refuses_uncovered_windows():
    pts = _points(lambda t: 1.0, 10.0, 11.0, 10)
    assert integrate_mj([], 0, 1, 0.2, 0.35) is None
    assert integrate_mj(pts, 9.0, 10.5, 0.2, 0.35) is None  # starts before the data
    assert integrate_mj(pts, 10.5, 11.5, 0.2, 0.35) is None  # ends too long after the newest sample
    assert integrate_mj(pts, 10.9, 11.1, 0.2, 0.35) == pytest.approx(200.0)  # short hold past the end
    gappy = [p for p in pts if not 10.3 < p[0] < 10.8]
    assert integrate_mj(gappy, 10.1, 10.9, 0.2, 0.35) is None  # sensor outage inside the window
    assert integrate_mj(pts, 1.0, 0.5, 0.2, 0.35) is None


def test_sampler_energy_from_ingested_readings():
    sampler = PowerSampler(FakePowerSource(), rate_hz=10, buffer_s=5)
    for i in range(101):  # 10 s at 10 Hz: power steps from 2 W to 6 W at t = 5 s
        t = 100.0 + i / 10
        w = 2.0 if t < 105.0 else 6.0
        sampler.ingest(PowerReading(ts=t, t_mono=t, source="fake", rails=[RailReading("b", watts=w, is_total=True)],
                                    total_w=w))
    assert sampler.energy_mj(106.0, 108.0) == pytest.approx(12000.0)
    assert sampler.energy_mj(104.95, 105.05) == pytest.approx(0.05 * 2 * 1000 + 0.05 * 6 * 1000, rel=0.5)
    assert sampler.energy_mj(101.0, 102.0) is None  # older than buffer_s
    assert sampler.latest_total_w() == 6.0


@pytest.mark.timeout(30)
def test_live_energy_over_an_inference_window(tmp_path):
    ina219_hwmon(str(tmp_path), power_uw=2_500_000)
    sampler = PowerSampler(HwmonSource(root=str(tmp_path)), rate_hz=100)
    sampler.start()
    try:
        _wait(lambda: sampler.stats()["samples"] >= 5)
        t0 = time.monotonic()
        time.sleep(0.05)
        t1 = time.monotonic()
        _wait(lambda: sampler.energy_mj(t0, t1) is not None, timeout=5)
        energy = sampler.energy_mj(t0, t1)
    finally:
        assert sampler.close()
    assert energy == pytest.approx(2.5 * (t1 - t0) * 1000)


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_battery_goes_into_the_power_log_beside_the_rails(tmp_path):
    from edged.power.battery import BatteryReader
    from tests.test_power_battery import supply

    root = tmp_path / "power_supply"
    supply(root, "BAT0", type="Battery", status="Discharging", capacity=64, energy_now=30_000_000,
           energy_full=48_000_000, power_now=5_500_000, voltage_now=12_000_000)
    lines: List[str] = []
    sampler = PowerSampler(FakePowerSource(lambda t: 4.0), rate_hz=100, sink=lambda r: lines.append(json.dumps(r)),
                           battery=BatteryReader(str(root), period_s=0.0))
    sampler.start()
    try:
        _wait(lambda: sampler.stats()["samples"] >= 5)
    finally:
        assert sampler.close()
    records = [json.loads(line) for line in lines]
    batt = [r for r in records if r.get("rail") == "battery:BAT0"]
    assert batt, sorted({r.get("rail") for r in records})
    assert batt[0]["watts"] == 5.5 and batt[0]["battery_pct"] == 64.0 and batt[0]["total"] is False
    assert {r["rail"] for r in records} == {"board", "cpu", "battery:BAT0"}
    # no battery: nothing changes
    assert PowerSampler(FakePowerSource(), battery=BatteryReader(str(tmp_path / "none"))).battery is None
