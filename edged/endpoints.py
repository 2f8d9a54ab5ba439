"""Syntax checks for the addresses edged opens: ZeroMQ endpoints and serial port URLs.

These are edged's own parsers, so ``edged check-config`` (and ``edged run`` before READY=1)
refuse a malformed address with a message saying what was expected, instead of relying on
libzmq or pyserial to raise later in some I/O thread. They check syntax only: nothing is
resolved, bound or opened here (a host that does not resolve is caught where the socket is
made, see :class:`edged.offload.fog_client.ZmqFogBackend`).

Each ``check_*`` function returns ``None`` for a good address, else the text that follows
``expected`` in an error message, e.g. ``"tcp://HOST:PORT, ipc://PATH or inproc://NAME
(missing '://' after 'tcp')"``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Optional, Tuple

#: transports edged's ZeroMQ sockets (PULL, DEALER, ROUTER) can use; inproc only within one process (tests)
ZMQ_TRANSPORTS = ("tcp", "ipc", "inproc")
ZMQ_EXPECTED = "tcp://HOST:PORT, ipc://PATH or inproc://NAME"
#: Linux ``sun_path`` is 108 bytes including the terminating NUL
IPC_PATH_MAX = 107
#: ``serial_for_url`` schemes pyserial ships (``serial.urlhandler.protocol_<scheme>``)
SERIAL_SCHEMES = ("loop", "socket", "rfc2217", "spy", "alt", "hwgrep", "cp2110")
SERIAL_EXPECTED = ("a device path (/dev/ttyUSB0, /dev/serial/by-id/...) or a URL with a scheme pyserial knows: "
                   + ", ".join(f"{s}://" for s in SERIAL_SCHEMES))

_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


@dataclass(frozen=True)
class ZmqEndpoint:
    """A parsed ZeroMQ endpoint. ``host``/``port`` are set for tcp (``port`` is ``"*"`` or digits)."""

    transport: str
    address: str
    host: str = ""
    port: str = ""

    @property
    def is_wildcard_host(self) -> bool:
        return self.host in ("*", "0.0.0.0", "::", "[::]")

    @property
    def is_loopback_host(self) -> bool:
        h = self.host.strip("[]")
        if h == "localhost":
            return True
        try:
            return ipaddress.ip_address(h.split("%", 1)[0]).is_loopback
        except ValueError:
            return False


def _check_host(host: str, bind: bool) -> Optional[str]:
    if not host:
        return "a host before ':PORT'"
    if host == "*":
        return None if bind else "a host name or address to connect to, not '*' (which only binds)"
    if host.startswith("["):
        if not host.endswith("]"):
            return "an IPv6 address in brackets, e.g. [::1]"
        try:
            ipaddress.IPv6Address(host[1:-1].split("%", 1)[0])
        except ValueError:
            return f"an IPv6 address in brackets, not {host!r}"
        return None
    if ":" in host:  # libzmq takes a bare IPv6 address; accept it when it is one
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return f"a host name or address, not {host!r} (IPv6 goes in brackets, e.g. [::1])"
        return None
    if not _HOSTNAME.match(host) or len(host) > 253:
        what = "a host name, IP address or interface name" if bind else "a host name or IP address"
        return f"{what}, not {host!r}"
    return None


def _check_port(port: str, bind: bool) -> Optional[str]:
    if bind and port == "*":
        return None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return "a port 1-65535" + (" or '*' for any free port" if bind else "") + f", not {port!r}"
    return None


def _split_host_port(addr: str) -> Optional[Tuple[str, str]]:
    if ":" not in addr:
        return None
    host, port = addr.rsplit(":", 1)
    return host, port


def parse_zmq_endpoint(endpoint: str, bind: bool = False) -> Tuple[Optional[ZmqEndpoint], Optional[str]]:
    """Parse ``endpoint`` as a socket that binds (``bind=True``) or connects would use it.

    Returns ``(endpoint, None)`` or ``(None, expected)``: ``expected`` completes the sentence
    "expected ..." (it starts with :data:`ZMQ_EXPECTED` and names what was wrong)."""
    if not isinstance(endpoint, str) or not endpoint:
        return None, ZMQ_EXPECTED
    if "://" not in endpoint:
        hint = ""
        m = re.match(r"^([a-z]+)(:/?/?|//)(.*)$", endpoint)
        if m and m.group(1) in ZMQ_TRANSPORTS:
            hint = f" (missing '://' after '{m.group(1)}')"
        return None, ZMQ_EXPECTED + hint
    transport, addr = endpoint.split("://", 1)
    if transport not in ZMQ_TRANSPORTS:
        return None, f"{ZMQ_EXPECTED} (transport {transport!r} is not one edged can use)"
    if transport == "inproc":
        return (ZmqEndpoint(transport, addr), None) if addr else (None, ZMQ_EXPECTED + " (empty inproc name)")
    if transport == "ipc":
        if not addr:
            return None, ZMQ_EXPECTED + " (empty ipc path)"
        if addr == "*" and bind:
            return ZmqEndpoint(transport, addr), None
        if len(os.fsencode(addr)) > IPC_PATH_MAX:
            return None, (f"{ZMQ_EXPECTED} (an ipc path is at most {IPC_PATH_MAX} bytes, this one has "
                          f"{len(os.fsencode(addr))})")
        return ZmqEndpoint(transport, addr), None
    # tcp: [SOURCE;]HOST:PORT (a connect may name the local address to use before ';')
    target = addr
    if ";" in addr:
        if bind:
            return None, ZMQ_EXPECTED + " (a ';' source address only applies when connecting)"
        source, target = addr.split(";", 1)
        hp = _split_host_port(source)
        if hp is None:
            return None, ZMQ_EXPECTED + f" (source address {source!r} needs HOST:PORT)"
        why = _check_host(hp[0], bind=True) or (None if hp[1] in ("0", "*") else _check_port(hp[1], True))
        if why:
            return None, f"{ZMQ_EXPECTED} (the source address before ';' needs {why})"
    hp = _split_host_port(target)
    if hp is None or (target.startswith("[") and target.endswith("]")):
        return None, ZMQ_EXPECTED + f" ({target!r} has no ':PORT')"
    host, port = hp
    why = _check_host(host, bind) or _check_port(port, bind)
    if why:
        return None, f"{ZMQ_EXPECTED} (tcp needs {why})"
    return ZmqEndpoint(transport, addr, host, port), None


def check_zmq_endpoint(endpoint: str, bind: bool = False) -> Optional[str]:
    """``None`` if ``endpoint`` is a valid ZeroMQ endpoint to bind/connect, else what was expected."""
    return parse_zmq_endpoint(endpoint, bind)[1]


def serial_scheme(url: str) -> Optional[str]:
    """The URL scheme of a serial port name (``"socket"`` for ``socket://h:1``), or None for a device path."""
    return url.split("://", 1)[0].lower() if "://" in url else None


def check_serial_url(url: str) -> Optional[str]:
    """``None`` if ``url`` names a serial port edged can open with ``serial_for_url``, else what was expected.

    A device path must be absolute (``/dev/ttyACM0``); whether it exists is not checked here (an
    absent device is retried at run time). ``socket://`` and ``rfc2217://`` need ``HOST:PORT``."""
    if not isinstance(url, str) or not url:
        return "a serial port path or URL (/dev/ttyUSB0, loop://, socket://host:port)"
    scheme = serial_scheme(url)
    if scheme is None:
        if os.name != "nt" and not url.startswith("/"):
            return SERIAL_EXPECTED + f" ({url!r} is neither an absolute path nor a URL)"
        return None
    if scheme not in SERIAL_SCHEMES:
        return SERIAL_EXPECTED + f" (scheme {scheme!r} is unknown)"
    rest = url.split("://", 1)[1]
    if scheme in ("socket", "rfc2217"):
        netloc = rest.split("?", 1)[0].rstrip("/")
        hp = _split_host_port(netloc)
        why = "HOST:PORT" if hp is None else (_check_host(hp[0], bind=False) or _check_port(hp[1], bind=False))
        if why:
            return f"{scheme}://HOST:PORT[?options]" + ("" if hp is None else f" (needs {why})")
    if scheme in ("spy", "alt", "hwgrep", "cp2110") and not rest.split("?", 1)[0]:
        return f"{scheme}://PORT[?options] (the port after {scheme}:// is empty)"
    return None
