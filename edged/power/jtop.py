"""``jtop``: NVIDIA Jetson rails through jetson-stats' ``jtop`` client (``pip install 'edged[jetson]'``).

The jtop service (``jtop.service``) reads the board's INA3221 monitors; this adapter is a client of
it, so it needs no root. Every rail of ``jetson.power`` is read; rail names differ by board and
JetPack (Nano: ``POM_5V_IN``/``POM_5V_CPU``/``POM_5V_GPU``; Orin: ``VDD_IN``/``VDD_CPU_GPU_CV``/
``VDD_SOC``…), so none is hard-coded. Two shapes of ``jetson.power`` are understood:

- jetson-stats ≥ 4.0: ``{'rail': {name: {'volt': mV, 'curr': mA, 'power': mW, 'avg': mW, …}},
  'tot': {'power': mW, 'avg': mW, ['volt', 'curr', 'name']}}`` — ``tot`` is the board input
  (the ``VDD_IN``/``POM_5V_IN`` rail, moved out of ``rail``), or the sum of rails when there is none.
- jetson-stats 3.x (JetPack 4.x images): a tuple ``(total, rails)`` with ``{'cur': mW, 'avg': mW}``
  per rail and for the total; no volts or amps.

jetson-stats reports milli-units; ``power_unit="W"`` exists for a client that reports watts.
The service refreshes at ``interval`` s; its maintainer advises ≥ 0.5 s, so :attr:`min_interval_s`
is never below that. A ``JtopException`` becomes a :class:`PowerSourceError` whose message names the
fix; the sampler then reconnects with backoff.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, List, Mapping, Optional, Tuple, Type

from edged.errors import ConfigError, MissingDependencyError
from edged.power.base import PowerReading, PowerSource, PowerSourceError, RailReading

log = logging.getLogger(__name__)

PIP_HINT = "power source 'jtop' needs jetson-stats: pip install 'edged[jetson]' (and the jtop service running)"
#: jetson-stats' maintainer: do not poll jtop faster than this (s)
MIN_JTOP_INTERVAL_S = 0.5

FIX_SERVICE = "the jtop service is not running: sudo systemctl restart jtop.service"
FIX_GROUP = "this user may not read the jtop socket: sudo usermod -aG jtop $USER, then log out and in"
FIX_VERSION = ("jetson-stats client and jtop service versions differ: sudo pip3 install -U jetson-stats "
               "(outside and inside any venv), then sudo systemctl restart jtop.service")


def explain_jtop_error(exc: BaseException) -> str:
    """A one-line explanation of a ``JtopException`` (or connection error) naming the fix."""
    text = " ".join(str(exc).split())
    low = text.lower()
    if "version" in low or "mismatch" in low or "authentication" in low:
        fix = FIX_VERSION
    elif "permission" in low or "group" in low or "access" in low or isinstance(exc, PermissionError):
        fix = FIX_GROUP
    else:  # "service is not active", "Lost connection", "Error connection", refused, missing socket
        fix = FIX_SERVICE
    return f"jtop: {text or type(exc).__name__} -> {fix}"


def _num(d: Mapping[str, Any], key: str) -> Optional[float]:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_jtop_power(power: Any, scale: float = 1e-3) -> Tuple[List[RailReading], Optional[float]]:
    """Rails and the board total (W) from ``jetson.power`` in either jetson-stats shape.

    ``scale`` converts the reported units to SI (1e-3 for mW/mV/mA). Rails marked offline are skipped.
    """
    rails: List[RailReading] = []
    total_w: Optional[float] = None
    if isinstance(power, (tuple, list)) and len(power) == 2:  # jetson-stats 3.x: (total, {name: {cur, avg}})
        total, per_rail = power
        for name, values in sorted((per_rail or {}).items()):
            if isinstance(values, Mapping):
                cur = _num(values, "cur")
                rails.append(RailReading(str(name), watts=None if cur is None else cur * scale))
        cur = _num(total or {}, "cur")
        if cur is not None:
            total_w = cur * scale
            rails.append(RailReading("total", watts=total_w, is_total=True))
        return rails, total_w
    if not isinstance(power, Mapping):
        raise PowerSourceError(f"jtop: unexpected power structure {type(power).__name__}")
    for name, values in sorted((power.get("rail") or {}).items()):
        if not isinstance(values, Mapping) or values.get("online") is False:
            continue
        rails.append(_modern_rail(str(name), values, scale, is_total=False))
    tot = power.get("tot")
    if isinstance(tot, Mapping) and tot:
        rail = _modern_rail(str(tot.get("name") or "total"), tot, scale, is_total=True)
        rails.append(rail)
        total_w = rail.watts
    return rails, total_w


def _modern_rail(name: str, values: Mapping[str, Any], scale: float, is_total: bool) -> RailReading:
    volt, curr, power = _num(values, "volt"), _num(values, "curr"), _num(values, "power")
    volts = None if volt is None else volt * scale
    amps = None if curr is None else curr * scale
    watts = power * scale if power is not None else (volts * amps if volts is not None and amps is not None else None)
    return RailReading(name, volts=volts, amps=amps, watts=watts, is_total=is_total)


def _max_temperature(temps: Any) -> Optional[float]:
    """Hottest online sensor in °C from ``jetson.temperature`` (4.x: {name: {'temp', 'online'}}; 3.x: {name: °C})."""
    best: Optional[float] = None
    if not isinstance(temps, Mapping):
        return None
    for name, value in temps.items():
        if isinstance(value, Mapping):
            if value.get("online") is False:
                continue
            value = value.get("temp")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or "pmic" in str(name).lower():
            continue  # PMIC reports a fixed 50 °C/100 °C on many boards
        if value > -40 and (best is None or value > best):
            best = float(value)
    return best


class JtopSource(PowerSource):
    """Jetson power through the jtop service.

    Parameters: ``interval`` (s, the jtop refresh; clamped to ≥ 0.5), ``power_unit`` ("mW", what
    jetson-stats reports, or "W"), ``read_temperature`` (take the hottest jtop temperature),
    ``jtop_factory`` (callable ``(interval=…) -> jtop``; tests inject a fake; default imports ``jtop.jtop``),
    ``jtop_exception`` (the exception class that factory raises; default ``jtop.JtopException``).
    """

    name = "jtop"

    def __init__(
        self,
        interval: float = 0.5,
        power_unit: str = "mW",
        read_temperature: bool = True,
        jtop_factory: Optional[Callable[..., Any]] = None,
        jtop_exception: Optional[Type[BaseException]] = None,
    ) -> None:
        if power_unit not in ("mW", "W"):
            raise ConfigError(f"jtop power_unit={power_unit!r}: expected 'mW' or 'W'")
        self.interval = max(float(interval), MIN_JTOP_INTERVAL_S)
        self.scale = 1e-3 if power_unit == "mW" else 1.0
        self.read_temperature = read_temperature
        self._factory = jtop_factory
        self._exc_types: Tuple[Type[BaseException], ...] = (jtop_exception,) if jtop_exception is not None else ()
        self._jetson: Any = None

    @classmethod
    def check_dependencies(cls) -> None:
        try:
            import jtop  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError(f"{PIP_HINT} ({exc})") from exc

    def require_dependencies(self) -> None:
        if self._factory is None:
            self.check_dependencies()

    @property
    def min_interval_s(self) -> float:
        return self.interval

    def describe(self) -> str:
        return f"jtop service (interval {self.interval} s)"

    def _resolve(self) -> Callable[..., Any]:
        if self._factory is not None:
            return self._factory
        self.check_dependencies()
        from jtop import JtopException, jtop

        self._exc_types = (JtopException,)
        return jtop  # type: ignore[no-any-return]

    def open(self) -> None:
        factory = self._resolve()
        jetson = factory(interval=self.interval)
        try:
            jetson.start()
        except (ConnectionError, PermissionError, FileNotFoundError) + self._exc_types as exc:
            raise PowerSourceError(explain_jtop_error(exc)) from exc
        self._jetson = jetson

    def read(self) -> PowerReading:
        jetson = self._jetson
        if jetson is None:
            raise PowerSourceError("jtop is not connected")
        ts, mono = time.time(), time.monotonic()
        try:
            if not jetson.ok(spin=True):
                raise PowerSourceError(explain_jtop_error(Exception("Lost connection with jtop server")))
            power = jetson.power
            temps = jetson.temperature if self.read_temperature else None
        except PowerSourceError:
            raise
        except (ConnectionError, EOFError, OSError) + self._exc_types as exc:
            raise PowerSourceError(explain_jtop_error(exc)) from exc
        rails, total_w = parse_jtop_power(power, self.scale)
        return PowerReading(ts=ts, t_mono=mono, source=self.name, rails=rails, total_w=total_w,
                            temp_c=_max_temperature(temps) if temps is not None else None)

    def close(self) -> None:
        jetson, self._jetson = self._jetson, None
        if jetson is not None:
            try:
                jetson.close()
            except Exception as exc:  # closing a dead connection must not raise
                log.debug("jtop close: %s", exc)
