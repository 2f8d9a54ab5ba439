"""``edged fog``: the fog node. A ZeroMQ ROUTER that runs offloaded inputs on a worker pool.

Threads: one I/O thread owns the ROUTER socket (and answers pings itself); ``workers``
threads each hold their own loaded instance of every model (a runtime session is
used by one thread at a time) and take requests from one bounded queue. Results
come back to the I/O thread over an inproc PUSH/PULL pair, because a ZeroMQ socket
must only be used by the thread that owns it.

A request whose ``model_hash`` differs from the fog's copy of the model is
``refused`` with both hashes in the message; a request carrying ``cut``
(``{"name", "hash"}``: an intermediate tensor of a partitioned model, see
:mod:`edged.partition`) runs the tail of that cut, built from the fog's own
``model.onnx`` and verified against the full model on first use (or at start with
``--cuts``), and is ``refused`` when the edge's tail hash differs from the fog's;
ping replies list each model's cuts with their tail time (``models[m]["cuts"]``); a full queue answers ``error`` ("fog
queue full") at once instead of queueing forever; messages above
``max_msg_bytes`` make ZeroMQ drop the sender's connection (``ZMQ_MAXMSGSIZE``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import queue
import signal
import statistics
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np
import zmq

from edged.errors import ConfigError, EdgedError
from edged.offload.protocol import (
    MAX_TENSORS,
    PROTOCOL_VERSION,
    ProtocolError,
    array_from_payload,
    decode_header,
    encode_header,
    tensors_from_frames,
    tensors_to_frames,
)

log = logging.getLogger("edged.fog")

DEFAULT_BIND = "tcp://*:5556"
DEFAULT_MAX_MSG_BYTES = 16 * 1024 * 1024
_MAX_PING_PAD = 1024 * 1024
#: ping replies report the median T_F of the runs in this many seconds
T_F_HORIZON_S = 10.0
#: an idle worker re-times a model not run for this many seconds
T_F_REFRESH_S = 2.0
#: validation inputs a fog checks each cut's head + tail on before serving it (the edge checks all of them)
FOG_VERIFY_INPUTS = 64

_Job = Tuple[bytes, Dict[str, Any], List[bytes], float]  # (routing id, header, payload frames, t_enqueued monotonic)


class FogServer:
    """A fog node serving the model catalogue over a ZeroMQ ROUTER socket.

    Args:
        bind: ZeroMQ endpoint to bind, e.g. ``tcp://*:5556`` (``tcp://127.0.0.1:0`` picks a free port).
        models_dirs: extra model directories on top of the shipped catalogue.
        backend: ``onnx`` | ``litert`` | ``auto``.
        threads: intra-op threads per model instance (per worker).
        workers: worker threads; each loads its own instance of every model.
        max_queue: requests waiting beyond this are answered ``error: fog queue full``.
        max_msg_bytes: ``ZMQ_MAXMSGSIZE`` on the ROUTER (bytes); bigger messages drop the peer.
        curve_secret_key: path of this node's CURVE secret certificate (enables CURVE).
        curve_authorized_dir: directory of authorised client public certificates (required with CURVE).
        models: restrict to these model names (default: every catalogue model).
        warmup_runs: inferences on a zero input per model and worker at start (seeds T_F).
        cuts: build, verify and time the tail of every usable cut of every ONNX model at start (else on the
            first request for a cut); needs ``onnx`` (``pip install 'edged[partition]'``).
    """

    def __init__(self, bind: str = DEFAULT_BIND, models_dirs: Optional[Sequence[str]] = None,
                 backend: str = "auto", threads: int = 1, workers: int = 1, max_queue: int = 64,
                 max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES, curve_secret_key: Optional[str] = None,
                 curve_authorized_dir: Optional[str] = None, models: Optional[Sequence[str]] = None,
                 warmup_runs: int = 2, context: Optional[zmq.Context] = None, cuts: bool = False) -> None:
        if workers < 1 or threads < 1 or max_queue < 1:
            raise ConfigError("fog: --workers, --threads and --max-queue must be >= 1")
        if bool(curve_secret_key) != bool(curve_authorized_dir):
            raise ConfigError("fog: CURVE needs both --curve-secret-key and --curve-authorized-dir")
        self.bind = bind
        self.models_dirs = list(models_dirs or [])
        self.backend = backend
        self.threads = threads
        self.n_workers = workers
        self.max_queue = max_queue
        self.max_msg_bytes = max_msg_bytes
        self.curve_secret_key = curve_secret_key
        self.curve_authorized_dir = curve_authorized_dir
        self.only_models = list(models) if models else None
        self.warmup_runs = warmup_runs
        self.preload_cuts = cuts
        self._t_tail: Dict[Tuple[str, str], Deque[float]] = {}  # (model, cut) -> recent tail times (µs)
        self._cut_hashes: Dict[Tuple[str, str], str] = {}
        self._parts: List[Dict[str, Any]] = []
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._stop = threading.Event()
        self._jobs: queue.Queue[Optional[_Job]] = queue.Queue()
        self._hashes: Dict[str, str] = {}
        self._t_f: Dict[str, Deque[Tuple[float, float]]] = {}  # model -> (monotonic time, T_F µs)
        self._refresh_claims: Dict[str, float] = {}
        self._t_f_lock = threading.Lock()
        self._workers: List[threading.Thread] = []
        self._router: Optional[zmq.Socket] = None
        self._results: Optional[zmq.Socket] = None
        self._auth: Any = None
        self._io_thread: Optional[threading.Thread] = None
        self._results_ep = f"inproc://edged-fog-results-{id(self)}"
        self.endpoint = ""
        self.counts: Dict[str, int] = {"ok": 0, "error": 0, "refused": 0, "ping": 0, "full": 0}

    # ---- lifecycle -----------------------------------------------------------------------------
    def open(self) -> str:
        """Load models in every worker, bind the socket, start workers; return the bound endpoint."""
        from edged.models import Catalogue

        cat = Catalogue.discover(extra_dirs=[Path(d) for d in self.models_dirs] or None)
        names, skipped = cat.select(self.only_models or (), self.backend)
        for name, reason in skipped.items():
            log.error("fog: model %s skipped: %s", name, reason)
        if not names:
            raise ConfigError("fog: the model catalogue is empty; nothing to serve")
        self._hashes = {name: cat.get(name).model_hash for name in names}
        instances: List[Dict[str, Any]] = []
        for _ in range(self.n_workers):
            loaded: Dict[str, Any] = {}
            for name in names:
                loaded[name] = cat.load(name, backend=self.backend, threads=self.threads)
                self._warmup(name, loaded[name])
            instances.append(loaded)
            parts: Dict[str, Any] = {}
            if self.preload_cuts:
                for name in names:
                    try:
                        self._partition(parts, loaded[name])
                    except EdgedError as exc:  # a model that cannot be partitioned is served whole
                        log.info("fog: no cuts for %s: %s", name, exc)
            self._parts.append(parts)
        self._results = self._ctx.socket(zmq.PULL)
        self._results.bind(self._results_ep)
        self._router = self._make_router()
        for i, loaded in enumerate(instances):
            t = threading.Thread(target=self._worker, args=(loaded, self._parts[i]), name=f"fog-worker-{i}",
                                 daemon=True)
            t.start()
            self._workers.append(t)
        return self.endpoint

    def _make_router(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, int(self.max_msg_bytes))
        sock.setsockopt(zmq.SNDHWM, 10000)
        sock.setsockopt(zmq.RCVHWM, 10000)
        if self.curve_secret_key:
            from zmq.auth import load_certificate
            from zmq.auth.thread import ThreadAuthenticator

            auth_dir = Path(str(self.curve_authorized_dir))
            if not auth_dir.is_dir():
                raise ConfigError(f"fog: --curve-authorized-dir {auth_dir} is not a directory")
            try:
                public, secret = load_certificate(self.curve_secret_key)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"fog: cannot read CURVE key {self.curve_secret_key}: {exc}") from None
            if not secret:
                raise ConfigError(f"fog: {self.curve_secret_key} holds no secret key (use the .key_secret file)")
            self._auth = ThreadAuthenticator(self._ctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(auth_dir))
            sock.curve_server = True
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        try:
            sock.bind(self.bind)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ConfigError(f"fog: cannot bind {self.bind}: {exc}") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def _warmup(self, name: str, model: Any) -> None:
        for _ in range(self.warmup_runs):
            self._time_zero_input(name, model)

    def _time_zero_input(self, name: str, model: Any) -> None:
        """Run one all-zeros input (every input of the model, initial state) and record its T_F."""
        entry = model.entry
        if len(entry.inputs) == 1:
            spec = entry.input
            x = np.zeros(tuple(d if d else 1 for d in spec.sample_shape), dtype=np.dtype(spec.dtype))
            t0 = time.perf_counter()
            model.predict(x)
        else:
            feeds = entry.make_feeds()
            t0 = time.perf_counter()
            model.run(feeds)
        self._record_t_f(name, (time.perf_counter() - t0) * 1e6)

    def start(self) -> str:
        """:meth:`open` and serve on a background thread; returns the bound endpoint."""
        self.open()
        self._io_thread = threading.Thread(target=self.serve_forever, name="fog-io", daemon=True)
        self._io_thread.start()
        return self.endpoint

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving (queued requests are answered ``error: fog shutting down``) and release everything."""
        self._stop.set()
        if self._io_thread is not None:
            self._io_thread.join(timeout_s)
        else:
            self._shutdown(timeout_s)

    def serve_forever(self, stop: Optional[threading.Event] = None, tick: Optional[Callable[[], None]] = None) -> None:
        """Run the I/O loop in this thread until ``stop`` (or :meth:`stop`) is set.

        ``tick`` is called from the loop at least every 100 ms (the CLI sends the systemd
        watchdog ping from it, so a hung loop stops the pings)."""
        assert self._router is not None and self._results is not None, "call open() first"
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._results, zmq.POLLIN)
        try:
            while not self._stop.is_set() and not (stop is not None and stop.is_set()):
                events = dict(poller.poll(100))
                if self._results in events:
                    self._drain_results()
                if self._router in events:
                    self._drain_requests()
                if tick is not None:
                    tick()
        finally:
            self._stop.set()
            self._shutdown(5.0)

    def _shutdown(self, timeout_s: float) -> None:
        # answer whatever is still queued so edges fall back at once instead of timing out
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and self._router is not None:
                self._reply(job[0], job[1], "error", "fog shutting down")
        for _ in self._workers:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._results is not None:
            self._drain_results()
        for sock in (self._router, self._results):
            if sock is not None:
                sock.close(0)
        self._router = self._results = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx:
            self._ctx.term()

    # ---- I/O thread ----------------------------------------------------------------------------
    def _drain_requests(self) -> None:
        assert self._router is not None
        for _ in range(1000):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._handle_request(frames)
            except Exception as exc:  # one message's failure is its own: the node keeps serving
                self.counts["bad_requests"] = self.counts.get("bad_requests", 0) + 1
                log.warning("fog: request dropped: %s: %s", type(exc).__name__, str(exc)[:200])
                with contextlib.suppress(Exception):
                    self._reply(frames[0], {}, "error", f"request refused: {type(exc).__name__}")

    def _handle_request(self, frames: List[bytes]) -> None:
        ident = frames[0]
        if not 3 <= len(frames) <= MAX_TENSORS + 2:
            self._reply(ident, {}, "error", f"expected [header, payload, ...], got {len(frames) - 1} frames")
            return
        try:
            header = decode_header(frames[1])
        except ProtocolError as exc:
            self._reply(ident, {}, "error", str(exc))
            return
        kind = header.get("kind", "infer")
        if kind == "ping":
            self._pong(ident, header)
            return
        if kind != "infer":
            self._reply(ident, header, "error", f"unknown kind {kind!r}; expected infer or ping")
            return
        model = str(header.get("model"))
        fog_hash = self._hashes.get(model)
        if fog_hash is None:
            self._reply(ident, header, "error",
                        f"fog does not serve model {model!r}; it serves {', '.join(sorted(self._hashes))}")
            return
        edge_hash = header.get("model_hash")
        if edge_hash != fog_hash:
            self.counts["refused"] += 1
            self._reply(ident, header, "refused",
                        f"model {model!r} hash mismatch: edge has {edge_hash or 'none'}, fog has {fog_hash}; "
                        "deploy the same model on both", model_hash=fog_hash)
            return
        if self._jobs.qsize() >= self.max_queue:
            self.counts["full"] += 1
            self._reply(ident, header, "error", f"fog queue full ({self.max_queue} waiting)")
            return
        self._jobs.put((ident, header, frames[2:], time.monotonic()))

    def _pong(self, ident: bytes, header: Dict[str, Any]) -> None:
        self.counts["ping"] += 1
        t_f = self._t_f_medians()
        depth = self._jobs.qsize()
        mean_t_f = statistics.mean(t_f.values()) if t_f else 0.0
        cuts = self._cut_report()
        extra = {
            "kind": "ping",
            "models": {m: {"model_hash": h, "t_f_us": t_f.get(m), **({"cuts": cuts[m]} if m in cuts else {})}
                       for m, h in self._hashes.items()},
            "queue_depth": depth,
            "workers": self.n_workers,
            "queue_est_us": round(depth * mean_t_f / self.n_workers, 1),
        }
        pad = min(max(0, int(header.get("reply_pad") or 0)), _MAX_PING_PAD)
        self._reply(ident, header, "ok", None, payload=b"\0" * pad, **extra)

    def _reply(self, ident: bytes, req: Dict[str, Any], status: str, error: Optional[str],
               payload: bytes = b"", **fields: Any) -> None:
        if status == "error":
            self.counts["error"] += 1
        header: Dict[str, Any] = {"v": PROTOCOL_VERSION, "id": req.get("id"), "status": status, "error": error,
                                  "t_f_us": 0.0, "queue_us": 0.0, "dtype": None, "shape": None,
                                  "model_hash": self._hashes.get(str(req.get("model")))}
        header.update(fields)
        if self._router is not None:
            self._router.send_multipart([ident, encode_header(header), payload])

    def _drain_results(self) -> None:
        assert self._results is not None and self._router is not None
        for _ in range(1000):
            try:
                frames = self._results.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._router.send_multipart(frames)

    # ---- workers -------------------------------------------------------------------------------
    def _worker(self, models: Dict[str, Any], parts: Optional[Dict[str, Any]] = None) -> None:
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(self._results_ep)
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=0.5)
                except queue.Empty:
                    if self._stop.is_set():
                        break
                    self._refresh_stale_t_f(models)
                    continue
                if job is None:
                    break
                push.send_multipart(self._run(models, job, parts))
        finally:
            for m in models.values():
                try:
                    m.close()
                except Exception:  # closing must not hide the shutdown of other workers
                    log.exception("closing a model failed")
            push.close()

    def _run(self, models: Dict[str, Any], job: _Job, parts: Optional[Dict[str, Any]] = None) -> List[bytes]:
        """Run one request. v1 (one array): the first output as ``[header, payload]``. v2 (``tensors``): every
        input by name (state included: the fog keeps none) through ``run``; every output as tensors. With
        ``cut``: the one array is the intermediate tensor of one sample; the tail's first output comes back
        as in v1 (``parts`` caches this worker's partitioned models)."""
        ident, req, payloads, t_enq = job
        queue_us = (time.monotonic() - t_enq) * 1e6
        name = str(req.get("model"))
        header: Dict[str, Any] = {"v": PROTOCOL_VERSION, "id": req.get("id"), "status": "ok", "error": None,
                                  "t_f_us": 0.0, "queue_us": round(queue_us, 1), "dtype": None, "shape": None,
                                  "model_hash": self._hashes.get(name)}
        out: List[bytes] = [b""]
        try:
            model = models[name]
            is_cut = req.get("cut") is not None
            if is_cut:
                refusal, out = self._run_cut(model, req, payloads, header, parts if parts is not None else {})
                if refusal is not None:
                    self.counts["refused"] += 1
                    header.update(status="refused", error=refusal)
                    return [ident, encode_header(header), b""]
                t_f_us = header["t_f_us"]
            elif "tensors" in req:
                feeds = tensors_from_frames(req, payloads)
                t0 = time.perf_counter()
                outs = model.run(feeds)
                t_f_us = (time.perf_counter() - t0) * 1e6
                frames = tensors_to_frames({}, outs)
                header.update(tensors=decode_header(frames[0])["tensors"], v=2)
                out = frames[1:]
            else:
                if len(payloads) != 1:
                    raise ProtocolError(f"a request without 'tensors' carries one payload, not {len(payloads)}")
                x = array_from_payload(req, payloads[0])
                t0 = time.perf_counter()
                y = np.ascontiguousarray(model.predict(x))
                t_f_us = (time.perf_counter() - t0) * 1e6
                header.update(dtype=str(y.dtype), shape=list(y.shape))
                out = [y.tobytes()]
            if not is_cut:  # a tail's time is not the model's T_F (it is in the ping's cuts)
                self._record_t_f(name, t_f_us)
            header["t_f_us"] = round(t_f_us, 1)
            self.counts["ok"] += 1
        except (ProtocolError, EdgedError, ValueError) as exc:
            header.update(status="error", error=f"model {name!r}: {exc}")
            self.counts["error"] += 1
        except Exception as exc:  # a model crash answers an error; the worker keeps serving
            log.exception("fog: model %s failed", name)
            header.update(status="error", error=f"model {name!r} failed on the fog: {type(exc).__name__}: {exc}")
            self.counts["error"] += 1
        if header["status"] != "ok":
            out = [b""]
        return [ident, encode_header(header), *out]

    # ---- partitioned models ---------------------------------------------------------------------
    def _partition(self, parts: Dict[str, Any], model: Any) -> Any:
        """This worker's :class:`~edged.partition.split.PartitionedModel` of ``model`` (built, verified and each
        tail timed once on first use)."""
        pm = parts.get(model.name)
        if pm is None:
            from edged.partition.split import PartitionedModel

            # the tail hash already proves the edge's graph is ours; this check is on the first inputs only
            pm = PartitionedModel(model.entry, threads=self.threads, max_verify=FOG_VERIFY_INPUTS)
            for c in pm.cuts:
                if c.interior:
                    x = np.zeros(tuple(d if d else 1 for d in c.shape), dtype=np.dtype(c.dtype))
                    t0 = time.perf_counter()
                    pm.tail(c.name, x)
                    self._record_tail(model.name, c.name, (time.perf_counter() - t0) * 1e6, c.tail_hash)
            parts[model.name] = pm
        return pm

    def _run_cut(self, model: Any, req: Dict[str, Any], payloads: List[bytes], header: Dict[str, Any],
                 parts: Dict[str, Any]) -> Tuple[Optional[str], List[bytes]]:
        """Run the tail of ``req["cut"]`` on its intermediate tensor; fill ``header``; return (None, payload
        frames), or (the refusal message, []) when the cut is unknown here or its tail hash differs."""
        from edged.partition.graph import PartitionError

        spec = req.get("cut")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("hash"), str):
            raise ProtocolError("'cut' must be an object {\"name\": cut name, \"hash\": tail sha256}")
        cut_name, edge_hash = spec["name"], spec["hash"]
        if len(payloads) != 1:
            raise ProtocolError(f"a cut request carries one payload (the intermediate tensor), not {len(payloads)}")
        pm = self._partition(parts, model)
        try:
            cut = pm.cut(cut_name)
        except PartitionError as exc:
            return f"model {model.name!r}: {exc}", []
        if cut.tail_hash != edge_hash:
            return (f"model {model.name!r} cut {cut_name!r}: tail hash mismatch: edge has {edge_hash or 'none'}, "
                    f"fog has {cut.tail_hash}; deploy the same model on both"), []
        x = array_from_payload(req, payloads[0])
        t0 = time.perf_counter()
        outs = pm.tail(cut_name, x)
        t_us = (time.perf_counter() - t0) * 1e6
        first = next(iter(outs.values()))
        y = np.ascontiguousarray(first[0] if first.ndim and first.shape[0] == 1 else first)
        self._record_tail(model.name, cut_name, t_us, cut.tail_hash)
        header.update(dtype=str(y.dtype), shape=list(y.shape), cut=cut_name, t_f_us=t_us)
        return None, [y.tobytes()]

    def _record_tail(self, model: str, cut: str, t_us: float, tail_hash: str) -> None:
        with self._t_f_lock:
            dq = self._t_tail.get((model, cut))
            if dq is None:
                dq = self._t_tail[(model, cut)] = deque(maxlen=16)
                self._cut_hashes[(model, cut)] = tail_hash
            dq.append(t_us)

    def _cut_report(self) -> Dict[str, Dict[str, Dict[str, Any]]]:
        """model -> cut -> ``{"tail_hash", "t_tail_us"}`` (median of the recent tail runs) for every tail built."""
        out: Dict[str, Dict[str, Dict[str, Any]]] = {}
        with self._t_f_lock:
            for (m, c), dq in self._t_tail.items():
                if dq:
                    out.setdefault(m, {})[c] = {"tail_hash": self._cut_hashes[(m, c)],
                                                "t_tail_us": round(statistics.median(dq), 1)}
        return out

    def _record_t_f(self, model: str, t_f_us: float) -> None:
        with self._t_f_lock:
            dq = self._t_f.get(model)
            if dq is None:
                dq = self._t_f[model] = deque(maxlen=16)
            dq.append((time.monotonic(), t_f_us))

    def _t_f_medians(self) -> Dict[str, float]:
        """Median T_F per model over the runs of the last ``T_F_HORIZON_S`` (else the latest run), µs."""
        cutoff = time.monotonic() - T_F_HORIZON_S
        out: Dict[str, float] = {}
        with self._t_f_lock:
            for m, dq in self._t_f.items():
                recent = [v for t, v in dq if t >= cutoff] or [dq[-1][1]]
                out[m] = round(statistics.median(recent), 1)
        return out

    def _refresh_stale_t_f(self, models: Dict[str, Any]) -> None:
        """While idle, time one zero input of each model not run for ``T_F_REFRESH_S``.

        Edges that run everything locally never send work, so without this the T_F the fog
        reports in pings would freeze at whatever it was (e.g. under a burst) and keep those
        edges from ever offloading again. One claim per model, so only one idle worker runs it.
        """
        now = time.monotonic()
        for name, model in models.items():
            if not self._jobs.empty() or self._stop.is_set():
                return
            with self._t_f_lock:
                dq = self._t_f.get(name)
                last = max(dq[-1][0] if dq else 0.0, self._refresh_claims.get(name, 0.0))
                if now - last < T_F_REFRESH_S:
                    continue
                self._refresh_claims[name] = now
            self._time_zero_input(name, model)

    @property
    def model_names(self) -> List[str]:
        return sorted(self._hashes)


