"""Battery state from a fake /sys/class/power_supply tree (the real reader code, the kernel's units)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edged.power.battery import BatteryReader, find_batteries, read_battery


def supply(root: Path, name: str, **attrs: object) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for k, v in attrs.items():
        (d / k).write_text(f"{v}\n")
    return d


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "power_supply"
    supply(root, "AC", type="Mains", online=1)
    supply(root, "BAT0", type="Battery", status="Discharging", capacity=87, energy_now=41_500_000,
           energy_full=48_000_000, power_now=6_250_000, voltage_now=12_100_000, current_now=516_000)
    # a fuel gauge that reports charge (µAh) and current instead of energy and power
    supply(root, "BAT1", type="Battery", status="Charging", charge_now=2_000_000, charge_full=2_500_000,
           voltage_now=3_700_000, current_now=-800_000)
    supply(root, "usb", type="USB")
    return root


def test_only_batteries_are_found(sysfs):
    assert find_batteries(str(sysfs)) == ["BAT0", "BAT1"]
    assert find_batteries(str(sysfs / "missing")) == []


def test_units_are_converted(sysfs):
    b = read_battery("BAT0", str(sysfs))
    assert (b.status, b.capacity_pct, b.energy_wh, b.energy_full_wh, b.power_w, b.volts) == (
        "Discharging", 87.0, 41.5, 48.0, 6.25, 12.1)


def test_charge_and_current_stand_in_for_energy_and_power(sysfs):
    b = read_battery("BAT1", str(sysfs))
    assert b.energy_wh == pytest.approx(2.0 * 3.7) and b.energy_full_wh == pytest.approx(2.5 * 3.7)
    assert b.power_w == pytest.approx(3.7 * 0.8)  # magnitude
    assert b.capacity_pct == pytest.approx(80.0)  # no capacity file: from energy / full


def test_missing_and_garbage_attributes_are_none(tmp_path):
    root = tmp_path / "ps"
    supply(root, "BAT9", type="Battery", capacity="n/a", power_now="")
    b = read_battery("BAT9", str(root))
    assert b == type(b)("BAT9")


def test_records_are_rail_shaped_json_and_rate_limited(sysfs):
    now = [100.0]
    r = BatteryReader(str(sysfs), period_s=5.0, clock=lambda: now[0])
    assert r.available
    recs = r.records(1_700_000_000.5, 100.0, 7)
    assert [x["rail"] for x in recs] == ["battery:BAT0", "battery:BAT1"]
    first = recs[0]
    assert first["watts"] == 6.25 and first["total"] is False and first["battery_pct"] == 87.0
    assert first["battery_status"] == "Discharging" and first["seq"] == 7 and first["source"] == "battery"
    json.dumps(recs)
    (sysfs / "BAT0" / "capacity").write_text("86\n")
    now[0] = 102.0
    assert r.records(0.0, 102.0, 8)[0]["battery_pct"] == 87.0  # within period_s: the cached read
    now[0] = 105.5
    assert r.records(0.0, 105.5, 9)[0]["battery_pct"] == 86.0


def test_no_battery_changes_nothing(tmp_path):
    r = BatteryReader(str(tmp_path / "none"))
    assert not r.available and r.read() == [] and r.records(0.0, 0.0, 1) == []
