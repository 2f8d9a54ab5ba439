"""Result sinks: where decided results go (ZeroMQ PUB, a reply on the serial port, MQTT).

Each ``[[sinks]]`` table of the config names a ``type``; :data:`SINK_TYPES` maps it to the
module holding that sink and its config schema. Modules are imported only when used, so
a box without paho-mqtt still runs its ZeroMQ and serial sinks, and an ``mqtt`` table gives
``sink 'mqtt' needs paho-mqtt: pip install 'edged[mqtt]'`` at start-up (not at import).

Use::

    cfgs = [parse_sink_config(t, f"sinks[{i}]") for i, t in enumerate(raw["sinks"])]   # ConfigError
    sinks = build_sinks(cfgs, writer_for=serial_writer_for)
    sinks.open()                      # before READY=1; EdgedError names the endpoint
    sinks.publish_many(results)       # from the dispatcher's writer thread; never raises, never blocks
    sinks.stats(); sinks.states()     # any thread
    sinks.close(timeout_s)
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type

from edged.errors import ConfigError
from edged.sinks.base import (
    Result,
    ResultSink,
    SinkConfig,
    SinkFilter,
    SinkSet,
    WriterFor,
    build_config,
    parse_filter,
)

#: type name -> (module, sink class, config class)
SINK_TYPES: Dict[str, Tuple[str, str, str]] = {
    "zmq": ("edged.sinks.zmq", "ZmqSink", "ZmqSinkConfig"),
    "serial": ("edged.sinks.serial", "SerialReplySink", "SerialSinkConfig"),
    "mqtt": ("edged.sinks.mqtt", "MqttSink", "MqttSinkConfig"),
}


def config_class(type_name: str) -> Type[SinkConfig]:
    """The config schema of sink ``type_name`` (KeyError if unknown)."""
    module, _, cfg = SINK_TYPES[type_name]
    cls: Type[SinkConfig] = getattr(importlib.import_module(module), cfg)
    return cls


def parse_sink_config(raw: Mapping[str, Any], where: str = "sinks[0]") -> SinkConfig:
    """One ``[[sinks]]`` table -> its frozen config; ConfigError names every bad key and what is expected."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} = {raw!r}: expected a table")
    kind = raw.get("type")
    if kind not in SINK_TYPES:
        raise ConfigError(f"{where}.type = {kind!r}: expected one of " + ", ".join(repr(k) for k in SINK_TYPES))
    return config_class(str(kind)).from_mapping(raw, where)


def build_sink(cfg: SinkConfig, writer_for: Optional[WriterFor] = None, **kw: Any) -> ResultSink:
    """The sink for ``cfg`` (not opened). ``writer_for`` is used by the serial sink; ``kw`` (e.g. a
    ZeroMQ ``context``) goes to the sink's constructor where it takes it."""
    module, cls_name, _ = SINK_TYPES[cfg.type]
    cls = getattr(importlib.import_module(module), cls_name)
    if cfg.type == "serial":
        sink: ResultSink = cls(cfg, writer_for=writer_for)
    elif cfg.type == "zmq":
        sink = cls(cfg, context=kw.get("context"))
    else:
        sink = cls(cfg)
    return sink


def build_sinks(cfgs: Sequence[SinkConfig], writer_for: Optional[WriterFor] = None, **kw: Any) -> SinkSet:
    """A :class:`SinkSet` of every configured sink (none opened yet). Duplicate names are a ConfigError."""
    seen: Dict[str, int] = {}
    for i, c in enumerate(cfgs):
        name = c.name or c.type
        if name in seen:
            raise ConfigError(f"sinks[{i}].name = {name!r}: expected a name no other sink has (sinks[{seen[name]}])")
        seen[name] = i
    return SinkSet([build_sink(c, writer_for, **kw) for c in cfgs])


__all__ = ["Result", "ResultSink", "SinkConfig", "SinkFilter", "SinkSet", "SINK_TYPES", "WriterFor",
           "build_config", "build_sink", "build_sinks", "config_class", "parse_filter", "parse_sink_config"]
