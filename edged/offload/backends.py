"""Fog back ends by ``fog.backend``: the one place that turns a ``FogConfig`` into a back end.

``zmq`` is the native ``edged fog`` link (:class:`~edged.offload.fog_client.ZmqFogBackend`); ``oip`` an Open
Inference Protocol server, Triton, KServe or MLServer (:class:`~edged.offload.oip.OipFogBackend`, which imports
grpcio only when it is configured).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

log = logging.getLogger("edged.fog")


def build_fog_backend(fc: Any) -> Optional[Any]:
    """The back end ``fc`` (a :class:`edged.config.FogConfig`) asks for, or None when the fog is off.

    Raises ConfigError for an address or key/certificate file that cannot work (before any model loads)."""
    if not fc.enabled:
        return None
    if getattr(fc, "backend", "zmq") == "oip":
        from edged.offload.oip import make_oip_backend

        return make_oip_backend(fc)
    from edged.offload.fog_client import ZmqFogBackend

    return ZmqFogBackend(fc.endpoint, curve_server_key=fc.curve_server_public_key or None,
                         curve_client_key=fc.curve_client_secret_key or None)


def attach_models(fog: Any, models: Mapping[str, Any]) -> Dict[str, str]:
    """Tell a back end that checks model identity (OIP: the canary) which models this edge runs; returns
    ``name -> status`` ({} for a back end that needs nothing, such as the ZeroMQ one, whose fog checks hashes).
    A model the node fails is logged here and runs locally until a probe finds the node serving it."""
    attach = getattr(fog, "attach_models", None)
    if attach is None:
        return {}
    status: Dict[str, str] = attach(models)
    for name, s in status.items():
        if s != "verified":
            log.warning("fog %s, model %s: %s", getattr(fog, "node", "?"), name, s)
    return status
