"""The daemon with a power sensor: a fake hwmon tree (the kernel's ina2xx sysfs interface) under the
real hwmon adapter, sampler and log writer; energy per inference in the decision records; edged tail power."""

from __future__ import annotations

import json
import signal
import time

import pytest

from .conftest import run_edged
from .fakes.sysfs import ina219_hwmon, thermal_zone
from .test_daemon import Sender, free_port, start_daemon, wait_ready, write_config

pytestmark = pytest.mark.timeout(120)


def test_power_log_energy_per_inference_and_tail_power(tmp_path):
    hw = tmp_path / "sys" / "hwmon"
    dev = ina219_hwmon(str(hw), bus_mv=5080, current_ma=610, power_uw=3_098_800)
    thermal_zone(str(tmp_path / "sys" / "thermal"), 0, "cpu-thermal", 51_230)
    port = free_port()
    cfg = write_config(tmp_path, port, extra="")
    text = cfg.read_text().replace('[power]\nsource = "none"', f'[power]\nsource = "hwmon"\nrate_hz = 50\n'
                                   f'thermal_root = "{tmp_path / "sys" / "thermal"}"\n[power.hwmon]\nroot = "{hw}"\n')
    cfg.write_text(text)
    proc = start_daemon(cfg)
    wait_ready(cfg, proc)
    sender = Sender(port, rate_hz=200).start()
    time.sleep(1.0)
    dev.set("power1_input", 4_500_000)  # the board draws more: the log must show it
    time.sleep(0.8)
    sender.stop()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0

    power = [json.loads(line) for line in (tmp_path / "logs" / "power.jsonl").read_text().splitlines()]
    assert len(power) > 20
    assert {p["source"] for p in power} == {"hwmon"} and all(p["rail"] == "ina219" for p in power)
    watts = [p["watts"] for p in power]
    assert min(watts) == pytest.approx(3.0988) and max(watts) == pytest.approx(4.5)
    assert all(p["volts"] == pytest.approx(5.08) for p in power)
    assert all(p["temp_c"] == pytest.approx(51.23) for p in power), "the thermal zone is logged with power"

    decisions = [json.loads(line) for line in (tmp_path / "logs" / "decisions.jsonl").read_text().splitlines()]
    with_energy = [d for d in decisions if d["energy_mj"] is not None]
    assert len(with_energy) >= 0.8 * len(decisions), "energy integrated over each local execution window"
    for d in with_energy:
        # energy = power x execution time: between the two board powers the fake sensor reported
        # (1 % + 0.2 µJ slack: exec_us and energy_mj are rounded to 0.1 µs and 0.1 µJ in the record)
        lo, hi = 3.0988 * d["exec_us"] / 1e3, 4.5 * d["exec_us"] / 1e3
        assert lo * 0.99 - 2e-4 <= d["energy_mj"] <= hi * 1.01 + 2e-4

    tail = run_edged(["tail", "power", "--dir", str(tmp_path / "logs"), "--no-color"], check=True)
    lines = tail.stdout.splitlines()
    assert any("ina219" in ln and "3.10" in ln for ln in lines) and any("4.50" in ln for ln in lines)
    summary = run_edged(["tail", "decisions", "--dir", str(tmp_path / "logs"), "--no-color", "-n", "3"], check=True)
    assert "mlp" in summary.stdout
    report = run_edged(["report", str(tmp_path / "logs")], check=True)
    assert "mJ/inf" in report.stdout and "ina219" in report.stdout
