"""Broker connection settings shared by the MQTT result sink and the MQTT source.

paho-mqtt (>= 2.0, extra ``mqtt``) is imported only by :func:`import_paho`, so edged
imports and its configs check without it; a missing paho gives
``sink 'mqtt' needs paho-mqtt: pip install 'edged[mqtt]'``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Type, TypeVar

from edged import errors
from edged.errors import EdgedError, MissingDependencyError
from edged.sinks.base import build_config

PROTOCOLS = ("3.1.1", "5")
B = TypeVar("B", bound="BrokerConfig")


def import_paho(what: str) -> Any:
    """The ``paho.mqtt.client`` module, or MissingDependencyError naming the extra (``what``: "sink 'mqtt'")."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise MissingDependencyError(f"{what} needs paho-mqtt: pip install 'edged[mqtt]'") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise MissingDependencyError(f"{what} needs paho-mqtt >= 2.0: pip install 'edged[mqtt]'")
    return mqtt


def describe_os_error(exc: BaseException) -> str:
    """:func:`edged.errors.describe_os_error`, and ``TLS: <why>`` for a TLS failure
    (``certificate verify failed: Hostname mismatch ...``)."""
    import ssl

    if isinstance(exc, ssl.SSLError):
        why = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
        return f"TLS: {str(why)[:200]}" + (" (certificate verify failed)"
                                           if isinstance(exc, ssl.SSLCertVerificationError) else "")
    return errors.describe_os_error(exc)


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to log in (keys of an ``mqtt`` sink or source table).

    Attributes:
        type, name: the table's type (``mqtt``) and the sink's or source's name.
        host, port: the broker (1883 plain, 8883 usually TLS).
        client_id: MQTT client id; empty = ``edged-<hostname>-<name>``.
        protocol: ``3.1.1`` or ``5``.
        keepalive_s: MQTT keepalive (s); a dead broker is noticed within ~1.5x this.
        username, password: login; ``password_file`` reads the password from a file instead
            (first line; keep it mode 0600, e.g. under /etc/edged/).
        tls: use TLS; ``ca_file`` (CA bundle; empty = the system's), ``cert_file`` and
            ``key_file`` (client certificate), ``tls_insecure`` (skip the host name check:
            tests only).
        reconnect_min_s, reconnect_max_s: reconnect backoff, doubling from min to max (s).
    """

    type: str = "mqtt"
    name: str = ""
    host: str = "localhost"
    port: int = field(default=1883, metadata={"min": 1, "max": 65535})
    client_id: str = ""
    protocol: str = field(default="3.1.1", metadata={"choices": PROTOCOLS})
    keepalive_s: int = field(default=30, metadata={"min": 5, "max": 65535})
    username: str = ""
    password: str = field(default="", metadata={"secret": True})
    password_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    tls_insecure: bool = False
    reconnect_min_s: float = field(default=0.5, metadata={"min": 0.01})
    reconnect_max_s: float = field(default=30.0, metadata={"min": 0.01})

    @classmethod
    def from_mapping(cls: Type[B], raw: Mapping[str, Any], where: str = "sources[0]") -> B:
        """Build from one config table; ConfigError lists every bad key (``<where>.<key> = ...: expected ...``)."""
        return build_config(cls, raw, where)

    def label(self) -> str:
        """``mqtt sink 'results'`` for messages."""
        return f"{self.type} {'sink' if hasattr(self, 'filter') else 'source'} {self.name or self.type!r}"

    def problems(self) -> List[str]:
        out: List[str] = []
        if not self.host:
            out.append("host = '': expected the broker's host name or address")
        if self.password and self.password_file:
            out.append("password_file: give either password or password_file, not both")
        if (self.password or self.password_file) and not self.username:
            out.append("username = '': expected a username with a password")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path and not self.tls:
                out.append(f"{key} = {path!r}: set tls = true to use it")
            elif path and not os.access(path, os.R_OK):
                out.append(f"{key} = {path!r}: expected a readable file")
        if self.key_file and not self.cert_file:
            out.append("key_file: expected cert_file with it (the client certificate)")
        if self.password_file and not os.access(self.password_file, os.R_OK):
            out.append(f"password_file = {self.password_file!r}: expected a readable file")
        if self.reconnect_max_s < self.reconnect_min_s:
            out.append(f"reconnect_max_s = {self.reconnect_max_s}: expected >= reconnect_min_s "
                       f"({self.reconnect_min_s})")
        return out

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def resolved_client_id(self) -> str:
        return self.client_id or f"edged-{socket.gethostname()}-{self.name or self.type}"

    def read_password(self) -> Optional[str]:
        """The password (from ``password_file`` if set), None without one; EdgedError if unreadable."""
        if self.password_file:
            try:
                with open(self.password_file, encoding="utf-8") as f:
                    return f.readline().rstrip("\r\n")
            except OSError as exc:
                raise EdgedError(f"{self.label()}: cannot read password_file {self.password_file}: "
                                 f"{describe_os_error(exc)}") from None
        return self.password or None


def make_client(cfg: BrokerConfig, what: str, clean: bool = True) -> Any:
    """A configured (not connected) paho ``Client``: callback API v2, login, TLS, reconnect backoff.

    Raises MissingDependencyError without paho, EdgedError for unreadable credentials/TLS files.
    """
    mqtt = import_paho(what)
    v5 = cfg.protocol == "5"
    kwargs: dict = {"client_id": cfg.resolved_client_id(), "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311}
    if not v5:
        kwargs["clean_session"] = clean
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.read_password())
    if cfg.tls:
        try:
            client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                           keyfile=cfg.key_file or None)
        except (OSError, ValueError) as exc:
            raise EdgedError(f"{cfg.label()}: TLS set-up failed for {cfg.url}: {describe_os_error(exc)}") from None
        if cfg.tls_insecure:
            client.tls_insecure_set(True)
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # floats work (paho adds them to time())
    return client


def connect_kwargs(cfg: BrokerConfig, clean: bool = True) -> dict:
    """Keyword arguments of ``client.connect`` / ``connect_async`` for ``cfg``."""
    kw: dict = {"host": cfg.host, "port": cfg.port, "keepalive": cfg.keepalive_s}
    if cfg.protocol == "5":
        kw["clean_start"] = clean
    return kw


def describe_reason(reason_code: Any) -> str:
    """A paho ReasonCode (or int rc) as text: ``Not authorized``, ``Bad user name or password``."""
    text = str(reason_code)
    hint = ""
    low = text.lower()
    if "authori" in low or "password" in low or "user name" in low:
        hint = " (check username/password)"
    return f"{text}{hint}"


def is_failure(reason_code: Any) -> bool:
    """True if a CONNACK reason code (paho ReasonCode or int) is a refusal."""
    val = getattr(reason_code, "is_failure", None)
    if isinstance(val, bool):
        return val
    try:
        return int(reason_code) != 0
    except (TypeError, ValueError):
        return True
