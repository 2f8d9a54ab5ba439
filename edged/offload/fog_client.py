"""Edge side of the fog link: pluggable fog back ends and a circuit breaker.

:class:`FogBackend` is what the dispatcher talks to: ``submit`` returns a
:class:`concurrent.futures.Future` that resolves to a :class:`FogReply` or fails
with a typed :class:`FogFailure` (timeout, refusal, unavailable, remote error).
Every future resolves: on its deadline at the latest, or when the backend closes.

:class:`ZmqFogBackend` speaks the native protocol (:mod:`edged.offload.protocol`)
over one DEALER socket owned by one I/O thread; callers enqueue requests through a
thread-safe queue and wake the thread through a pipe, so any thread may submit.
Requests are pipelined and matched to replies by id; a reply for a request that
already timed out is dropped. ``ZMQ_IMMEDIATE`` makes a send fail at once while no
fog connection is up (dead node, outage, rejected CURVE key), so the edge falls back
immediately instead of waiting for the timeout; a lost connection fails every
request in flight on it.

The I/O thread never dies of one request: an endpoint that cannot work (bad syntax, a
host name that does not exist, one libzmq refuses) is an error from the constructor, at
start-up; an exception while sending one request or reading one reply fails that request
alone (:class:`FogError`, so the dispatcher runs it locally: still one record) and an
unexpected error in the loop itself is logged, counted (``io_errors``) and, if it repeats,
answered by rebuilding the socket.
"""

from __future__ import annotations

import abc
import errno
import itertools
import logging
import math
import os
import queue
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import zmq

from edged.endpoints import parse_zmq_endpoint
from edged.errors import ConfigError, EdgedError
from edged.offload.protocol import (
    MAX_TENSORS,
    PROTOCOL_VERSION,
    ProtocolError,
    array_from_payload,
    array_to_frames,
    decode_header,
    encode_header,
    frames_size,
    tensors_from_frames,
    tensors_to_frames,
)

log = logging.getLogger("edged.fog_client")


# ---- results and failures ------------------------------------------------------------------------
@dataclass(frozen=True)
class FogReply:
    """A successful offload: the model output and the timings (µs) and sizes (bytes) of the round trip.

    ``outputs`` is the first output (no batch axis) for a v1 request (one array in), or every output by name
    (batch axis as the fog's model returned it) for a v2 request (named tensors in)."""

    outputs: Any
    t_f_us: float
    queue_us: float
    rtt_us: float
    bytes_out: int
    bytes_in: int


@dataclass(frozen=True)
class PingReply:
    """A health/probe round trip. ``models`` maps name → ``{"model_hash", "t_f_us"}`` as the fog reports."""

    rtt_us: float
    bytes_out: int
    bytes_in: int
    models: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    queue_est_us: float = 0.0
    workers: int = 0


class FogFailure(Exception):
    """Base class: the fog did not produce a result for this request."""


class FogTimeout(FogFailure):
    """No reply before the request's deadline."""


class FogRefused(FogFailure):
    """The fog refused the request (model hash mismatch); the message names both hashes."""


class FogUnavailable(FogFailure):
    """No connection to the fog node (not connected, connection lost, backend closed)."""


class FogError(FogFailure):
    """The fog answered with an error (queue full, bad input, model failure)."""


# ---- back-end interface --------------------------------------------------------------------------
class FogBackend(abc.ABC):
    """A way to run one input on a remote node."""

    name: str = "fog"

    @abc.abstractmethod
    def submit(self, model: str, array: Any, model_hash: Optional[str],
               timeout_s: float, cut: Optional[Tuple[str, str]] = None) -> Future[FogReply]:
        """Send one input for ``model``: an array (no batch dim; v1), or every input by name (a mapping of
        arrays, state included; v2). The future resolves within ``timeout_s`` (s).

        With ``cut = (cut name, tail hash)`` (:class:`edged.partition.graph.Cut` ``.name``/``.tail_hash``),
        ``array`` is the intermediate tensor of one sample at that cut (the head's output, batch axis
        optional) and the fog runs the tail: the reply is its first output without the batch axis, as in v1.
        A fog whose tail hash differs refuses it (:class:`FogRefused`)."""

    @abc.abstractmethod
    def ping(self, timeout_s: float = 1.0, pad_bytes: int = 0) -> PingReply:
        """Blocking health probe; ``pad_bytes`` of padding each way lets the link bandwidth be measured.

        Raises a :class:`FogFailure` subclass on failure.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Fail every pending request with :class:`FogUnavailable` and release resources."""


