"""The daemon's configuration: one TOML file -> typed, frozen objects.

Every error names the file, the key path, the bad value and what is allowed;
unknown keys are errors (a typo must fail loudly, not silently fall back to a
default). ``edged check-config FILE`` prints every error at once and exits 1,
and runs as the service's ``ExecStartPre=``.

Environment overrides: ``EDGED_<SECTION>__<KEY>=value`` (double underscore
between levels, case-insensitive), e.g. ``EDGED_FOG__ENDPOINT=tcp://10.0.0.2:5556``
or ``EDGED_SOURCES__0__URL=/dev/ttyACM0``. Values are parsed as TOML values
(``true``, ``3``, ``[1, 2]``), falling back to a plain string. An error in a value that
came from the environment names the variable (``EDGED_FOG__ENDPOINT: fog.endpoint = ...``)
instead of a file line.

Beyond types and ranges, :func:`load_config` checks what ``edged run`` needs before it
reports READY: ZeroMQ endpoint and serial URL syntax (:mod:`edged.endpoints`), the types
of the power adapters' options (from their constructors' annotations), that ``models.dirs``
and the CURVE key files exist, and that no two sources share a name or an endpoint.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import difflib
import inspect
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from edged.endpoints import ZmqEndpoint, check_serial_url, parse_zmq_endpoint, serial_scheme
from edged.errors import EXIT_CONFIG, ConfigError, EdgedError

try:
    import tomllib  # type: ignore[import-not-found]
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

POLICY_NAMES = ("local", "offload", "threshold", "adaptive")
OBJECTIVES = ("latency", "energy")
QUEUE_POLICIES = ("block", "drop-oldest")
BACKEND_NAMES = ("auto", "onnx", "litert")
FRAMINGS = ("lines", "cobs")
JOURNAL_MODES = ("auto", "on", "off")
LOG_LEVELS = ("debug", "info", "warning", "error")
POWER_KINDS = ("auto", "none", "ina219", "jtop", "hwmon")
FOG_BACKENDS = ("zmq", "oip")
OIP_PROTOCOLS = ("grpc", "rest")
OIP_IDENTITIES = ("version", "name", "none")
OIP_TENSORS = ("manifest", "artifact")


def _choices(*values: str) -> Dict[str, Any]:
    return {"choices": values}


def _min(v: float) -> Dict[str, Any]:
    return {"min": v}


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: str = ""  # "" -> $STATE_DIRECTORY, else ~/.local/state/edged
    profile_on_start: bool = True
    profile_repeats: int = field(default=3, metadata=_min(1))
    profile_gap_ms: float = field(default=0.0, metadata=_min(0))  # idle before each timed input (sparse streams)
    status_interval_s: float = field(default=2.0, metadata=_min(0.1))
    shutdown_timeout_s: float = field(default=20.0, metadata=_min(0.5))
    max_inputs: int = field(default=0, metadata=_min(0))  # stop after N decisions; 0 = run until signalled
    watchdog: bool = True


@dataclass(frozen=True)
class LogsConfig:
    dir: str = ""  # "" -> $LOGS_DIRECTORY, else <state_dir>/logs
    max_bytes: int = field(default=50 * 1024 * 1024, metadata=_min(0))  # 0 = no built-in rotation (logrotate)
    backups: int = field(default=5, metadata=_min(0))
    journal: str = field(default="auto", metadata=_choices(*JOURNAL_MODES))
    level: str = field(default="info", metadata=_choices(*LOG_LEVELS))
    spool_records: int = field(default=10000, metadata=_min(0))  # records held in memory while the log disk fails


@dataclass(frozen=True)
class ModelsConfig:
    dirs: Tuple[str, ...] = ()
    enabled: Tuple[str, ...] = ()  # () -> every model in the catalogue
    backend: str = field(default="auto", metadata=_choices(*BACKEND_NAMES))
    backends: Mapping[str, str] = field(default_factory=dict, metadata={"values": BACKEND_NAMES})  # per model
    threads: int = field(default=1, metadata=_min(1))
    #: onnxruntime execution providers in order of preference (e.g. TensorRT, CUDA, CPU on a Jetson);
    #: () = the CPU provider. One requested but not active here is a logged warning, not an error.
    providers: Tuple[str, ...] = ()


@dataclass(frozen=True)
class QueueConfig:
    size: int = field(default=1024, metadata=_min(1))
    when_full: str = field(default="block", metadata=_choices(*QUEUE_POLICIES))


@dataclass(frozen=True)
class PolicyConfig:
    default: str = field(default="adaptive", metadata=_choices(*POLICY_NAMES))
    objective: str = field(default="latency", metadata=_choices(*OBJECTIVES))
    models: Mapping[str, str] = field(default_factory=dict, metadata={"values": POLICY_NAMES})
    #: adaptive compares each path at mean + k x its dispersion: "mean" or "mean+<k>dev" (docs/offloading.md)
    risk: str = "mean+0.5dev"  # the bench's choice (docs/offloading.md)
    joint: bool = True  # adaptive decides inputs that arrive together jointly (list schedule over both resources)
    makespan_weight: float = field(default=0.0, metadata=_min(0))  # weight of the latest completion in that plan


@dataclass(frozen=True)
class LocalConfig:
    workers: int = field(default=1, metadata=_min(1))
    max_queue: int = field(default=256, metadata=_min(1))
    max_batch: int = field(default=32, metadata=_min(1))


@dataclass(frozen=True)
class FogConfig:
    enabled: bool = True
    endpoint: str = "tcp://127.0.0.1:5556"
    timeout_ms: float = field(default=500.0, metadata=_min(1))
    breaker_failures: int = field(default=3, metadata=_min(1))
    recovery_probes: int = field(default=2, metadata=_min(1))
    probe_interval_s: float = field(default=0.5, metadata=_min(0.01))
    curve_server_public_key: str = ""  # path of the fog's public key file ("" = no encryption)
    curve_client_secret_key: str = ""  # path of this edge's .key_secret file
    name: str = ""  # [[fog]]: the node's name in records and logs ("" = its address)
    # ---- backend = "oip": an Open Inference Protocol server (Triton, KServe, MLServer); docs/scale-out.md
    backend: str = field(default="zmq", metadata=_choices(*FOG_BACKENDS))
    url: str = ""  # oip: grpc "HOST:PORT" (or grpc://, grpcs://), rest "http(s)://HOST:PORT"
    protocol: str = field(default="grpc", metadata=_choices(*OIP_PROTOCOLS))
    tls: bool = False  # gRPC over TLS (implied by grpcs:// and https://)
    tls_ca_file: str = ""  # PEM roots that sign the server's certificate ("" = the system's)
    tls_cert_file: str = ""  # PEM client certificate chain: mutual TLS (with tls_key_file)
    tls_key_file: str = ""  # PEM client private key
    tls_server_name: str = ""  # name to check in the server's certificate when it differs from the url's host
    identity: str = field(default="version", metadata=_choices(*OIP_IDENTITIES))  # how the model hash travels
    tensors: str = field(default="manifest", metadata=_choices(*OIP_TENSORS))  # names/layouts on the wire
    canary: int = field(default=4, metadata=_min(0))  # validation inputs compared with local outputs at connect
    canary_atol: float = field(default=1e-4, metadata=_min(0))
    canary_rtol: float = field(default=1e-3, metadata=_min(0))
    server_stats: bool = True  # T_F from the server's statistics extension (Triton) where it has one


@dataclass(frozen=True)
class PowerConfig:
    source: str = field(default="auto", metadata=_choices(*POWER_KINDS))
    rate_hz: float = field(default=10.0, metadata=_min(0.01))
    thermal: bool = True  # log temp_c (and a Pi's throttled flags) with each power sample
    thermal_root: str = "/sys/class/thermal"
    ina219: Mapping[str, Any] = field(default_factory=dict, metadata={"adapter": "ina219"})
    jtop: Mapping[str, Any] = field(default_factory=dict, metadata={"adapter": "jtop"})
    hwmon: Mapping[str, Any] = field(default_factory=dict, metadata={"adapter": "hwmon"})


@dataclass(frozen=True)
class ZmqSourceConfig:
    type: str = "zmq"
    name: str = "zmq"
    endpoint: str = "tcp://*:5555"
    bind: bool = True
    rcvhwm: int = field(default=1000, metadata=_min(1))
    max_msg_bytes: int = field(default=4 * 1024 * 1024, metadata=_min(64))


@dataclass(frozen=True)
class SerialSourceConfig:
    type: str = "serial"
    name: str = ""
    url: str = ""  # /dev/ttyUSB0, loop://, socket://host:port, spy://...
    framing: str = field(default="lines", metadata=_choices(*FRAMINGS))
    baudrate: int = field(default=115200, metadata=_min(50))
    model: str = ""  # model for lines without a "name:" prefix
    max_frame_bytes: int = field(default=65536, metadata=_min(16))


SOURCE_TYPES = {"zmq": ZmqSourceConfig, "serial": SerialSourceConfig}


@dataclass(frozen=True)
class Config:
    path: str = "<defaults>"
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    fog: FogConfig = field(default_factory=FogConfig)
    power: PowerConfig = field(default_factory=PowerConfig)
    sources: Tuple[Any, ...] = ()
    sinks: Tuple[Any, ...] = ()  # [[sinks]]: where results go (edged.sinks configs), all optional
    #: [[fog]]: several fog nodes (zmq and oip mixed), in order of preference; () with a single [fog] table
    fogs: Tuple[FogConfig, ...] = ()

    @property
    def fog_nodes(self) -> Tuple[FogConfig, ...]:
        """Every configured fog node: the [[fog]] list, or the single [fog] table (``fog`` is the first)."""
        return self.fogs or (self.fog,)

    def resolved_state_dir(self) -> Path:
        from edged.profile import state_dir

        return state_dir(self.daemon.state_dir or None)

    def resolved_log_dir(self) -> Path:
        if self.logs.dir:
            return Path(self.logs.dir)
        env = os.environ.get("LOGS_DIRECTORY")
        if env:
            return Path(env.split(":")[0])
        return self.resolved_state_dir() / "logs"


SECTIONS = {f.name: f for f in dataclasses.fields(Config) if f.name not in ("path", "sources", "fogs")}


# --------------------------------------------------------------------------- validation


def key_lines(text: str) -> Dict[str, int]:
    """Line number (1-based) of every key path in a TOML text, as error messages spell them:
    ``fog.endpoint``, ``power.ina219``, ``sources[1].url``. Best effort: only for pointing at lines."""
    lines: Dict[str, int] = {}
    table = ""
    arrays: Dict[str, int] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[[") and line.endswith("]]"):
            name = line[2:-2].strip()
            arrays[name] = arrays.get(name, -1) + 1
            table = f"{name}[{arrays[name]}]"
            lines.setdefault(table, no)
        elif line.startswith("[") and line.endswith("]"):
            table = line[1:-1].strip()
            lines.setdefault(table, no)
        elif "=" in line:
            key = line.split("=", 1)[0].strip().strip('"')
            lines.setdefault(f"{table}.{key}" if table else key, no)
    return lines


class _Errors:
    def __init__(self, path: str, lines: Optional[Dict[str, int]] = None,
                 env: Optional[Mapping[str, str]] = None) -> None:
        self.path = path
        self.lines = lines or {}
        self.env = env or {}  # key path -> the EDGED_* variable that set it
        self.items: List[str] = []

    def _where(self, key: str) -> str:
        probe = key
        while probe:  # walk up: models.enabled[1] -> models.enabled; a missing sources[0].url -> sources[0]
            if probe in self.env:
                return f"{self.env[probe]} (environment)"
            if probe in self.lines:
                return f"{self.path}:{self.lines[probe]}"
            if probe.endswith("]"):
                probe = probe.rsplit("[", 1)[0]
            elif "." in probe:
                probe = probe.rsplit(".", 1)[0]
            else:
                probe = ""
        return self.path

    def add(self, key: str, value: Any, expected: str) -> None:
        shown = repr(value) if not isinstance(value, dict) else "a table"
        self.items.append(f"{self._where(key)}: {key} = {shown}: expected {expected}")

    def unknown(self, key: str, known: List[str]) -> None:
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in known if k.startswith(leaf) or leaf.startswith(k)][:2]
        close = close or difflib.get_close_matches(leaf, known, n=1)
        hint = (" (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)" if close
                else f" (known keys: {', '.join(sorted(known))})")
        self.items.append(f"{self._where(key)}: {key}: unknown key{hint}")


def _type_name(tp: str) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "Tuple[str, ...]": "a list of strings", "Mapping[str, str]": "a table of strings",
            "Mapping[str, Any]": "a table"}.get(tp, tp)


def _coerce(value: Any, tp: str) -> Tuple[bool, Any]:
    if tp == "str":
        return isinstance(value, str), value
    if tp == "bool":
        return isinstance(value, bool), value
    if tp == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp == "Tuple[str, ...]":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return ok, tuple(value) if ok else value
    if tp == "Mapping[str, str]":
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        return ok, dict(value) if ok else value
    if tp == "Mapping[str, Any]":
        return isinstance(value, dict), dict(value) if isinstance(value, dict) else value
    raise AssertionError(f"unhandled config type {tp}")


def _adapter_params(kind: str) -> Optional[Dict[str, Any]]:
    """Constructor keywords of a power adapter and their types (annotation, else the default's type),
    so typos and wrongly typed values in [power.<kind>] fail check-config, not the sampler."""
    try:
        from edged.power.base import power_source_class

        cls = power_source_class(kind)
    except Exception:
        return None
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation this Python cannot evaluate: check names only
        hints = {}
    out: Dict[str, Any] = {}
    for n, p in params.items():
        if n == "self":
            continue
        hint = hints.get(n, Any)
        if hint is Any and type(p.default) in (bool, int, float, str):
            hint = type(p.default)  # unannotated: the default's type is the best statement of intent
        out[n] = hint
    return out


def _is_union(origin: Any) -> bool:
    """``Optional[X]``/``Union[X, Y]``, and ``X | None`` where an adapter is annotated that way (3.10+)."""
    union_type = getattr(types, "UnionType", None)  # Python 3.10+
    return origin is typing.Union or (union_type is not None and origin is union_type)


def _hint_accepts(hint: Any, value: Any) -> bool:
    """Whether a TOML value fits a constructor annotation (no conversion: "1" is not an int)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(origin):
        return any(_hint_accepts(a, value) for a in args if a is not type(None))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        item = args[0] if args else Any
        return isinstance(value, list) and all(_hint_accepts(item, v) for v in value)
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return isinstance(value, dict)
    return False  # a callable, a class...: nothing a config file can hold


def _hint_text(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(origin):
        return " or ".join(_hint_text(a) for a in args if a is not type(None))
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    if origin in (list, tuple, collections.abc.Sequence):
        return "a list" + (f" of {_hint_text(args[0]).split(' ', 1)[-1]}s" if args and args[0] in simple else "")
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return "a table"
    name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    return f"a {name} (which a config file cannot set)"


def _build(cls: Any, raw: Any, prefix: str, errs: _Errors) -> Any:
    if not isinstance(raw, dict):
        errs.add(prefix, raw, "a table")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = list(fields)
    kwargs: Dict[str, Any] = {}
    for key, value in raw.items():
        kp = f"{prefix}.{key}" if prefix else key
        f = fields.get(key)
        if f is None:
            errs.unknown(kp, known)
            continue
        tp = str(f.type)
        ok, val = _coerce(value, tp)
        if not ok:
            errs.add(kp, value, _type_name(tp))
            continue
        meta = f.metadata
        if "choices" in meta and val not in meta["choices"]:
            errs.add(kp, value, "one of " + ", ".join(repr(c) for c in meta["choices"]))
            continue
        if "min" in meta and val < meta["min"]:
            errs.add(kp, value, f"a value >= {meta['min']}")
            continue
        if "values" in meta:
            bad = {k: v for k, v in val.items() if v not in meta["values"]}
            for k, v in bad.items():
                errs.add(f"{kp}.{k}", v, "one of " + ", ".join(repr(c) for c in meta["values"]))
            if bad:
                continue
        if "adapter" in meta:
            params = _adapter_params(meta["adapter"])
            if params is not None:
                for k, v in val.items():
                    if k not in params:
                        errs.unknown(f"{kp}.{k}", list(params))
                    elif not _hint_accepts(params[k], v):
                        errs.add(f"{kp}.{k}", v, _hint_text(params[k]))
        kwargs[key] = val
    return cls(**kwargs)


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except Exception:
        return text


#: EDGED_* variables that are not config overrides
NOT_OVERRIDES = ("EDGED_MODELS_DIR",)


def apply_env_overrides(raw: Dict[str, Any], environ: Mapping[str, str]) -> Dict[str, str]:
    """Apply EDGED_<SECTION>__<KEY> variables to the raw TOML dict.

    Returns ``{key path: variable}`` for every key overridden, key paths spelt as error
    messages spell them (``fog.endpoint``, ``sources[0].url``), so an error in an overridden
    value names the variable. ``EDGED_FOG_ENDPOINT`` (one underscore after a section name) is
    an error: it would otherwise be ignored without a word."""
    applied: Dict[str, str] = {}
    sections = list(SECTIONS) + ["sources", "sinks"]
    for var, text in sorted(environ.items()):
        if not var.startswith("EDGED_") or var in NOT_OVERRIDES:
            continue
        if "__" not in var:
            rest = var[len("EDGED_"):].lower()
            for sec in sections:
                if rest.startswith(sec + "_"):
                    fixed = f"EDGED_{sec.upper()}__{rest[len(sec) + 1:].upper()}"
                    raise ConfigError(f"{var}: not a config override: use two underscores between the section "
                                      f"and the key, e.g. {fixed}")
            continue
        parts = [p.lower() for p in var[len("EDGED_"):].split("__")]
        node: Any = raw
        keypath = ""
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit():
                    raise ConfigError(f"{var}: '{part}' must be an index into the list at {keypath}")
                idx = int(part)
                while len(node) <= idx:
                    node.append({})
                node = node[idx]
                keypath += f"[{idx}]"
            elif isinstance(node, dict):
                node = node.setdefault(part, [] if (part in ("sources", "sinks") and i == 0) else {})
                keypath = f"{keypath}.{part}" if keypath else part
            else:
                raise ConfigError(f"{var}: {keypath} is {node!r} in the file, not a table, so it has no key '{part}'")
        if isinstance(node, list):
            raise ConfigError(f"{var}: name a key inside the list, e.g. EDGED_SOURCES__0__URL")
        if not isinstance(node, dict):
            raise ConfigError(f"{var}: {keypath} is {node!r} in the file, not a table, so it has no key "
                              f"'{parts[-1]}'")
        node[parts[-1]] = _parse_env_value(text)
        applied[f"{keypath}.{parts[-1]}" if keypath else parts[-1]] = var
    return applied


def parse_config(raw: Mapping[str, Any], path: str = "<config>", known_models: Optional[List[str]] = None,
                 text: str = "", env_keys: Optional[Mapping[str, str]] = None,
                 check_paths: bool = False) -> Tuple[Config, List[str]]:
    """Validate a raw TOML mapping; returns (config, errors). Never raises for bad values.

    With the file's ``text``, each error starts ``file:LINE:``; a key in ``env_keys`` (key path ->
    variable, from :func:`apply_env_overrides`) starts with the variable instead. ``check_paths``
    also checks the file system: ``models.dirs`` and the CURVE key files must exist."""
    errs = _Errors(path, key_lines(text) if text else None, env_keys)
    built: Dict[str, Any] = {}
    fogs: List[FogConfig] = []
    for key, value in raw.items():
        if key in ("sources", "sinks"):
            continue
        if key == "fog" and isinstance(value, list):  # [[fog]]: several nodes
            if not value:
                errs.add("fog", value, "at least one [[fog]] table (or [fog] with enabled = false)")
            fogs = [_build(FogConfig, v, f"fog[{i}]", errs) for i, v in enumerate(value)]
            if fogs:
                built["fog"] = fogs[0]
            continue
        if key not in SECTIONS:
            errs.unknown(key, list(SECTIONS) + ["sources", "sinks"])
            continue
        cls = SECTIONS[key].default_factory  # type: ignore[misc]
        built[key] = _build(cls, value, key, errs)
    sources: List[Any] = []
    where: List[int] = []  # index in the file of each built source
    raw_sources = raw.get("sources", [])
    if not isinstance(raw_sources, list):
        errs.add("sources", raw_sources, "an array of tables: [[sources]]")
        raw_sources = []
    for i, s in enumerate(raw_sources):
        kp = f"sources[{i}]"
        if not isinstance(s, dict):
            errs.add(kp, s, "a table")
            continue
        kind = s.get("type")
        if kind == "mqtt":  # its schema lives with the source (edged/sources/mqtt.py), like the sinks'
            mq = _external(errs, _mqtt_source_config, s, kp)
            if mq is not None:
                sources.append(mq)
                where.append(i)
            continue
        if kind not in SOURCE_TYPES:
            errs.add(f"{kp}.type", kind, "one of " + ", ".join(repr(k) for k in (*SOURCE_TYPES, "mqtt")))
            continue
        src = _build(SOURCE_TYPES[kind], s, kp, errs)
        if kind == "serial":
            why = check_serial_url(src.url)
            if why:
                errs.add(f"{kp}.url", src.url, why)
            if not src.name:
                src = dataclasses.replace(src, name=f"serial:{src.url}")
        else:
            why = parse_zmq_endpoint(src.endpoint, bind=src.bind)[1]
            if why:
                errs.add(f"{kp}.endpoint", src.endpoint, why)
        sources.append(src)
        where.append(i)
    sinks: List[Any] = []
    raw_sinks = raw.get("sinks", [])
    if not isinstance(raw_sinks, list):
        errs.add("sinks", raw_sinks, "an array of tables: [[sinks]]")
        raw_sinks = []
    for i, t in enumerate(raw_sinks):
        sc = _external(errs, _sink_config, t, f"sinks[{i}]")
        if sc is not None:
            sinks.append(sc)
    names = [sc.name or sc.type for sc in sinks]
    for i, n in enumerate(names):
        if n in names[:i]:
            errs.add(f"sinks[{i}].name", n, "a name no other sink has (set name = \"...\" on each)")
    cfg = Config(path=path, sources=tuple(sources), sinks=tuple(sinks), fogs=tuple(fogs), **built)
    seen_fogs: Dict[str, str] = {}
    for key, fc in _fog_keys(cfg):
        if fc.backend == "oip":
            _check_oip(fc, errs, key)
        else:
            why = parse_zmq_endpoint(fc.endpoint, bind=False)[1]
            if why:
                errs.add(f"{key}.endpoint", fc.endpoint, why)
        node = fog_name(fc)
        if cfg.fogs and node in seen_fogs:
            errs.add(f"{key}.name" if fc.name else key, node,
                     f"a name no other fog node has ({seen_fogs[node]} has it; set name = \"...\" on each)")
        seen_fogs.setdefault(node, key)
    try:
        from edged.offload.policy import parse_risk

        parse_risk(cfg.policy.risk)
    except ConfigError:
        errs.add("policy.risk", cfg.policy.risk, '"mean" or "mean+<k>dev" with k >= 0, e.g. "mean+1dev"')
    _check_conflicts(cfg, where, errs)
    if check_paths:
        _check_paths(cfg, errs)
    if known_models is not None:
        for i, m in enumerate(cfg.models.enabled):
            if m not in known_models:
                errs.add(f"models.enabled[{i}]", m, "a model in the catalogue: " + ", ".join(known_models))
        for m in cfg.policy.models:
            if m not in known_models:
                errs.add(f"policy.models.{m}", m, "a model in the catalogue: " + ", ".join(known_models))
        for m in cfg.models.backends:
            if m not in known_models:
                errs.add(f"models.backends.{m}", m, "a model in the catalogue: " + ", ".join(known_models))
        for i, s in zip(where, cfg.sources):
            if isinstance(s, SerialSourceConfig) and s.model and s.model not in known_models:
                errs.add(f"sources[{i}].model", s.model, "a model in the catalogue: " + ", ".join(known_models))
    return cfg, errs.items


def _sink_config(raw: Any, where: str) -> Any:
    from edged.sinks import parse_sink_config  # lazily: sinks import their own libraries only when used

    return parse_sink_config(raw, where)


def _mqtt_source_config(raw: Any, where: str) -> Any:
    from edged.sources.mqtt import MqttSourceConfig

    return MqttSourceConfig.from_mapping(raw, where)


def _external(errs: _Errors, build: Callable[[Any, str], Any], raw: Any, where: str) -> Any:
    """``build(raw, where)``: a schema that lives with its plugin (sinks, the MQTT source); its ConfigError
    lines (``sinks[1].qos = 5: expected ...``) join the others, each placed at its file line."""
    try:
        return build(raw, where)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            key = line.split(" ", 1)[0].split(":", 1)[0]
            errs.items.append(f"{errs._where(key)}: {line}")
        return None


def _endpoints_clash(a: ZmqSourceConfig, b: ZmqSourceConfig) -> bool:
    """Two ZeroMQ sources that cannot both work: binding one address (the second bind fails with
    EADDRINUSE; ``*`` covers every host) or connecting twice to one peer."""
    if a.bind != b.bind:
        return False
    pa, pb = parse_zmq_endpoint(a.endpoint, a.bind)[0], parse_zmq_endpoint(b.endpoint, b.bind)[0]
    if pa is None or pb is None or pa.transport != pb.transport:
        return a.endpoint == b.endpoint
    if pa.transport == "tcp" and a.bind:
        if pa.port == "*" or pb.port == "*" or pa.port != pb.port:
            return False
        return pa.host == pb.host or pa.is_wildcard_host or pb.is_wildcard_host
    if pa.address == "*":
        return False  # ipc://* binds a fresh random path each time
    return pa.address == pb.address


def _check_conflicts(cfg: Config, where: List[int], errs: _Errors) -> None:
    """Sources that would fight over a name, an address or a port, and a fog that is this daemon."""
    seen_names: Dict[str, int] = {}
    for i, s in zip(where, cfg.sources):
        if s.name in seen_names:
            errs.add(f"sources[{i}].name", s.name, f"a name no other source has (sources[{seen_names[s.name]}] "
                                                   "has it; set name = \"...\" on each)")
        else:
            seen_names[s.name] = i
    for j, (i, s) in enumerate(zip(where, cfg.sources)):
        for k, t in zip(where[:j], cfg.sources[:j]):
            if isinstance(s, ZmqSourceConfig) and isinstance(t, ZmqSourceConfig) and _endpoints_clash(s, t):
                verb = "binds" if s.bind else "connects to"
                errs.add(f"sources[{i}].endpoint", s.endpoint,
                         f"an endpoint no other source uses (sources[{k}] already {verb} {t.endpoint!r})")
                break
            if (isinstance(s, SerialSourceConfig) and isinstance(t, SerialSourceConfig) and s.url == t.url
                    and serial_scheme(s.url) != "loop"):
                errs.add(f"sources[{i}].url", s.url, f"a port no other source opens (sources[{k}] opens it)")
                break
    for key, fc in _fog_keys(cfg):
        if not fc.enabled or fc.backend == "oip":
            continue
        fog = parse_zmq_endpoint(fc.endpoint, bind=False)[0]
        if fog is None:
            continue
        for i, s in zip(where, cfg.sources):
            if not isinstance(s, ZmqSourceConfig) or not s.bind:
                continue
            src = parse_zmq_endpoint(s.endpoint, bind=True)[0]
            if src is None or src.transport != fog.transport:
                continue
            same = _reaches(fog, src) if fog.transport == "tcp" else src.address == fog.address
            if same:
                errs.add(f"{key}.endpoint", fc.endpoint,
                         f"the fog node's address, not this daemon's own source sources[{i}] ({s.endpoint!r})")


def _fog_keys(cfg: Config) -> List[Tuple[str, FogConfig]]:
    """(key path as errors spell it, node) for each fog node: ``fog`` for the single table, ``fog[i]`` in a list."""
    if cfg.fogs:
        return [(f"fog[{i}]", fc) for i, fc in enumerate(cfg.fogs)]
    return [("fog", cfg.fog)]


def fog_name(fc: FogConfig) -> str:
    """A fog node's name in records and logs: ``name``, or its address."""
    return fc.name or (fc.url if fc.backend == "oip" else fc.endpoint)


def fog_address(fc: FogConfig) -> str:
    """Where the fog is, as a person reads it: the ZeroMQ endpoint, or ``oip grpc HOST:PORT``."""
    return f"oip {fc.protocol} {fc.url}" if fc.backend == "oip" else fc.endpoint


def _fogs_text(cfg: Config) -> str:
    on = [fog_address(fc) for fc in cfg.fog_nodes if fc.enabled]
    return "on " + ", ".join(on) if on else "off"


def _check_oip(fc: FogConfig, errs: _Errors, key: str = "fog") -> None:
    """An OIP fog: a url that fits the protocol, TLS files that come as a pair (the files' existence is
    checked with the other paths)."""
    if not fc.enabled:
        return
    from edged.offload.oip_target import parse_oip_url

    why = parse_oip_url(fc.url, fc.protocol)[1]
    if why:
        errs.add(f"{key}.url", fc.url, why)
    if bool(fc.tls_cert_file) != bool(fc.tls_key_file):
        have, lack = ("tls_cert_file", "tls_key_file") if fc.tls_cert_file else ("tls_key_file", "tls_cert_file")
        errs.add(f"{key}.{lack}", getattr(fc, lack),
                 f"a PEM file too: mutual TLS needs both tls_cert_file and tls_key_file ({have} is set)")
    if fc.protocol == "rest" and fc.tls_cert_file:
        errs.add(f"{key}.tls_cert_file", fc.tls_cert_file, "no client certificate with protocol = \"rest\" "
                 "(mutual TLS is for gRPC); leave it empty or use protocol = \"grpc\"")


def _reaches(fog: ZmqEndpoint, src: ZmqEndpoint) -> bool:
    """Whether connecting to tcp ``fog`` from this machine lands on the socket bound at tcp ``src``."""
    if fog.port != src.port:
        return False
    fh, sh = fog.host.strip("[]"), src.host.strip("[]")
    if fh == sh:
        return True
    v4_loop = {"localhost", "127.0.0.1"}
    if sh in ("*", "0.0.0.0"):  # libzmq's '*' is IPv4 unless the socket enables IPv6
        return fh in v4_loop or fh.startswith("127.")
    if sh == "::":
        return fog.is_loopback_host
    return fh in v4_loop and sh in v4_loop


def _check_paths(cfg: Config, errs: _Errors) -> None:
    """What must exist on this machine for ``edged run`` to start."""
    for i, d in enumerate(cfg.models.dirs):
        p = Path(d)
        if not p.is_dir():
            state = "is not a directory" if p.exists() else "does not exist"
            rel = "" if p.is_absolute() else f" (relative to the working directory {os.getcwd()})"
            errs.add(f"models.dirs[{i}]", d, f"an existing directory of <model>/manifest.json folders: {d} "
                                             f"{state}{rel}")
    for key, fc in _fog_keys(cfg):
        if fc.enabled and fc.backend == "oip":
            for k in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
                f = getattr(fc, k)
                if f and not os.path.isfile(f):
                    errs.add(f"{key}.{k}", f, "an existing PEM file: no such file")
        elif fc.enabled:
            server = fc.curve_server_public_key
            if server and not (len(server) == 40 and not os.path.exists(server)) and not os.path.isfile(server):
                errs.add(f"{key}.curve_server_public_key", server,
                         "the fog's public certificate file from 'edged keys' (or its 40-character z85 key): "
                         "no such file")
            client = fc.curve_client_secret_key
            if client and not os.path.isfile(client):
                errs.add(f"{key}.curve_client_secret_key", client,
                         "this edge's .key_secret certificate file from 'edged keys': no such file")


def load_config(path: Optional[os.PathLike], environ: Optional[Mapping[str, str]] = None,
                check_models: bool = True) -> Config:
    """Read, override from the environment, validate. Raises ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    text = ""
    if path is None:
        raw: Dict[str, Any] = {}
        shown = "<defaults>"
    else:
        shown = str(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
            text = data.decode("utf-8", errors="replace")
            raw = tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"{shown}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{shown}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{shown}: cannot read: {exc}") from None
    env_keys = apply_env_overrides(raw, env)
    known = None
    if check_models:
        from edged.models import Catalogue

        try:
            extra = raw.get("models", {}).get("dirs", []) if isinstance(raw.get("models"), dict) else []
            known = Catalogue.discover([d for d in extra if isinstance(d, str) and Path(d).is_dir()]).names()
        except Exception:
            known = None
    cfg, errors = parse_config(raw, shown, known, text, env_keys=env_keys, check_paths=True)
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


# --------------------------------------------------------------------------- CLI: edged check-config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="the TOML config file to validate")
    p.add_argument("--no-env", action="store_true", help="ignore EDGED_* environment overrides")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when the config is valid")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, environ={} if args.no_env else None)
    except ConfigError as exc:
        lines = str(exc).splitlines()
        for line in lines:
            print(line, file=sys.stderr)
        print(f"edged check-config: {len(lines)} error(s)", file=sys.stderr)
        return EXIT_CONFIG
    from edged.logs import ensure_writable_dir

    log_dir = cfg.resolved_log_dir()
    try:  # as `edged run` does before READY=1: prove the logs dir writable (run creates it; a check does not)
        if log_dir.is_dir():
            ensure_writable_dir(log_dir)
        else:
            parent = next((p for p in log_dir.parents if p.exists()), Path("/"))
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise EdgedError(f"logs dir {log_dir} does not exist and cannot be created: {parent} is not a "
                                 "writable directory; set logs.dir or fix the permissions")
    except EdgedError as exc:  # not a config error: exit 1, so Restart=on-failure may retry (a disk comes back)
        print(f"edged check-config: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        srcs = ", ".join(f"{s.type}:{getattr(s, 'endpoint', '') or getattr(s, 'url', '') or getattr(s, 'host', '')}"
                         for s in cfg.sources)
        sinks = ", ".join(sc.name or sc.type for sc in cfg.sinks)
        print(f"{cfg.path}: ok ({len(cfg.sources)} source(s): {srcs or 'none'}; {len(cfg.sinks)} sink(s)"
              f"{': ' + sinks if sinks else ''}; policy {cfg.policy.default}; "
              f"fog {_fogs_text(cfg)}; power {cfg.power.source})")
    return 0
