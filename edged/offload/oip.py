"""Open Inference Protocol (KServe v2) fog back end: Triton, KServe and MLServer as fog nodes.

:class:`OipFogBackend` is a :class:`~edged.offload.fog_client.FogBackend`: ``submit`` returns a future
that resolves to a :class:`FogReply` (an :class:`OipReply`) or fails with the same typed failures as the
ZeroMQ back end, so the dispatcher's breaker and local fallback work unchanged:

=========================================  ======================  =========================================
what happened                              failure                 what the dispatcher does
=========================================  ======================  =========================================
no reply before the deadline               :class:`FogTimeout`     falls back locally; counts to the breaker
no connection (UNAVAILABLE, closed)        :class:`FogUnavailable` falls back locally; counts to the breaker
not the model this edge runs (identity)    :class:`FogRefused`     runs the model locally until a ping says
                                                                   the node serves it again
the server answered an error               :class:`FogError`       falls back locally; the node is alive
=========================================  ======================  =========================================

Transport: gRPC (``grpcio`` alone: the messages are encoded by :mod:`edged.offload.oip_wire`, no protobuf
runtime, no generated stubs) with inputs as ``raw_input_contents``; replies decode from raw or typed
contents (KServe answers ``fp32_contents``). Or REST JSON (stdlib ``http.client``) for small tensors.
gRPC may use TLS or mutual TLS. ``grpcio`` is imported only when this back end is built.

Model identity (OIP carries no model hash):

- ``identity = "version"`` (MLServer): the model version is ``sha256-<first 16 hex of the manifest hash>``
  (:func:`version_for`); a node without that version answers NOT_FOUND, which is a refusal.
- ``identity = "name"`` (Triton: integer versions only; KServe: ``versions`` is null): the model is served
  as ``<name>-sha256-<16 hex>`` (:func:`name_for`).
- ``identity = "none"``: the name alone (only the canary vouches for the model).

Every reply's ``model_version`` (when the server echoes one) and the ``edged_model_hash`` response parameter
(sent by edged's own MLServer/KServe runtimes) are checked against the edge's hash. On top of that a
*canary* runs at connect (:meth:`OipFogBackend.attach_models`) and again after the node comes back: a few
validation inputs, whose remote outputs must equal the local ones within ``canary_atol``/``canary_rtol``.
A model that fails is refused on this node (``FogRefused`` naming why) and is retried every
``recheck_s`` seconds by :meth:`ping`; one whose canary passes is reported by ``ping`` with its hash, which
is what makes the dispatcher offload it again.

T_F (the fog's execution time, µs) of each reply, and where it came from (:attr:`OipReply.t_f_source`):

- ``"server"``: the ``edged_t_f_ns`` response parameter of edged's own runtimes (per request, exact);
- ``"server_stats"``: Triton's statistics extension (``compute_infer`` ns / count since the previous ping,
  a mean per model; refreshed by :meth:`ping`);
- ``"derived"``: the round trip minus the link time this back end learned from its own probes (ServerReady
  round trips, and padded ones for the per-byte cost). Never negative.

Probes: :meth:`ping` = ServerReady (+ ModelReady and the pending canaries when ``pad_bytes`` is 0). A padded
probe is a ServerReady request carrying ``2 * pad_bytes`` in an unknown protobuf field, which every server
skips: the same bytes on the link as the ZeroMQ fog's padded ping (padding each way), no dummy model needed.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import math
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from edged.errors import ConfigError, EdgedError
from edged.offload import oip_wire as wire
from edged.offload.fog_client import (
    FogBackend,
    FogError,
    FogFailure,
    FogRefused,
    FogReply,
    FogTimeout,
    FogUnavailable,
    PingReply,
)
from edged.offload.oip_target import OipTarget, parse_oip_url

log = logging.getLogger("edged.fog_oip")

SERVICE = "/inference.GRPCInferenceService/"
#: bytes a gRPC message costs on the link beyond its body: the 5-byte length prefix and HPACK-compressed
#: headers of a warm stream (an estimate; the link estimator learns the rest)
GRPC_OVERHEAD_BYTES = 40
#: response parameters edged's own runtimes (edged.fog.mlserver, edged.fog.kserve) add to every reply
PARAM_T_F_NS = "edged_t_f_ns"
PARAM_MODEL_HASH = "edged_model_hash"


def version_for(model_hash: str) -> str:
    """The OIP model version that names a model hash: ``sha256-<first 16 hex digits>``."""
    return f"sha256-{model_hash[:16]}"


def name_for(model: str, model_hash: str) -> str:
    """The OIP model name that carries the hash, for servers whose versions cannot (Triton, KServe)."""
    return f"{model}-sha256-{model_hash[:16]}"


@dataclass(frozen=True)
class OipReply(FogReply):
    """A :class:`FogReply` from an OIP server, with where ``t_f_us`` came from and what the server said it ran.

    ``t_f_source``: ``"server"`` (a per-request figure the server sent), ``"server_stats"`` (the statistics
    extension's recent mean), or ``"derived"`` (round trip minus the learned link time)."""

    t_f_source: str = "derived"
    model_version: str = ""
    node: str = ""


@dataclass
class _Model:
    """What this node must serve for one edge model, and whether it has shown that it does."""

    name: str
    model_hash: str
    remote_name: str
    remote_version: str
    entry: Any = None  # edged.models.ModelEntry (names, layouts, outputs) when attached
    runner: Any = None  # the local LoadedModel the canary compares with
    status: str = "unchecked"  # unchecked | verified | refused
    reason: str = ""
    checked_at: float = -1e18
    recheck: bool = False  # the node came back: run the canary again (submits go on meanwhile)
    input_names: Dict[str, str] = field(default_factory=dict)  # manifest name -> wire name
    input_perms: Dict[str, Optional[Tuple[int, ...]]] = field(default_factory=dict)
    output_names: Dict[str, str] = field(default_factory=dict)  # wire name -> manifest name
    batched: Dict[str, bool] = field(default_factory=dict)
    first_output: str = ""
    stats: Optional[Tuple[int, int]] = None  # last (count, ns) of Triton's compute_infer
    stats_t_f_us: Optional[float] = None
    recent_t_f: List[float] = field(default_factory=list)  # T_F (µs) of the last replies, any source
    #: the canary: (feeds, local outputs), computed once at attach on the caller's thread (a LiteRT interpreter
    #: must not run on the probe thread while a local worker uses it)
    canary_rows: List[Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]] = field(default_factory=list)