class OipFogBackend(FogBackend):
    """Open Inference Protocol (KServe v2: Triton, KServe, MLServer) back end — not implemented yet.

    Mapping when it is: ``submit`` → ``POST {base}/v2/models/{model}/infer`` with
    ``{"id", "inputs": [{"name", "shape": [1, ...], "datatype": "FP32", "data": [...]}]}``
    (or the binary-tensor extension); the reply's ``outputs[0]`` is the result; T_F comes
    from the server's ``/v2/models/{model}/stats`` (``inference_stats.compute_infer``) or a
    response parameter; ``model_hash`` maps to the model ``version``; ``ping`` →
    ``GET {base}/v2/health/ready`` (padded probes as a dummy infer); refusals are HTTP 4xx.
    """

    name = "oip"

    def __init__(self, base_url: str) -> None:
        raise NotImplementedError("the Open Inference Protocol (KServe v2) fog back end is not implemented yet; "
                                  "use the ZeroMQ back end (edged fog)")

    def submit(self, model: str, array: Any, model_hash: Optional[str],
               timeout_s: float, cut: Optional[Tuple[str, str]] = None) -> Future[FogReply]:
        raise NotImplementedError

    def ping(self, timeout_s: float = 1.0, pad_bytes: int = 0) -> PingReply:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---- ZeroMQ back end -----------------------------------------------------------------------------
@dataclass
class _Request:
    rid: str
    frames: List[bytes]
    future: Future[Any]
    timeout_s: float
    kind: str
    deadline: float = 0.0
    t_sent: float = 0.0
    bytes_out: int = 0


def _read_key(value: Union[str, bytes, None], want_secret: bool) -> Optional[bytes]:
    """A z85 key given directly (40 chars) or as a certificate file from ``edged keys``."""
    if value is None:
        return None
    if isinstance(value, bytes) and len(value) == 40:
        return value
    if isinstance(value, str) and len(value) == 40 and not os.path.exists(value):
        return value.encode("ascii")  # a z85 key written inline (e.g. in a config file)
    from zmq.auth import load_certificate

    public, secret = load_certificate(os.fsdecode(value))
    key = secret if want_secret else public
    if key is None:
        raise ValueError(f"{value!r} holds no {'secret' if want_secret else 'public'} key")
    return key