# ---- CLI -----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default=DEFAULT_BIND, help=f"ZeroMQ endpoint to bind (default {DEFAULT_BIND})")
    parser.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                        help="extra model directory (repeatable), on top of the shipped models")
    parser.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="serve only this model (repeatable; default: all)")
    parser.add_argument("--backend", choices=("onnx", "litert", "auto"), default="auto", help="runtime backend")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per model instance (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="worker threads, each with its own models (default 2)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests allowed to wait; beyond it the fog answers 'fog queue full' (default 64)")
    parser.add_argument("--max-msg-bytes", type=int, default=DEFAULT_MAX_MSG_BYTES,
                        help=f"ZMQ_MAXMSGSIZE: bigger messages drop the sender (default {DEFAULT_MAX_MSG_BYTES})")
    parser.add_argument("--curve-secret-key", metavar="FILE",
                        help="this node's CURVE secret certificate (from 'edged keys'); enables encryption")
    parser.add_argument("--curve-authorized-dir", metavar="DIR",
                        help="directory of client public certificates allowed to connect (with CURVE)")
    parser.add_argument("--cuts", action="store_true",
                        help="build, verify and time the tail of every partition cut of every ONNX model at start "
                             "(default: on the first request for a cut); needs pip install 'edged[partition]'")