class _Settler:
    """Resolves futures once, whoever gets there first (the transport, the deadline reaper, close)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def result(self, fut: Future[Any], value: Any) -> bool:
        with self._lock:
            if fut.done():
                return False
            fut.set_result(value)
            return True

    def fail(self, fut: Future[Any], exc: BaseException) -> bool:
        with self._lock:
            if fut.done():
                return False
            fut.set_exception(exc)
            return True


class _Reaper:
    """One thread that fails REST requests at their deadline (a blocked socket read may outlast it), so every
    future resolves by its deadline whatever the connection does."""

    def __init__(self, fail: Callable[[Future[Any], FogFailure], None]) -> None:
        self._fail = fail
        self._heap: List[Tuple[float, int, Future[Any], FogFailure]] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fog-oip-deadlines", daemon=True)
        self._thread.start()

    def add(self, deadline: float, fut: Future[Any], exc: FogFailure) -> None:
        with self._cv:
            heapq.heappush(self._heap, (deadline, next(self._seq), fut, exc))
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cv.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic()))
                if self._stopped:
                    return
                _, _, fut, exc = heapq.heappop(self._heap)
            if not fut.done():
                self._fail(fut, exc)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(2.0)


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"fog.{what} {path!r}: cannot read it ({exc.strerror}); expected a PEM file") from exc


class OipFogBackend(FogBackend):
    """Offload to an Open Inference Protocol server.

    Args:
        url: ``HOST:PORT`` / ``grpc(s)://HOST:PORT`` (gRPC) or ``http(s)://HOST[:PORT]`` (REST).
        protocol: ``"grpc"`` or ``"rest"`` (JSON: small tensors only; no padded probes).
        tls: TLS for gRPC (implied by ``grpcs://``/``https://``); ``tls_ca_file`` the PEM roots ("" = system),
            ``tls_cert_file`` + ``tls_key_file`` a client certificate (mutual TLS), ``tls_server_name`` the name
            to check in the server's certificate.
        identity: ``"version"``, ``"name"`` or ``"none"`` (see the module docstring).
        tensors: ``"manifest"`` (the server runs edged's runtime: manifest names, canonical layouts) or
            ``"artifact"`` (the server runs the ONNX file itself, as Triton does: the file's tensor names and
            layouts; inputs are transposed here).
        canary: validation inputs per model compared at connect (0 = no canary); ``canary_atol``/``canary_rtol``.
        server_stats: ask the statistics extension for T_F (Triton); turned off by itself where unimplemented.
        recheck_s: how often :meth:`ping` retries a model whose identity check failed (s).
        max_msg_bytes: largest reply accepted (bytes).
        rest_workers: concurrent REST requests (threads, each with its own keep-alive connection).
        rebuild_after_timeouts: consecutive timeouts after which the gRPC connection is replaced (0 = never).

    Raises:
        ConfigError: a url that does not fit the protocol, unreadable TLS files, or grpcio missing.
    """

    name = "oip"
    #: an engine serves whole models: a partitioned input (``submit(..., cut=...)``) fails with FogError
    supports_cuts = False

    def __init__(self, url: str, protocol: str = "grpc", tls: bool = False, tls_ca_file: str = "",
                 tls_cert_file: str = "", tls_key_file: str = "", tls_server_name: str = "",
                 identity: str = "version", tensors: str = "manifest", canary: int = 4,
                 canary_atol: float = 1e-4, canary_rtol: float = 1e-3, server_stats: bool = True,
                 recheck_s: float = 30.0, max_msg_bytes: int = 64 * 1024 * 1024, rest_workers: int = 4,
                 rebuild_after_timeouts: int = 3) -> None:
        target, why = parse_oip_url(url, protocol)
        if target is None:
            raise ConfigError(f"fog.url {url!r}: expected {why}")
        if identity not in ("version", "name", "none"):
            raise ConfigError(f"fog.identity {identity!r}: expected 'version', 'name' or 'none'")
        if tensors not in ("manifest", "artifact"):
            raise ConfigError(f"fog.tensors {tensors!r}: expected 'manifest' or 'artifact'")
        if bool(tls_cert_file) != bool(tls_key_file):
            raise ConfigError("fog.tls_cert_file and fog.tls_key_file: mutual TLS needs both PEM files")
        if tls and not target.tls:
            target = OipTarget(target.protocol, target.host, target.port, True, target.prefix)
        self.target = target
        self.node = str(target)
        self.identity = identity
        self.tensors = tensors
        self.canary = int(canary)
        self.canary_atol = float(canary_atol)
        self.canary_rtol = float(canary_rtol)
        self.server_stats = bool(server_stats)
        self.recheck_s = float(recheck_s)
        self.max_msg_bytes = int(max_msg_bytes)
        self._settle = _Settler()
        self._lock = threading.Lock()
        self._models: Dict[str, _Model] = {}
        self._pending: Dict[int, Tuple[Future[Any], Any]] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._was_down = False
        # link time learned from probes: base round trip (µs) and cost per byte (µs/B)
        self._base_rtts: List[float] = []
        self._us_per_byte = 0.0
        self.counts: Dict[str, int] = {"sent": 0, "ok": 0, "timeout": 0, "unavailable": 0, "refused": 0,
                                       "error": 0, "canary_ok": 0, "canary_failed": 0, "rebuilds": 0}
        self.rebuild_after_timeouts = int(rebuild_after_timeouts)
        self._timeouts_in_row = 0
        self._channel: Any = None
        self._grpc: Any = None
        self._calls: Dict[str, Any] = {}
        self._pool: Optional[ThreadPoolExecutor] = None
        self._local = threading.local()
        self._conns: set = set()  # every REST connection, so close() can break a read blocked on a silent node
        self._ssl: Optional[ssl.SSLContext] = None
        self._tls_server_name = tls_server_name
        if target.protocol == "grpc":
            self._open_grpc(tls_ca_file, tls_cert_file, tls_key_file, tls_server_name)
        else:
            if target.tls:
                try:
                    self._ssl = ssl.create_default_context(cafile=tls_ca_file or None)
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"fog.tls_ca_file {tls_ca_file!r}: cannot load it ({exc}); expected a PEM "
                                      "file of the roots that sign the server's certificate") from exc
            self._pool = ThreadPoolExecutor(max_workers=max(1, rest_workers), thread_name_prefix="fog-oip-rest")
            self._reaper = _Reaper(self._fail)

    @classmethod
    def from_config(cls, fc: Any) -> OipFogBackend:
        """Build from a :class:`edged.config.FogConfig` with ``backend = "oip"``."""
        return cls(fc.url, protocol=fc.protocol, tls=fc.tls, tls_ca_file=fc.tls_ca_file,
                   tls_cert_file=fc.tls_cert_file, tls_key_file=fc.tls_key_file,
                   tls_server_name=fc.tls_server_name, identity=fc.identity, tensors=fc.tensors,
                   canary=fc.canary, canary_atol=fc.canary_atol, canary_rtol=fc.canary_rtol,
                   server_stats=fc.server_stats)

    # ---- transport set-up ------------------------------------------------------------------------
    def _open_grpc(self, ca: str, cert: str, key: str, server_name: str) -> None:
        try:
            import grpc
        except ImportError as exc:
            raise ConfigError("fog backend 'oip' with protocol 'grpc' needs grpcio: pip install 'edged[oip]' "
                              "(or set fog.protocol = \"rest\" for small tensors)") from exc
        self._grpc = grpc
        options: List[Tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self.max_msg_bytes),
            ("grpc.max_send_message_length", self.max_msg_bytes),
            # a node that comes back is found within ~1 s, not after gRPC's default backoff of up to 2 min
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.enable_retries", 0),  # a failed offload falls back locally; a blind retry would only be late
        ]
        self._creds: Any = None
        if self.target.tls:
            self._creds = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(ca, "tls_ca_file") if ca else None,
                private_key=_read_pem(key, "tls_key_file") if key else None,
                certificate_chain=_read_pem(cert, "tls_cert_file") if cert else None)
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
        self._options = options
        self._channel, self._calls = self._new_channel()

    def _new_channel(self) -> Tuple[Any, Dict[str, Any]]:
        grpc = self._grpc
        if self._creds is not None:
            channel = grpc.secure_channel(self.target.address, self._creds, options=self._options)
        else:
            channel = grpc.insecure_channel(self.target.address, options=self._options)
        calls = {method: channel.unary_unary(SERVICE + method)
                 for method in ("ModelInfer", "ServerReady", "ModelReady", "ModelMetadata", "ModelStatistics")}
        return channel, calls

    def _rebuild_channel(self) -> None:
        """A new connection after repeated timeouts. Every request of an edge shares one HTTP/2 connection: on a
        link that stalled, requests already given up on still sit in its send buffers, and each new one waits
        behind them (head-of-line blocking), so timeouts keep coming after the link has recovered. A new
        connection drops that backlog (the ZeroMQ back end rebuilds its socket for the same reason); what was in
        flight on the old one fails FogUnavailable and runs locally."""
        with self._lock:
            if self._closed:
                return
            old = self._channel
            self._channel, self._calls = self._new_channel()
            self.counts["rebuilds"] += 1
        log.info("fog %s: %d timeouts in a row, new connection", self.node, self.rebuild_after_timeouts)
        # closed on another thread: this may run inside one of the old channel's own callbacks
        threading.Thread(target=old.close, name="fog-oip-close", daemon=True).start()

    # ---- models and identity ---------------------------------------------------------------------
    def _model(self, name: str, model_hash: Optional[str]) -> _Model:
        with self._lock:
            m = self._models.get(name)
            if m is None or (model_hash and m.model_hash != model_hash and m.entry is None):
                m = self._new_model(name, model_hash or "", None)
                self._models[name] = m
            return m

    def _new_model(self, name: str, model_hash: str, entry: Any) -> _Model:
        remote_name, remote_version = name, ""
        if model_hash and self.identity == "version":
            remote_version = version_for(model_hash)
        elif model_hash and self.identity == "name":
            remote_name = name_for(name, model_hash)
        m = _Model(name=name, model_hash=model_hash, remote_name=remote_name, remote_version=remote_version,
                   entry=entry)
        if entry is not None:
            self._bind_tensors(m, entry)
        return m

    def _bind_tensors(self, m: _Model, entry: Any) -> None:
        """Names and layouts on the wire: the manifest's, or (``tensors = "artifact"``) the ONNX file's."""
        m.first_output = entry.outputs[0].name
        art = entry.artifacts.get("onnx") if self.tensors == "artifact" else None
        if self.tensors == "artifact" and art is None:
            raise ConfigError(f"fog.tensors = 'artifact': model {entry.name!r} has no ONNX artifact for the "
                              "server to run; serve it with edged's runtime (tensors = 'manifest')")
        from edged.models import layout_permutation

        for i in entry.inputs:
            m.batched[i.name] = bool(i.batched)
            if art is None:
                m.input_names[i.name] = i.name
                m.input_perms[i.name] = None
                continue
            m.input_names[i.name] = art.names.get(i.name, i.name)
            file_layout = art.layouts.get(i.name) or (art.layout if i.name == entry.input.name else i.layout)
            m.input_perms[i.name] = (layout_permutation(i.layout, file_layout)
                                     if i.layout and file_layout and i.layout != file_layout else None)
        for o in entry.outputs:
            wire_name = art.names.get(o.name, o.name) if art is not None else o.name
            m.output_names[wire_name] = o.name

    def attach_models(self, models: Mapping[str, Any], verify: bool = True,
                      timeout_s: float = 2.0) -> Dict[str, str]:
        """Tell the back end which models this edge runs (``name -> LoadedModel``) and check each one's identity
        on this node now (the canary). Returns ``name -> status`` (``verified``, ``refused: why`` or
        ``unchecked: why`` when the node could not be reached; :meth:`ping` retries those).

        Until a model is verified, its submits are refused (the dispatcher runs it locally and offloads it
        again once a ping reports its hash), so a node that serves something else never answers for it."""
        for name, lm in models.items():
            entry = getattr(lm, "entry", None)
            if entry is None:
                continue
            m = self._new_model(name, entry.model_hash, entry)
            m.runner = lm
            if self.canary > 0:
                m.canary_rows = [(row, lm.run(row)) for row in self._canary_feeds(m)]
            if self.canary <= 0:
                m.status = "verified"
                m.reason = "no canary configured"
            with self._lock:
                self._models[name] = m
        out: Dict[str, str] = {}
        for name in models:
            att = self._models.get(name)
            if att is None or att.runner is None:
                continue
            if verify and self.canary > 0:
                self._check_identity(att, timeout_s)
            out[name] = att.status + (f": {att.reason}" if att.status != "verified" and att.reason else "")
        return out

    def model_status(self) -> Dict[str, Dict[str, Any]]:
        """Per model: ``status``, ``reason``, remote name and version (for STATUS= lines and stats.json)."""
        with self._lock:
            return {n: {"status": m.status, "reason": m.reason, "remote_name": m.remote_name,
                        "remote_version": m.remote_version, "t_f_stats_us": m.stats_t_f_us}
                    for n, m in self._models.items()}

    def _check_identity(self, m: _Model, timeout_s: float) -> None:
        """ModelReady, then the canary; sets ``m.status``. The node unreachable leaves it ``unchecked``."""
        m.checked_at = time.monotonic()
        m.recheck = False
        try:
            if self.target.protocol == "grpc":
                ready = self._model_ready(m, timeout_s)
                if not ready:
                    self._refuse(m, f"node {self.node} has no ready model {m.remote_name!r}"
                                    f"{' version ' + repr(m.remote_version) if m.remote_version else ''}")
                    return
            why = self._run_canary(m, timeout_s)
        except FogRefused as exc:
            self._refuse(m, str(exc))
            return
        except (FogUnavailable, FogTimeout, TimeoutError) as exc:
            m.status = "unchecked" if m.status != "verified" else m.status
            m.reason = f"identity not checked yet: {exc}"
            if m.status != "verified":
                log.info("fog %s: model %s %s", self.node, m.name, m.reason)
            return
        except FogError as exc:
            why = f"canary failed: {exc}"
        if why:
            self._refuse(m, why)
            return
        if m.status != "verified":
            log.info("fog %s: model %s verified (%d canary inputs equal the local outputs)", self.node, m.name,
                     self.canary)
        m.status = "verified"
        m.reason = ""
        self.counts["canary_ok"] += 1

    def _refuse(self, m: _Model, why: str) -> None:
        if m.status != "refused" or m.reason != why:
            log.error("fog %s is not used for model %s: %s", self.node, m.name, why)
        m.status = "refused"
        m.reason = why
        self.counts["canary_failed"] += 1

    def _canary_feeds(self, m: _Model) -> List[Dict[str, np.ndarray]]:
        entry = m.entry
        rows: List[Dict[str, np.ndarray]] = []
        try:
            feeds, _ = entry.load_validation_feeds()
            n = min(self.canary, min(len(v) for k, v in feeds.items() if entry.get_input(k).batched))
            for r in range(n):
                rows.append({k: (v[r] if entry.get_input(k).batched else v) for k, v in feeds.items()})
        except Exception as exc:  # noqa: BLE001 - no validation set: seeded synthetic inputs instead
            log.debug("model %s: canary from synthetic inputs (%s)", m.name, exc)
            for r in range(self.canary):
                feeds = entry.make_feeds(seed=r)
                rows.append({k: (v[0] if entry.get_input(k).batched else v) for k, v in feeds.items()})
        for row in rows:  # state travels with the input (the fog keeps none)
            for i in entry.state_inputs:
                row.setdefault(i.name, i.initial_value(1)[0] if i.batched else i.initial_value(1))
        return rows

    def _run_canary(self, m: _Model, timeout_s: float) -> str:
        """"" when every canary input's remote outputs equal the local ones; otherwise why not."""
        for k, (row, local) in enumerate(m.canary_rows):
            fut = self._submit_model(m, dict(row), timeout_s, canary=True)
            reply = fut.result(timeout=timeout_s + 1.0)
            remote = reply.outputs
            for name, want in local.items():
                if name not in remote:
                    return f"canary input {k}: the node's reply has no output {name!r} (it has " \
                           f"{', '.join(remote) or 'none'}): not the model this edge runs"
                got = np.asarray(remote[name])
                if got.shape != want.shape:
                    return (f"canary input {k}: output {name!r} has shape {list(got.shape)}, the local model's "
                            f"{list(want.shape)}: not the model this edge runs")
                if not np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=self.canary_rtol,
                                   atol=self.canary_atol):
                    delta = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
                    return (f"canary input {k}: output {name!r} differs from the local model's by up to {delta:.3g} "
                            f"(atol {self.canary_atol:g}, rtol {self.canary_rtol:g}): not the model this edge runs")
        return ""

    # ---- submit ----------------------------------------------------------------------------------
    def submit(self, model: str, array: Any, model_hash: Optional[str],
               timeout_s: float, cut: Optional[Tuple[str, str]] = None) -> Future[FogReply]:
        if cut is not None:  # an engine runs whole models; a partitioned input's tail runs on edged fog only
            fut0: Future[FogReply] = Future()
            fut0.set_running_or_notify_cancel()
            self._fail(fut0, FogError(f"node {self.node} is an OIP server: it runs whole models, not the tail "
                                      f"of cut {cut[0]!r} (partitioned offloads need an edged fog node)"))
            return fut0
        m = self._model(model, model_hash)
        if m.entry is not None and m.status != "verified":
            fut: Future[FogReply] = Future()
            fut.set_running_or_notify_cancel()
            why = m.reason or "identity not checked yet"
            self.counts["refused"] += 1
            fut.set_exception(FogRefused(f"node {self.node}, model {model}: {why}"))
            return fut
        return self._submit_model(m, array, timeout_s)

    def _wire_inputs(self, m: _Model, array: Any) -> Tuple[Dict[str, np.ndarray], bool]:
        """(wire name -> array with the batch axis, whether the request is v2), from a bare array (v1: the
        primary input, one sample) or every input by name (v2)."""
        v2 = isinstance(array, Mapping)
        feeds: Mapping[str, Any] = array if v2 else {(m.entry.input.name if m.entry is not None else "input"): array}
        if not v2 and m.entry is None:
            return {"input": np.asarray(array)[np.newaxis]}, False
        out: Dict[str, np.ndarray] = {}
        for name, a in feeds.items():
            x = np.asarray(a)
            batched = m.batched.get(name, True)
            if batched and m.entry is not None:
                sample_ndim = len(m.entry.get_input(name).sample_shape)
                if x.ndim == sample_ndim:
                    x = x[np.newaxis]
            elif batched:
                x = x[np.newaxis]
            perm = m.input_perms.get(name)
            if perm is not None:
                x = np.ascontiguousarray(x.transpose(perm))
            out[m.input_names.get(name, name)] = x
        return out, v2

    def _submit_model(self, m: _Model, array: Any, timeout_s: float, canary: bool = False) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_running_or_notify_cancel()
        if self._closed:
            self._fail(fut, FogUnavailable(f"OIP fog client for {self.node} is closed"))
            return fut
        try:
            t = float(timeout_s)
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"timeout_s must be a finite number of seconds >= 0, not {timeout_s!r}")
            feeds, v2 = self._wire_inputs(m, array)
            rid = next(self._ids)
            if self.target.protocol == "grpc":
                body = wire.encode_infer_request(m.remote_name, feeds, version=m.remote_version, request_id=str(rid))
            else:
                body = wire.encode_rest_request(feeds, request_id=str(rid))
        except Exception as exc:  # noqa: BLE001 - this request fails alone, as a future
            self._fail(fut, FogError(f"request for {m.name} could not be encoded: {type(exc).__name__}: {exc}"))
            return fut
        self.counts["sent"] += 1
        meta = {"m": m, "v2": v2 or canary, "t0": time.perf_counter(), "bytes_out": len(body), "timeout": t}
        if self.target.protocol == "grpc":
            try:
                call = self._calls["ModelInfer"].future(body, timeout=t)
            except Exception as exc:  # noqa: BLE001 - a closed channel and the like
                self._fail(fut, FogUnavailable(f"cannot send to {self.node}: {exc}"))
                return fut
            with self._lock:
                self._pending[rid] = (fut, call)
            call.add_done_callback(lambda c: self._on_grpc_done(rid, fut, c, meta))
        else:
            assert self._pool is not None
            with self._lock:
                self._pending[rid] = (fut, None)
            deadline = time.monotonic() + t
            self._reaper.add(deadline, fut, FogTimeout(f"no reply from {self.node} within {t:.3f}s"))
            try:
                self._pool.submit(self._rest_infer, rid, fut, body, meta, deadline)
            except RuntimeError:  # the pool is shut down: closed
                self._fail(fut, FogUnavailable(f"OIP fog client for {self.node} is closed"))
        return fut

    # ---- replies ---------------------------------------------------------------------------------
    def _fail(self, fut: Future[Any], exc: FogFailure) -> None:
        if self._settle.fail(fut, exc):
            key = {FogTimeout: "timeout", FogRefused: "refused", FogUnavailable: "unavailable"}.get(type(exc), "error")
            self.counts[key] += 1
            if isinstance(exc, FogUnavailable):
                self._was_down = True
            if isinstance(exc, FogTimeout) and self._channel is not None:
                with self._lock:
                    self._timeouts_in_row += 1
                    rebuild = self._timeouts_in_row >= self.rebuild_after_timeouts > 0
                    if rebuild:
                        self._timeouts_in_row = 0
                if rebuild:
                    self._rebuild_channel()

    def _grpc_failure(self, m: _Model, exc: Any, timeout_s: float) -> FogFailure:
        grpc = self._grpc
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
        what = f"model {m.remote_name!r}" + (f" version {m.remote_version!r}" if m.remote_version else "")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return FogTimeout(f"no reply from {self.node} within {timeout_s:.3f}s")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return FogUnavailable(f"{self.node}: {code.name}: {details}"[:300])
        if code == grpc.StatusCode.NOT_FOUND or (code == grpc.StatusCode.INVALID_ARGUMENT
                                                 and "not found" in details.lower()):
            return FogRefused(f"node {self.node} does not serve {what} ({code.name}: {details})"[:400])
        return FogError(f"{self.node} answered {code.name if code else 'an error'} for {what}: {details}"[:400])

    def _on_grpc_done(self, rid: int, fut: Future[Any], call: Any, meta: Dict[str, Any]) -> None:
        t_recv = time.perf_counter()
        with self._lock:
            self._pending.pop(rid, None)
        m: _Model = meta["m"]
        try:
            if call.cancelled():
                why = "is closed" if self._closed else "replaced its connection (timeouts in a row)"
                self._fail(fut, FogUnavailable(f"OIP fog client for {self.node} {why}"))
                return
            exc = call.exception()
            if exc is not None:
                self._fail(fut, self._grpc_failure(m, exc, meta["timeout"]))
                return
            body = call.result()
            self._finish(fut, m, wire.decode_infer_response(body), meta, t_recv, len(body))
        except Exception as exc:  # noqa: BLE001 - a reply that breaks the decoder fails its request alone
            self._fail(fut, FogError(f"malformed reply from {self.node}: {type(exc).__name__}: {exc}"[:400]))

    def _finish(self, fut: Future[Any], m: _Model, resp: wire.InferResponse, meta: Dict[str, Any],
                t_recv: float, bytes_in: int) -> None:
        """Check identity, map names back, work out T_F; resolve the future."""
        if m.remote_version and resp.version and resp.version != m.remote_version:
            why = (f"node {self.node} answered model {m.name} with version {resp.version!r}, this edge runs "
                   f"{m.remote_version!r}")
            m.status, m.reason = ("refused", why) if m.entry is not None else (m.status, m.reason)
            self._fail(fut, FogRefused(why))
            return
        served_hash = resp.parameters.get(PARAM_MODEL_HASH)
        if isinstance(served_hash, str) and m.model_hash and served_hash != m.model_hash:
            why = (f"node {self.node} serves model {m.name} with hash {served_hash[:16]}, this edge runs "
                   f"{m.model_hash[:16]}")
            m.status, m.reason = ("refused", why) if m.entry is not None else (m.status, m.reason)
            self._fail(fut, FogRefused(why))
            return
        outputs = {m.output_names.get(k, k): v for k, v in resp.outputs.items()}
        if not outputs:
            self._fail(fut, FogError(f"{self.node} answered model {m.name} with no outputs"))
            return
        rtt_us = (t_recv - meta["t0"]) * 1e6
        bytes_out = meta["bytes_out"] + GRPC_OVERHEAD_BYTES
        bytes_in = bytes_in + GRPC_OVERHEAD_BYTES
        t_f_ns = resp.parameters.get(PARAM_T_F_NS)
        if isinstance(t_f_ns, (int, float)) and not isinstance(t_f_ns, bool) and t_f_ns >= 0:
            t_f_us, source = min(float(t_f_ns) / 1000.0, rtt_us), "server"
        elif m.stats_t_f_us is not None:
            t_f_us, source = min(m.stats_t_f_us, rtt_us), "server_stats"
        else:
            t_f_us, source = self.derive_t_f_us(rtt_us, bytes_out + bytes_in), "derived"
        with self._lock:
            m.recent_t_f.append(t_f_us)
            del m.recent_t_f[:-16]
        if meta["v2"]:
            result: Any = outputs
        else:
            first = m.first_output if m.first_output in outputs else next(iter(outputs))
            out = outputs[first]
            result = out[0] if out.ndim and out.shape[0] == 1 else out
        reply = OipReply(outputs=result, t_f_us=min(round(t_f_us, 1), rtt_us), queue_us=0.0, rtt_us=rtt_us,
                         bytes_out=bytes_out, bytes_in=bytes_in, t_f_source=source, model_version=resp.version,
                         node=self.node)
        if self._settle.result(fut, reply):
            self.counts["ok"] += 1
            self._timeouts_in_row = 0

    def derive_t_f_us(self, rtt_us: float, total_bytes: int) -> float:
        """T_F (µs) when the server reports none: the round trip minus the link time learned from probes
        (the median unpadded ServerReady round trip, plus the per-byte cost from padded ones). Never < 0."""
        with self._lock:
            base = float(np.median(self._base_rtts)) if self._base_rtts else 0.0
            per_byte = self._us_per_byte
        return max(0.0, rtt_us - base - per_byte * max(0, total_bytes - 2 * GRPC_OVERHEAD_BYTES))

    # ---- REST ------------------------------------------------------------------------------------
    def _rest_conn(self, timeout_s: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.target.tls:
                conn = http.client.HTTPSConnection(self.target.host, self.target.port, timeout=timeout_s,
                                                   context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self.target.host, self.target.port, timeout=timeout_s)
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        return conn

    def _rest_drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _rest_request(self, method: str, path: str, body: Optional[bytes], timeout_s: float) -> Tuple[int, bytes]:
        """One HTTP exchange on this thread's keep-alive connection (reconnects once if the server closed it)."""
        for attempt in (0, 1):
            conn = self._rest_conn(timeout_s)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                conn.request(method, self.target.prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self._rest_drop()
                return resp.status, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._rest_drop()
                if attempt:
                    raise
            except BaseException:
                self._rest_drop()
                raise
        raise AssertionError("unreachable")

    def _rest_path(self, m: _Model, suffix: str) -> str:
        from urllib.parse import quote

        path = f"/v2/models/{quote(m.remote_name, safe='')}"
        if m.remote_version:
            path += f"/versions/{quote(m.remote_version, safe='')}"
        return path + suffix

    def _rest_infer(self, rid: int, fut: Future[Any], body: bytes, meta: Dict[str, Any], deadline: float) -> None:
        m: _Model = meta["m"]
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or fut.done():
                return  # the reaper has answered FogTimeout
            meta["t0"] = time.perf_counter()
            try:
                status, data = self._rest_request("POST", self._rest_path(m, "/infer"), body, remaining)
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                if isinstance(exc, TimeoutError) or "timed out" in str(exc):
                    self._fail(fut, FogTimeout(f"no reply from {self.node} within {meta['timeout']:.3f}s"))
                else:
                    self._fail(fut, FogUnavailable(f"{self.node}: {type(exc).__name__}: {exc}"[:300]))
                return
            t_recv = time.perf_counter()
            if status == 404:
                self._fail(fut, FogRefused(f"node {self.node} does not serve model {m.remote_name!r}"
                                           f"{' version ' + repr(m.remote_version) if m.remote_version else ''} "
                                           f"(HTTP 404: {data[:200].decode('utf-8', 'replace')})"))
                return
            if status in (502, 503, 504):
                self._fail(fut, FogUnavailable(f"{self.node}: HTTP {status}"))
                return
            if status != 200:
                self._fail(fut, FogError(f"{self.node} answered HTTP {status} for model {m.remote_name!r}: "
                                         f"{data[:300].decode('utf-8', 'replace')}"))
                return
            self._finish(fut, m, wire.decode_rest_response(data), meta, t_recv, len(data))
        except Exception as exc:  # noqa: BLE001 - one request fails alone
            self._fail(fut, FogError(f"malformed reply from {self.node}: {type(exc).__name__}: {exc}"[:400]))
        finally:
            with self._lock:
                self._pending.pop(rid, None)

    # ---- probes ----------------------------------------------------------------------------------
    def _model_ready(self, m: _Model, timeout_s: float) -> bool:
        body = wire.encode_model_ready_request(m.remote_name, m.remote_version)
        try:
            return wire.decode_ready_response(self._calls["ModelReady"](body, timeout=timeout_s))
        except Exception as exc:  # noqa: BLE001 - classified below
            if self._grpc is not None and isinstance(exc, self._grpc.RpcError):
                failure = self._grpc_failure(m, exc, timeout_s)
                if isinstance(failure, (FogRefused, FogError)):
                    return False  # NOT_FOUND, INVALID_ARGUMENT...: no such model/version here
                raise failure from None
            raise FogError(f"ModelReady: {type(exc).__name__}: {exc}") from None

    def _server_ready(self, timeout_s: float, pad_bytes: int) -> Tuple[float, int, int]:
        """(rtt µs, bytes out, bytes in) of one ServerReady round trip; raises a FogFailure."""
        if self.target.protocol == "grpc":
            body = wire.encode_server_ready_request(padding=2 * pad_bytes)
            t0 = time.perf_counter()
            try:
                resp = self._calls["ServerReady"](body, timeout=timeout_s)
            except self._grpc.RpcError as exc:
                code = exc.code()
                if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise FogTimeout(f"probe: no reply from {self.node} within {timeout_s:.3f}s") from None
                raise FogUnavailable(f"probe: {self.node}: {code.name}: {exc.details()}"[:300]) from None
            rtt = (time.perf_counter() - t0) * 1e6
            if not wire.decode_ready_response(resp):
                raise FogUnavailable(f"probe: {self.node} is not ready")
            return rtt, len(body) + GRPC_OVERHEAD_BYTES, len(resp) + GRPC_OVERHEAD_BYTES
        t0 = time.perf_counter()
        try:
            status, data = self._rest_request("GET", "/v2/health/ready", None, timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, TimeoutError):
                raise FogTimeout(f"probe: no reply from {self.node} within {timeout_s:.3f}s") from None
            raise FogUnavailable(f"probe: {self.node}: {type(exc).__name__}: {exc}"[:300]) from None
        finally:
            self._rest_drop()  # a probe's connection is its own: the next probe finds out afresh
        if status != 200:
            raise FogUnavailable(f"probe: {self.node} answered HTTP {status} to /v2/health/ready")
        return (time.perf_counter() - t0) * 1e6, 120, 120 + len(data)

    def ping(self, timeout_s: float = 1.0, pad_bytes: int = 0) -> PingReply:
        """ServerReady (padded with ``2 * pad_bytes`` for a bandwidth probe over gRPC); unpadded, also
        ModelReady + the canary of every model not verified yet (or due for a re-check) and Triton's
        statistics. ``models`` reports each verified model's hash (what the dispatcher waits for to offload a
        refused model again) and a server-side T_F where the statistics extension gives one."""
        if self._closed:
            raise FogUnavailable(f"OIP fog client for {self.node} is closed")
        pad = pad_bytes if self.target.protocol == "grpc" else 0
        rtt, out_b, in_b = self._server_ready(timeout_s, pad)
        with self._lock:
            if pad == 0:
                self._base_rtts.append(rtt)
                del self._base_rtts[:-16]
            elif self._base_rtts:
                base = float(np.median(self._base_rtts))
                self._us_per_byte = max(0.0, (rtt - base) / max(1, 2 * pad))
        models: Dict[str, Dict[str, Any]] = {}
        if pad == 0:
            was_down, self._was_down = self._was_down, False
            now = time.monotonic()
            for m in list(self._models.values()):
                if m.entry is None or m.runner is None:
                    continue
                if was_down and m.status == "verified":
                    m.recheck = True  # the node came back: it may be another process, another model
                due = (m.status == "unchecked" or m.recheck
                       or (m.status == "refused" and now - m.checked_at >= self.recheck_s))
                if due and self.canary > 0:
                    self._check_identity(m, timeout_s)
            if self.server_stats and self.target.protocol == "grpc":
                self._refresh_stats(timeout_s)
            for name, m in list(self._models.items()):
                info: Dict[str, Any] = {"status": m.status}
                if m.status == "verified" or (m.entry is None and m.model_hash):
                    info["model_hash"] = m.model_hash
                if m.stats_t_f_us is not None:
                    info["t_f_us"] = m.stats_t_f_us
                elif m.recent_t_f:  # the canary's and recent replies': T_F is known before the first offload
                    info["t_f_us"] = float(np.median(m.recent_t_f))
                models[name] = info
        return PingReply(rtt_us=rtt, bytes_out=out_b, bytes_in=in_b, models=models)

    def _refresh_stats(self, timeout_s: float) -> None:
        """Triton's statistics extension: mean compute_infer per model since the previous refresh."""
        for m in list(self._models.values()):
            body = wire.encode_model_ready_request(m.remote_name, m.remote_version)
            try:
                resp = self._calls["ModelStatistics"](body, timeout=timeout_s)
            except self._grpc.RpcError as exc:
                if exc.code() == self._grpc.StatusCode.UNIMPLEMENTED:
                    self.server_stats = False  # MLServer, KServe: no statistics extension; T_F is derived
                    log.info("fog %s has no statistics extension: T_F comes from round trips", self.node)
                    return
                continue
            stats = wire.decode_compute_infer_stats(resp, m.remote_name)
            if stats is None:
                continue
            if m.stats is not None and stats[0] > m.stats[0]:
                m.stats_t_f_us = (stats[1] - m.stats[1]) / (stats[0] - m.stats[0]) / 1000.0
            m.stats = stats

    # ---- close -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Fail every pending request with :class:`FogUnavailable` and close the channel/connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending, self._pending = dict(self._pending), {}
        for fut, call in pending.values():
            if call is not None:
                call.cancel()
            self._fail(fut, FogUnavailable(f"OIP fog client for {self.node} is closed"))
        with self._lock:
            channel = self._channel
        if channel is not None:
            channel.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._reaper.stop()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:  # a pool thread blocked reading a silent node wakes up now, not at its socket timeout
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._rest_drop()


def make_oip_backend(fc: Any) -> OipFogBackend:
    """The daemon's door: an :class:`OipFogBackend` from a ``FogConfig`` (errors name the config keys)."""
    try:
        return OipFogBackend.from_config(fc)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a start-up error, not a traceback
        raise EdgedError(f"OIP fog client for {fc.url!r} cannot start: {type(exc).__name__}: {exc}") from exc


__all__: List[str] = ["OipFogBackend", "OipReply", "version_for", "name_for", "make_oip_backend",
                      "PARAM_T_F_NS", "PARAM_MODEL_HASH"]
