"""Where an Open Inference Protocol server is: ``fog.url`` parsed and checked (no network, no grpc import).

gRPC: ``HOST:PORT``, ``grpc://HOST:PORT`` or ``grpcs://HOST:PORT`` (TLS). REST: ``http://HOST[:PORT][/PREFIX]``
or ``https://...``. IPv6 hosts in brackets: ``[::1]:8081``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import urlsplit


@dataclass(frozen=True)
class OipTarget:
    protocol: str  # "grpc" | "rest"
    host: str  # without brackets
    port: int
    tls: bool
    prefix: str = ""  # REST path prefix (a gateway route), without a trailing slash

    @property
    def address(self) -> str:
        """``HOST:PORT`` as gRPC and http.client take it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        scheme = {("grpc", False): "grpc", ("grpc", True): "grpcs", ("rest", False): "http",
                  ("rest", True): "https"}[(self.protocol, self.tls)]
        return f"{scheme}://{self.address}{self.prefix}"


_GRPC_FORM = "HOST:PORT, grpc://HOST:PORT or grpcs://HOST:PORT (TLS)"
_REST_FORM = "http://HOST[:PORT] or https://HOST[:PORT]"


def parse_oip_url(url: str, protocol: str = "grpc") -> Tuple[Optional[OipTarget], str]:
    """(target, "") or (None, what was expected) for ``fog.url`` with ``fog.protocol``."""
    if protocol not in ("grpc", "rest"):
        return None, f"protocol 'grpc' or 'rest', not {protocol!r}"
    form = _GRPC_FORM if protocol == "grpc" else _REST_FORM
    if not isinstance(url, str) or not url.strip():
        return None, f"the OIP server's address for protocol = {protocol!r}: {form}"
    text = url.strip()
    if "://" not in text:
        if protocol == "rest":
            return None, f"{_REST_FORM} for protocol = 'rest'"
        text = "grpc://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return None, f"{form} ({exc})"
    scheme = parts.scheme.lower()
    wants = {"grpc": ("grpc", "grpcs"), "rest": ("http", "https")}[protocol]
    if scheme not in wants:
        other = "rest" if scheme in ("http", "https") else "grpc" if scheme in ("grpc", "grpcs") else None
        hint = f"; for a {scheme}:// url set protocol = {other!r}" if other else ""
        return None, f"{form} for protocol = {protocol!r}{hint}"
    host = parts.hostname or ""
    if not host:
        return None, f"{form}: no host in {url!r}"
    tls = scheme in ("grpcs", "https")
    if port is None:
        if protocol == "grpc":
            return None, f"{form}: a port is needed (MLServer and KServe listen on 8081, Triton on 8001)"
        port = 443 if tls else 80
    if not 0 < port < 65536:
        return None, f"{form}: port {port} is out of range"
    if parts.query or parts.fragment or (protocol == "grpc" and parts.path not in ("", "/")):
        return None, f"{form}: no path, query or fragment in {url!r}"
    prefix = parts.path.rstrip("/") if protocol == "rest" else ""
    return OipTarget(protocol=protocol, host=host, port=port, tls=tls, prefix=prefix), ""