def check_fog_endpoint(endpoint: str, resolve_timeout_s: float = 2.0) -> None:
    """Refuse a fog endpoint that cannot work, before any socket exists.

    Raises :class:`~edged.errors.ConfigError` unless ``endpoint`` is ``tcp://HOST:PORT``,
    ``ipc://PATH`` or ``inproc://NAME``. A host name that does not resolve now is logged as an
    error but does not stop the edge: at boot a ``fog.local`` (mDNS) or a DNS name often resolves
    only once the network is up, libzmq resolves again on every reconnect, and inputs run locally
    meanwhile. Refusing to start would lose every sensor input until then (and systemd's start
    limit would give up after a few tries). ``resolve_timeout_s`` = 0 skips the lookup."""
    ep, why = parse_zmq_endpoint(endpoint, bind=False)
    if ep is None:
        raise ConfigError(f"fog endpoint {endpoint!r}: expected {why}")
    if ep.transport != "tcp" or resolve_timeout_s <= 0:
        return
    host = ep.host.strip("[]").split("%", 1)[0]
    try:
        import ipaddress

        ipaddress.ip_address(host)
        return  # an address literal: nothing to resolve
    except ValueError:
        pass
    outcome: Dict[str, Any] = {}

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, int(ep.port), type=socket.SOCK_STREAM)
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["exc"] = exc

    t = threading.Thread(target=lookup, name="fog-resolve", daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(resolve_timeout_s)
    exc = outcome.get("exc")
    gone = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
    if isinstance(exc, socket.gaierror) and exc.errno in gone:
        log.error("fog endpoint %s: host %r does not resolve (%s); check fog.endpoint. Offloading starts "
                  "when it resolves; inputs run locally meanwhile", endpoint, host, exc.strerror)
    elif not outcome.get("ok"):
        log.warning("fog endpoint %s: cannot resolve %r now (%s); offloading starts when it resolves, "
                    "inputs run locally meanwhile", endpoint, host, exc or f"no answer within {resolve_timeout_s:g}s")


class ZmqFogBackend(FogBackend):
    """Native ZeroMQ fog back end (DEALER to the fog's ROUTER).

    Args:
        endpoint: fog endpoint, e.g. ``tcp://fog.local:5556``.
        curve_server_key: the fog's public key (z85 bytes or its ``.key`` certificate file); enables CURVE.
        curve_client_key: this edge's secret certificate file (``.key_secret``) or ``(public, secret)`` z85 pair.
        max_msg_bytes: ``ZMQ_MAXMSGSIZE`` for replies (bytes).
        rebuild_after_timeouts: consecutive timeouts after which the socket is rebuilt (drops stale queued sends).
        context: ZeroMQ context to use (default: a private one).
        resolve_timeout_s: how long the constructor waits for the fog's host name to resolve (0 = no lookup).

    Raises:
        ConfigError: ``endpoint`` is not a ZeroMQ endpoint a DEALER can connect to, or libzmq refuses it.
    """

    name = "zmq"
    #: consecutive failed I/O loop iterations after which the socket is rebuilt
    REBUILD_AFTER_IO_ERRORS = 3

    def __init__(self, endpoint: str, curve_server_key: Union[str, bytes, None] = None,
                 curve_client_key: Union[str, tuple, None] = None, max_msg_bytes: int = 16 * 1024 * 1024,
                 rebuild_after_timeouts: int = 3, context: Optional[zmq.Context] = None,
                 resolve_timeout_s: float = 2.0) -> None:
        check_fog_endpoint(endpoint, resolve_timeout_s)
        self.endpoint = endpoint
        self._client_keys: Optional[tuple] = None
        try:
            self._server_key = _read_key(curve_server_key, want_secret=False)
            if isinstance(curve_client_key, tuple):
                self._client_keys = curve_client_key
            elif curve_client_key is not None:
                from zmq.auth import load_certificate

                self._client_keys = load_certificate(os.fspath(curve_client_key))
                if self._client_keys[1] is None:
                    raise ValueError(f"{curve_client_key!r} holds no secret key (use the .key_secret file)")
        except (OSError, ValueError) as exc:  # a start-up error naming the file, not a traceback
            raise ConfigError(f"fog CURVE keys: {exc}; expected the certificate files 'edged keys' writes "
                              "(fog.curve_server_public_key, fog.curve_client_secret_key)") from exc
        if self._server_key is not None and self._client_keys is None:
            self._client_keys = zmq.curve_keypair()  # an anonymous key pair: enough if the fog allows any key
        self.max_msg_bytes = max_msg_bytes
        self.rebuild_after_timeouts = rebuild_after_timeouts
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._outbox: queue.Queue[_Request] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-{id(self) & 0xFFFF:x}-"
        self._pending: Dict[str, _Request] = {}
        self._deferred: List[_Request] = []
        self._stop = threading.Event()
        self._closed = False
        self.connected = False
        self.counts: Dict[str, int] = {"sent": 0, "ok": 0, "timeout": 0, "unavailable": 0, "refused": 0,
                                       "error": 0, "late": 0, "rebuilds": 0, "bad_replies": 0, "io_errors": 0}
        self._sock: Optional[zmq.Socket] = None
        self._monitor: Optional[zmq.Socket] = None
        self._started = threading.Event()
        self._startup_error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._io_loop, name="fog-client-io", daemon=True)
        self._thread.start()
        self._started.wait(10.0)
        if self._startup_error is not None or not self._started.is_set():
            failure = self._startup_error
            self._closed = True
            self._stop.set()
            self._thread.join(5.0)
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            if self._own_ctx:
                self._ctx.term()
            why = f"{type(failure).__name__}: {failure}" if failure is not None else "the I/O thread did not start"
            address_errors = {errno.EINVAL, errno.EPROTONOSUPPORT, getattr(zmq, "ENOCOMPATPROTO", -1)}
            if isinstance(failure, zmq.ZMQError) and failure.errno in address_errors:
                raise ConfigError(f"fog endpoint {endpoint!r}: libzmq refuses it ({why}); "
                                  "expected tcp://HOST:PORT or ipc://PATH")
            raise EdgedError(f"fog client for {endpoint!r} cannot start: {why}")

    # ---- caller side -----------------------------------------------------------------------------
    def submit(self, model: str, array: Any, model_hash: Optional[str],
               timeout_s: float, cut: Optional[Tuple[str, str]] = None) -> Future[FogReply]:
        rid = self._prefix + str(next(self._ids))
        header: Dict[str, Any] = {"v": PROTOCOL_VERSION, "id": rid, "kind": "infer", "model": model,
                                  "model_hash": model_hash, "sent_ts": round(time.time(), 6)}
        try:
            if cut is not None:  # an intermediate tensor: one array, the cut named and its tail hash
                if isinstance(array, Mapping):
                    raise ValueError("a cut request carries one intermediate tensor, not a mapping of inputs")
                name, tail_hash = cut
                header["cut"] = {"name": str(name), "hash": str(tail_hash)}
                frames = array_to_frames(header, array)
            elif isinstance(array, Mapping):  # v2: every input by name, one frame each
                frames = tensors_to_frames(dict(header, v=2), array)
            else:
                frames = array_to_frames(header, array)
        except Exception as exc:  # noqa: BLE001 - this request fails, as a future, like any other failure
            fut: Future[FogReply] = Future()
            fut.set_running_or_notify_cancel()
            self.counts["error"] += 1
            fut.set_exception(FogError(f"request for {model!r} cannot be encoded: {type(exc).__name__}: {exc}"))
            return fut
        return self._enqueue(_Request(rid, frames, Future(), timeout_s, "infer"))

    def ping(self, timeout_s: float = 1.0, pad_bytes: int = 0) -> PingReply:
        rid = self._prefix + str(next(self._ids))
        header = {"v": PROTOCOL_VERSION, "id": rid, "kind": "ping", "reply_pad": int(pad_bytes),
                  "sent_ts": round(time.time(), 6)}
        fut = self._enqueue(_Request(rid, [encode_header(header), b"\0" * int(pad_bytes)], Future(), timeout_s,
                                     "ping"))
        try:
            return fut.result(timeout=timeout_s + 1.0)
        except TimeoutError:  # the I/O thread resolves every future; this is a safety net
            raise FogTimeout(f"ping: no answer from {self.endpoint} within {timeout_s:.2f}s") from None

    def _enqueue(self, req: _Request) -> Future[Any]:
        req.future.set_running_or_notify_cancel()
        if self._closed:
            req.future.set_exception(FogUnavailable("fog client is closed"))
            return req.future
        self._outbox.put(req)
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # pipe full: the I/O thread is already awake
        return req.future

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(5.0)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._own_ctx:
            self._ctx.term()

    # ---- I/O thread ------------------------------------------------------------------------------
    def _make_socket(self) -> tuple[zmq.Socket, zmq.Socket]:
        """A connected DEALER and its monitor; on any failure nothing is left open (so the context can end)."""
        sock = self._ctx.socket(zmq.DEALER)
        monitor: Optional[zmq.Socket] = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDHWM, 10000)
            sock.setsockopt(zmq.RCVHWM, 10000)
            sock.setsockopt(zmq.MAXMSGSIZE, int(self.max_msg_bytes))
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            if self._server_key is not None and self._client_keys is not None:
                sock.curve_serverkey = self._server_key
                sock.curve_publickey = self._client_keys[0]
                sock.curve_secretkey = self._client_keys[1]
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                                              | zmq.EVENT_CONNECTED)
            sock.connect(self.endpoint)
        except BaseException:
            if monitor is not None:
                self._close_socket(sock, monitor)
            else:
                sock.close(0)
            raise
        return sock, monitor

    def _close_socket(self, sock: zmq.Socket, monitor: zmq.Socket) -> None:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close(0)
        sock.close(0)
        self.connected = False

    def _io_loop(self) -> None:
        try:
            self._sock, self._monitor = self._make_socket()
        except Exception as exc:  # noqa: BLE001 - handed to the constructor, which raises it
            self._startup_error = exc
            self._started.set()
            return
        self._started.set()
        consecutive_timeouts = 0
        errors_in_row = 0
        last_logged = 0.0
        try:
            while not self._stop.is_set():
                try:
                    consecutive_timeouts = self._iteration(consecutive_timeouts)
                    errors_in_row = 0
                except Exception:  # noqa: BLE001 - the loop outlives any one failure
                    errors_in_row += 1
                    self.counts["io_errors"] += 1
                    if time.monotonic() - last_logged > 5.0:
                        last_logged = time.monotonic()
                        log.exception("fog client: error in the I/O loop (%d in a row); it keeps running",
                                      errors_in_row)
                    if errors_in_row >= self.REBUILD_AFTER_IO_ERRORS:
                        self._rebuild(FogUnavailable(f"fog client socket to {self.endpoint} rebuilt after "
                                                     f"{errors_in_row} I/O errors"))
                    self._stop.wait(min(1.0, 0.01 * 2 ** min(errors_in_row, 7)))  # no hot spin on a lasting fault
        finally:
            self._closed = True
            self._fail_all(FogUnavailable("fog client is closed"))
            for req in self._deferred:
                self._resolve_exc(req, FogUnavailable("fog client is closed"))
            while True:
                try:
                    req = self._outbox.get_nowait()
                except queue.Empty:
                    break
                self._resolve_exc(req, FogUnavailable("fog client is closed"))
            self._drop_socket()

    def _iteration(self, consecutive_timeouts: int) -> int:
        """One poll/send/receive/expire round; returns the updated count of consecutive timeouts."""
        if self._sock is None or self._monitor is None:
            self._sock, self._monitor = self._make_socket()
            self.counts["rebuilds"] += 1
        sock, monitor = self._sock, self._monitor
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        now = time.monotonic()
        next_deadline = min((r.deadline for r in self._pending.values()), default=now + 0.1)
        wait_ms = 10 if self._deferred else max(0, min(100, int((next_deadline - now) * 1000) + 1))
        events = dict(poller.poll(wait_ms))
        if self._wake_r in events:
            try:
                os.read(self._wake_r, 4096)
            except (BlockingIOError, OSError):
                pass
        if monitor in events:
            self._drain_monitor(monitor)
        self._send_outbox(sock)
        if sock in events:
            consecutive_timeouts = 0 if self._drain_replies(sock) else consecutive_timeouts
        expired = self._expire()
        consecutive_timeouts += expired
        if expired and consecutive_timeouts >= self.rebuild_after_timeouts:
            log.info("fog client: %d consecutive timeouts, rebuilding the socket to %s",
                     consecutive_timeouts, self.endpoint)
            self._rebuild(FogUnavailable("socket rebuilt after repeated timeouts"))
            consecutive_timeouts = 0
        return consecutive_timeouts

    def _rebuild(self, why: FogFailure) -> None:
        """Fail what is in flight on the old socket and make a new one (if that fails too, the next
        iteration tries again; the failure is counted there)."""
        self._fail_all(why)
        self._drop_socket()
        try:
            self._sock, self._monitor = self._make_socket()
        except Exception as exc:  # noqa: BLE001 - retried by the next iteration
            log.warning("fog client: cannot rebuild the socket to %s yet: %s", self.endpoint, exc)
            return
        self.counts["rebuilds"] += 1

    def _drop_socket(self) -> None:
        sock, monitor, self._sock, self._monitor = self._sock, self._monitor, None, None
        if sock is not None and monitor is not None:
            try:
                self._close_socket(sock, monitor)
            except Exception:  # noqa: BLE001 - a socket that will not close cleanly is dropped anyway
                log.debug("fog client: closing the old socket failed", exc_info=True)
        self.connected = False

    def _drain_monitor(self, monitor: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                msg = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            event = msg.get("event")
            if event in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_CONNECTED):
                self.connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                if self.connected:
                    log.info("fog client: connection to %s lost", self.endpoint)
                self.connected = False
                self._fail_all(FogUnavailable(f"connection to fog {self.endpoint} lost"))

    def _send_outbox(self, sock: zmq.Socket) -> None:
        deferred, self._deferred = self._deferred, []
        for req in deferred:
            self._send(sock, req, fresh=False)
        while True:
            try:
                req = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send(sock, req, fresh=True)

    def _send(self, sock: zmq.Socket, req: _Request, fresh: bool) -> None:
        """Send one request; whatever goes wrong fails this request only."""
        now = time.monotonic()
        try:
            if fresh:
                timeout_s = float(req.timeout_s)
                if not math.isfinite(timeout_s) or timeout_s < 0:
                    raise ValueError(f"timeout_s must be a finite number of seconds >= 0, not {req.timeout_s!r}")
                req.deadline = now + timeout_s
                req.bytes_out = frames_size(req.frames)
            req.t_sent = now
            sock.send_multipart(req.frames, zmq.NOBLOCK)
        except zmq.Again:
            if req.kind == "ping" and now < req.deadline:
                self._deferred.append(req)  # a probe waits for the connection, up to its timeout
            else:
                self._resolve_exc(req, FogUnavailable(f"no connection to fog {self.endpoint}"))
            return
        except zmq.ZMQError as exc:
            self._resolve_exc(req, FogUnavailable(f"send to fog {self.endpoint} failed: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - a request that cannot be sent fails alone
            self._resolve_exc(req, FogError(f"request {req.rid} could not be sent: {type(exc).__name__}: {exc}"))
            return
        self.counts["sent"] += 1
        self._pending[req.rid] = req

    def _drain_replies(self, sock: zmq.Socket) -> bool:
        got_any = False
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return got_any
            t_recv = time.monotonic()
            if not 2 <= len(frames) <= MAX_TENSORS + 1:
                self.counts["bad_replies"] += 1
                log.warning("fog client: reply with %d frames ignored", len(frames))
                continue
            try:
                header = decode_header(frames[0])
                rid = str(header.get("id"))
            except (ProtocolError, RecursionError, ValueError, TypeError) as exc:
                self.counts["bad_replies"] += 1  # no id to blame: the request it answers times out and falls back
                log.warning("fog client: bad reply header ignored: %s", f"{type(exc).__name__}: {exc}"[:200])
                continue
            req = self._pending.pop(rid, None)
            if req is None:
                self.counts["late"] += 1  # reply to a request that already timed out: never a second result
                continue
            got_any = True
            try:
                self._resolve_reply(req, header, frames[1:], t_recv, len(frames[0]))
            except Exception as exc:  # noqa: BLE001 - a reply that breaks the decoder fails its request alone
                self._resolve_exc(req, FogError(f"malformed reply from fog: {type(exc).__name__}: {exc}"))

    def _resolve_reply(self, req: _Request, header: Dict[str, Any], payloads: List[bytes], t_recv: float,
                       header_bytes: int) -> None:
        rtt_us = (t_recv - req.t_sent) * 1e6
        bytes_in = sum(len(p) for p in payloads) + header_bytes
        status = header.get("status")
        if status == "refused":
            self._resolve_exc(req, FogRefused(str(header.get("error") or "refused by the fog")))
            return
        if status != "ok":
            self._resolve_exc(req, FogError(str(header.get("error") or f"fog status {status!r}")))
            return
        try:
            if req.kind == "ping":
                result: Any = PingReply(rtt_us=rtt_us, bytes_out=req.bytes_out, bytes_in=bytes_in,
                                        models=dict(header.get("models") or {}),
                                        queue_est_us=float(header.get("queue_est_us") or 0.0),
                                        workers=int(header.get("workers") or 0))
            else:
                if "tensors" in header:  # v2: every output by name
                    outputs: Any = tensors_from_frames(header, payloads)
                elif len(payloads) == 1:
                    outputs = array_from_payload(header, payloads[0])
                else:
                    raise ProtocolError(f"v1 reply with {len(payloads)} payload frames")
                result = FogReply(outputs=outputs,
                                  t_f_us=float(header.get("t_f_us") or 0.0),
                                  queue_us=float(header.get("queue_us") or 0.0), rtt_us=rtt_us,
                                  bytes_out=req.bytes_out, bytes_in=bytes_in)
        except (ProtocolError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            self._resolve_exc(req, FogError(f"malformed reply from fog: {type(exc).__name__}: {exc}"))
            return
        self.counts["ok"] += 1
        if not req.future.done():
            req.future.set_result(result)

    def _resolve_exc(self, req: _Request, exc: FogFailure) -> None:
        key = {FogTimeout: "timeout", FogRefused: "refused", FogUnavailable: "unavailable"}.get(type(exc), "error")
        self.counts[key] += 1
        if not req.future.done():
            req.future.set_exception(exc)

    def _expire(self) -> int:
        now = time.monotonic()
        expired = [r for r in self._pending.values() if r.deadline <= now]
        for req in expired:
            del self._pending[req.rid]
            self._resolve_exc(req, FogTimeout(f"no reply from fog {self.endpoint} within {req.timeout_s:.3f}s"))
        return len(expired)

    def _fail_all(self, exc: FogFailure) -> None:
        pending, self._pending = self._pending, {}
        for req in pending.values():
            self._resolve_exc(req, type(exc)(str(exc)))


# ---- circuit breaker -----------------------------------------------------------------------------
class CircuitBreaker:
    """Marks the fog ``down`` after ``failure_threshold`` consecutive failures; back ``up`` after
    ``recovery_probes`` consecutive successful probes. While down, only probes go to the fog,
    one every ``probe_interval_s`` seconds. Thread-safe.
    """

    def __init__(self, failure_threshold: int = 3, recovery_probes: int = 2, probe_interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.recovery_probes = recovery_probes
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = "up"
        self._failures = 0
        self._probe_ok = 0
        self._next_probe = 0.0
        self.last_error: Optional[str] = None
        self.transitions = 0

    @property
    def state(self) -> str:
        """``"up"`` or ``"down"``."""
        return self._state

    def is_up(self) -> bool:
        return self._state == "up"

    def record_success(self) -> None:
        """A real request succeeded (ignored while down: only probes bring the fog back)."""
        with self._lock:
            if self._state == "up":
                self._failures = 0

    def record_failure(self, error: str = "") -> bool:
        """A request or probe failed; returns True if this failure tripped the breaker."""
        with self._lock:
            self.last_error = error or self.last_error
            if self._state == "down":
                return False
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._state = "down"
                self._probe_ok = 0
                self._next_probe = self._clock() + self.probe_interval_s
                self.transitions += 1
                log.warning("fog marked down after %d consecutive failures (last: %s)", self._failures,
                            self.last_error)
                return True
            return False

    def probe_due(self) -> bool:
        """True when the fog is down and the next probe may be sent."""
        with self._lock:
            return self._state == "down" and self._clock() >= self._next_probe

    def record_probe(self, ok: bool, error: str = "") -> None:
        """Result of a probe sent while down."""
        with self._lock:
            if self._state != "down":
                return
            self._next_probe = self._clock() + self.probe_interval_s
            if not ok:
                self._probe_ok = 0
                self.last_error = error or self.last_error
                return
            self._probe_ok += 1
            if self._probe_ok >= self.recovery_probes:
                self._state = "up"
                self._failures = 0
                self.transitions += 1
                log.warning("fog back up after %d successful probes", self._probe_ok)

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {"state": self._state, "failures": self._failures, "probe_ok": self._probe_ok,
                    "transitions": self.transitions, "last_error": self.last_error}
