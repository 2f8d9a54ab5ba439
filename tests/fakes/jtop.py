"""A stand-in for jetson-stats' ``jtop`` client class, injected through ``JtopSource(jtop_factory=…)``.

It reproduces what the adapter touches: ``jtop(interval=…)``, ``start()`` (which raises
``JtopException`` when the service is down, the user is not in group ``jtop``, or versions differ),
``ok(spin=…)``, ``close()``, ``power`` and ``temperature``. ``power`` has the two shapes jetson-stats
has shipped, for a Jetson Nano and a Jetson Orin (values in mW / mV / mA as jetson-stats reports them):

- jetson-stats 3.x (JetPack 4.x images): ``(total, rails)`` with ``{'cur', 'avg'}`` per rail;
- jetson-stats 4.x (JetPack 4.6 … 6): ``{'rail': {...}, 'tot': {...}}`` with volt/curr/power/avg per
  rail, the board input rail (``POM_5V_IN`` / ``VDD_IN``) moved to ``tot``.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional


class FakeJtopException(Exception):
    """Plays ``jtop.JtopException``."""


def _rail(volt: int, curr: int, online: bool = True) -> Dict[str, Any]:
    power = volt * curr // 1000
    return {"online": online, "type": "I2C", "status": "online", "volt": volt, "curr": curr,
            "power": power, "avg": power, "warn": 32760, "crit": 32760}


#: jetson-stats 4.x on a Jetson Nano (INA3221: POM_5V_IN total, GPU and CPU rails)
POWER_4X_NANO: Dict[str, Any] = {
    "rail": {"POM_5V_GPU": _rail(5000, 120), "POM_5V_CPU": _rail(5000, 380)},
    "tot": dict(_rail(5000, 920), name="POM_5V_IN"),
}
#: jetson-stats 4.x on a Jetson Orin Nano (VDD_IN total, CPU/GPU/CV and SOC rails)
POWER_4X_ORIN: Dict[str, Any] = {
    "rail": {"VDD_CPU_GPU_CV": _rail(4968, 402), "VDD_SOC": _rail(4976, 283)},
    "tot": dict(_rail(4984, 1405), name="VDD_IN"),
}
#: jetson-stats 3.x on a Jetson Nano (from tegrastats; milliwatts only)
POWER_3X_NANO: tuple = (
    {"cur": 4600, "avg": 4512},
    {"5V GPU": {"cur": 600, "avg": 580}, "5V CPU": {"cur": 1900, "avg": 1850}},
)
#: jetson-stats 3.x on a Jetson AGX Orin (tegrastats rail names)
POWER_3X_ORIN: tuple = (
    {"cur": 9720, "avg": 9650},
    {"VDD_GPU_SOC": {"cur": 3205, "avg": 3190}, "VDD_CPU_CV": {"cur": 1602, "avg": 1580},
     "VIN_SYS_5V0": {"cur": 2618, "avg": 2600}},
)
TEMPS_4X: Dict[str, Any] = {"CPU": {"online": True, "temp": 47.5}, "GPU": {"online": True, "temp": 45.0},
                            "PMIC": {"online": True, "temp": 100.0}, "CV0": {"online": False, "temp": -256.0}}
TEMPS_3X: Dict[str, Any] = {"AO": 41.5, "CPU": 44.0, "GPU": 42.5, "PMIC": 100.0}


class FakeJtopService:
    """The service side, shared by every client the factory builds: tests change it mid-run."""

    def __init__(self, power: Any, temperature: Optional[Dict[str, Any]] = None) -> None:
        self.power = copy.deepcopy(power)
        self.temperature = copy.deepcopy(temperature) if temperature is not None else {}
        self.start_error: Optional[str] = None  # message start() raises, e.g. the service being down
        self.connected = True  # False: running clients lose their connection
        self.clients: List[FakeJtop] = []

    def factory(self, interval: float = 1.0) -> FakeJtop:
        """Use as ``JtopSource(jtop_factory=service.factory, jtop_exception=FakeJtopException)``."""
        client = FakeJtop(self, interval)
        self.clients.append(client)
        return client


class FakeJtop:
    """One client connection, mirroring ``jtop.jtop``'s methods the adapter uses."""

    def __init__(self, service: FakeJtopService, interval: float = 1.0) -> None:
        self._service = service
        self.interval = interval
        self.started = False
        self.closed = False

    def start(self) -> None:
        if self._service.start_error:
            raise FakeJtopException(self._service.start_error)
        self.started = True

    def ok(self, spin: bool = False) -> bool:
        if not self._service.connected:
            raise FakeJtopException("Lost connection with jtop server")
        return self.started and not self.closed

    def close(self) -> None:
        self.closed = True

    @property
    def power(self) -> Any:
        return copy.deepcopy(self._service.power)

    @property
    def temperature(self) -> Dict[str, Any]:
        return copy.deepcopy(self._service.temperature)