def main(args: argparse.Namespace) -> int:
    server = FogServer(bind=args.bind, models_dirs=args.models_dir, backend=args.backend, threads=args.threads,
                       workers=args.workers, max_queue=args.max_queue, max_msg_bytes=args.max_msg_bytes,
                       curve_secret_key=args.curve_secret_key, curve_authorized_dir=args.curve_authorized_dir,
                       models=args.model or None, cuts=bool(getattr(args, "cuts", False)))
    stop = threading.Event()

    def _on_signal() -> None:  # runs in edged.signals' watcher thread, never inside a signal handler
        log.info("fog: stop signal, stopping")
        stop.set()

    from edged.signals import signal_actions

    with signal_actions({signal.SIGTERM: _on_signal, signal.SIGINT: _on_signal}):
        from edged.notify import Notifier

        notifier = Notifier()
        endpoint = server.open()
        ready = f"edged fog: serving {len(server.model_names)} models on {endpoint}"
        print(ready, flush=True)
        log.info("%s (%s; workers=%d threads=%d curve=%s)", ready, ", ".join(server.model_names), args.workers,
                 args.threads, "on" if args.curve_secret_key else "off")
        notifier.ready(ready)
        wd = notifier.watchdog_interval_s
        due = {"ping": 0.0, "status": 0.0}

        def tick() -> None:  # from the I/O loop: systemd restarts a fog whose loop hangs
            now = time.monotonic()
            if wd and now >= due["ping"]:
                notifier.watchdog()
                due["ping"] = now + wd
            if notifier.enabled and now >= due["status"]:
                notifier.status(", ".join(f"{k}={v}" for k, v in server.counts.items()))
                due["status"] = now + 2.0

        server.serve_forever(stop, tick)
        notifier.stopping()
        log.info("fog: stopped (%s)", ", ".join(f"{k}={v}" for k, v in server.counts.items()))
    return 0
