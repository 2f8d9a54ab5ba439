"""ActivityTracker bookkeeping, PowerModel learning from synthetic readings, and the source factory."""

from __future__ import annotations

import threading

import pytest

from edged.errors import ConfigError
from edged.power import ActivityTracker, PowerModel, PowerReading, PowerSampler, make_power_source
from edged.power.base import known_power_sources
from tests.fakes.ina219 import FakeI2CBus, FakeINA219Chip, patch_smbus
from tests.fakes.jtop import POWER_4X_NANO, FakeJtopService
from tests.fakes.power import FakePowerSource
from tests.fakes.sysfs import ina219_hwmon


def test_occupancy_merges_overlaps_and_counts_open_activities():
    tr = ActivityTracker()
    a = tr.begin("local", t_mono=1.0)
    b = tr.begin("local", t_mono=1.5)
    tr.end(a, t_mono=2.0)
    tr.end(b, t_mono=2.5)
    r = tr.begin("radio", t_mono=3.0)
    assert tr.occupancy(1.0, 3.0) == {"local": pytest.approx(0.75), "radio": 0.0}
    assert tr.occupancy(2.5, 3.5)["radio"] == pytest.approx(0.5)  # still open: counted up to the window end
    assert tr.active() == {"local": 0, "radio": 1}
    tr.end(r, t_mono=4.0)
    tr.end(r, t_mono=9.0)  # repeated end is ignored
    assert tr.occupancy(3.0, 5.0)["radio"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        tr.begin("gpu")


def test_tracker_is_thread_safe():
    tr = ActivityTracker()

    def work():
        for _ in range(2000):
            tr.end(tr.begin("local"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert tr.active() == {"local": 0, "radio": 0}


def test_power_model_learns_idle_active_and_radio():
    tr = ActivityTracker()
    model = PowerModel(tr, window_s=0.05, alpha=0.1, priors_w={"idle": 1.0, "active": 9.0, "radio": 9.0})
    assert model.snapshot() == {"p_idle_w": 1.0, "p_active_w": 9.0, "p_radio_w": 9.0,
                                "n_idle": 0, "n_active": 0, "n_radio": 0, "skipped": 0}
    # a 100 s schedule at 100 Hz: 0.3 s idle (2.5 W), 0.4 s local (5 W), 0.3 s radio (3.5 W), repeated
    t = 0.0
    for cycle in range(100):
        base = cycle * 1.0
        tok = tr.begin("local", t_mono=base + 0.3)
        tr.end(tok, t_mono=base + 0.7)
        tok = tr.begin("radio", t_mono=base + 0.7)
        tr.end(tok, t_mono=base + 1.0)
        for i in range(100):
            t = base + i / 100 + 0.005
            phase = t - base
            watts = 2.5 if phase < 0.3 else 5.0 if phase < 0.7 else 3.5
            model.observe(PowerReading(ts=t, t_mono=t, source="fake", total_w=watts))
    snap = model.snapshot()
    assert snap["p_idle_w"] == pytest.approx(2.5, abs=0.01)
    assert snap["p_active_w"] == pytest.approx(5.0, abs=0.01)
    assert snap["p_radio_w"] == pytest.approx(3.5, abs=0.01)
    assert snap["n_active"] > snap["n_radio"] > 1000 and snap["n_idle"] > 1000
    assert snap["skipped"] > 0  # readings straddling a transition are not attributed
    model.observe(PowerReading(ts=t, t_mono=t + 1, source="fake", total_w=None))  # no total: ignored
    with pytest.raises(ConfigError):
        PowerModel(tr, alpha=0)


def test_power_model_as_a_sampler_listener():
    tr = ActivityTracker()
    model = PowerModel(tr, window_s=0.01)
    sampler = PowerSampler(FakePowerSource(lambda t: 3.3), rate_hz=100)
    sampler.add_listener(model.observe)
    src = sampler.source
    src.open()
    for _ in range(5):
        sampler.ingest(src.read())
    assert model.snapshot()["n_idle"] == 5 and model.p_idle_w == pytest.approx(3.3)


def test_factory_kinds_and_errors(tmp_path):
    assert set(known_power_sources()) == {"none", "ina219", "jtop", "hwmon"}
    with pytest.raises(ConfigError, match="auto"):
        make_power_source("bogus")
    with pytest.raises(ConfigError, match="bad options"):
        make_power_source("hwmon", nonsense=1)
    with pytest.raises(ConfigError):
        make_power_source("auto", shunt_ohms=0.1)  # auto takes per-kind tables


def test_auto_picks_the_first_available(tmp_path):
    empty = str(tmp_path / "empty")
    with patch_smbus({1: FakeI2CBus({0x40: FakeINA219Chip()})}):
        # no jtop (library missing here), no hwmon sensor, an INA219 answering on bus 1
        picked = make_power_source("auto", hwmon={"root": empty}, ina219={"busnum": 1})
        assert picked.name == "ina219"
        ina219_hwmon(str(tmp_path))
        picked = make_power_source("auto", hwmon={"root": str(tmp_path)}, ina219={"busnum": 1})
        assert picked.name == "hwmon"
        service = FakeJtopService(POWER_4X_NANO)
        picked = make_power_source("auto", jtop={"jtop_factory": service.factory}, hwmon={"root": str(tmp_path)})
        assert picked.name == "jtop" and service.clients[0].closed  # probed, then closed
    assert make_power_source("auto", hwmon={"root": empty}, ina219={"busnum": 9}).name == "none"
