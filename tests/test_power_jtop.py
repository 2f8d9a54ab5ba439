"""The jtop adapter against a fake ``jtop`` class reproducing jetson-stats 3.x and 4.x ``power`` structures."""

from __future__ import annotations

import sys
import time
from typing import List

import pytest

from edged.errors import MissingDependencyError
from edged.power import PowerSampler, PowerSourceError, make_power_source
from edged.power.jtop import JtopSource, parse_jtop_power
from tests.fakes.jtop import (
    POWER_3X_NANO,
    POWER_3X_ORIN,
    POWER_4X_NANO,
    POWER_4X_ORIN,
    TEMPS_3X,
    TEMPS_4X,
    FakeJtopException,
    FakeJtopService,
)


def _source(service: FakeJtopService, **kw) -> JtopSource:
    return JtopSource(jtop_factory=service.factory, jtop_exception=FakeJtopException, **kw)


@pytest.mark.parametrize(
    "power, temps, rails, total_name, total_w, temp_c",
    [
        (POWER_4X_NANO, TEMPS_4X, {"POM_5V_CPU", "POM_5V_GPU"}, "POM_5V_IN", 4.6, 47.5),
        (POWER_4X_ORIN, TEMPS_4X, {"VDD_CPU_GPU_CV", "VDD_SOC"}, "VDD_IN", 7.002, 47.5),
        (POWER_3X_NANO, TEMPS_3X, {"5V CPU", "5V GPU"}, "total", 4.6, 44.0),
        (POWER_3X_ORIN, TEMPS_3X, {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"}, "total", 9.72, 44.0),
    ],
    ids=["4x-nano", "4x-orin", "3x-nano", "3x-orin"],
)
def test_every_rail_and_the_total_in_si_units(power, temps, rails, total_name, total_w, temp_c):
    src = _source(FakeJtopService(power, temps))
    src.open()
    reading = src.read()
    by_name = {r.rail: r for r in reading.rails}
    assert set(by_name) == rails | {total_name}
    assert by_name[total_name].is_total and not any(by_name[n].is_total for n in rails)
    assert reading.total_w == pytest.approx(total_w, abs=1e-3)
    assert reading.temp_c == temp_c  # hottest online sensor, PMIC's fixed value ignored
    if isinstance(power, dict):  # 4.x carries volts and amps (mV, mA → V, A)
        cpu = by_name["POM_5V_CPU"] if "POM_5V_CPU" in by_name else by_name["VDD_CPU_GPU_CV"]
        assert cpu.volts is not None and cpu.amps is not None and 4.9 < cpu.volts < 5.1
        assert cpu.watts == pytest.approx(cpu.volts * cpu.amps, rel=1e-2)
    else:  # 3.x: milliwatts only
        assert all(r.volts is None and r.amps is None for r in reading.rails)


def test_rail_names_are_never_hard_coded_and_offline_rails_skipped():
    power = {"rail": {"VDD_WHATEVER_NEW": {"volt": 1000, "curr": 2000, "power": 2000, "avg": 2000},
                      "VDD_OFF": {"online": False, "volt": 0, "curr": 0, "power": 0, "avg": 0}},
             "tot": {"power": 2500, "avg": 2400}}
    rails, total = parse_jtop_power(power)
    assert [r.rail for r in rails] == ["VDD_WHATEVER_NEW", "total"]
    assert rails[0].watts == pytest.approx(2.0) and total == pytest.approx(2.5)
    rails_w, total_w = parse_jtop_power({"rail": {"X": {"power": 2.0}}, "tot": {"power": 2.5}}, scale=1.0)
    assert total_w == 2.5 and rails_w[0].watts == 2.0
    assert parse_jtop_power({}) == ([], None)  # jtop found no sensors


@pytest.mark.parametrize(
    "message, fix",
    [
        ("The jetson_stats.service is not active. Please run:\nsudo systemctl restart jetson_stats.service",
         "sudo systemctl restart jtop.service"),
        ("I can't access to server, check group", "usermod -aG jtop"),
        ("mismatch python version between library and service", "pip3 install -U jetson-stats"),
    ],
)
def test_jtop_exceptions_name_the_fix(message, fix):
    service = FakeJtopService(POWER_4X_NANO)
    service.start_error = message
    with pytest.raises(PowerSourceError) as err:
        _source(service).open()
    assert fix in str(err.value)


def test_interval_is_at_least_half_a_second():
    service = FakeJtopService(POWER_4X_NANO)
    src = _source(service, interval=0.1)
    assert src.min_interval_s == 0.5
    assert PowerSampler(src, rate_hz=50).interval_s == 0.5
    src.open()
    assert service.clients[-1].interval == 0.5


def test_missing_jetson_stats_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", None)
    with pytest.raises(MissingDependencyError, match=r"edged\[jetson\]"):
        make_power_source("jtop")
    assert make_power_source("jtop", jtop_factory=FakeJtopService(POWER_4X_NANO).factory).name == "jtop"


@pytest.mark.timeout(30)
def test_lost_service_reconnects_with_a_new_client(monkeypatch):
    monkeypatch.setattr("edged.power.jtop.MIN_JTOP_INTERVAL_S", 0.02)  # keep the test short
    service = FakeJtopService(POWER_4X_ORIN, TEMPS_4X)
    records: List[dict] = []
    sampler = PowerSampler(_source(service, interval=0.02), rate_hz=50, sink=records.append)
    sampler.start()
    try:
        _wait(lambda: sampler.stats()["samples"] >= 3)
        service.connected = False
        service.start_error = "The jetson_stats.service is not active."
        _wait(lambda: sampler.stats()["failures"] >= 2)
        assert "systemctl restart jtop.service" in sampler.stats()["last_error"]
        service.connected, service.start_error = True, None
        n = sampler.stats()["samples"]
        _wait(lambda: sampler.stats()["samples"] >= n + 3)
    finally:
        assert sampler.close()
    assert len(service.clients) >= 2 and service.clients[0].closed
    assert {r["rail"] for r in records} == {"VDD_CPU_GPU_CV", "VDD_SOC", "VDD_IN"}


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
