"""``edged run``: wiring only. Builds the pieces from the config and runs the main loop.

Threads::

    source:<name> (one per source) --put--> IngestQueue --get--> router --submit--> Dispatcher
        Dispatcher: local worker(s), fog I/O thread, probe thread --record--> decisions.jsonl
    power sampler --record--> power.jsonl
    main thread: signals, sd_notify (READY, STATUS, WATCHDOG, STOPPING), max_inputs

Start-up: config -> catalogue -> local models -> profile (measured now if this device
has none for a model, progress in STATUS=) -> logs -> power -> fog -> dispatcher ->
queue -> router -> sources -> READY=1.

Shutdown (SIGTERM and SIGINT take this one path): STOPPING=1; sources stop accepting;
everything already accepted drains from the queue into the dispatcher; the
dispatcher finishes or falls back every input (one decision line each); power stops;
logs are flushed and closed; exit 0. SIGHUP reopens the log files (logrotate).

The watchdog ping comes from the main loop and only while the router thread shows
progress, so a hung main loop or a wedged pipeline stops the pings and systemd
restarts the service.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from edged.config import Config, SerialSourceConfig, ZmqSourceConfig, fog_address, fog_name, load_config
from edged.errors import ConfigError, EdgedError
from edged.notify import Notifier

log = logging.getLogger("edged.daemon")

#: most inputs the router hands the dispatcher at once (it never waits to fill a batch)
ROUTER_BATCH = 64


class DecisionEvents:
    """Operational log lines for the decisions an operator must notice: fallbacks, rejections, errors.

    Each line carries journald fields (MODEL=, DECISION=, SOURCE=, SEQ=) so ``journalctl -u edged
    DECISION=fallback`` finds them. At most one line per model and decision every ``interval_s``;
    the next line says how many were folded into it. The decision log itself never depends on this.
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._next: Dict[tuple, float] = {}
        self._folded: Dict[tuple, int] = {}
        self._lock = threading.Lock()

    def observe(self, records: List[Dict[str, Any]]) -> None:
        for r in records:
            decision = r.get("decision")
            if decision not in ("fallback", "rejected") and not r.get("error"):
                continue
            key = (r.get("model"), decision)
            now = time.monotonic()
            with self._lock:
                if now < self._next.get(key, 0.0):
                    self._folded[key] = self._folded.get(key, 0) + 1
                    continue
                self._next[key] = now + self.interval_s
                folded = self._folded.pop(key, 0)
            more = f" (+{folded} more like it in the last {self.interval_s:.0f}s)" if folded else ""
            fields = {"MODEL": str(r.get("model")), "DECISION": str(decision), "SOURCE": str(r.get("source")),
                      "SEQ": str(r.get("seq"))}
            log.warning("%s %s seq %s from %s: %s%s", r.get("model"), decision, r.get("seq"), r.get("source"),
                        r.get("error") or r.get("reason"), more, extra={"journal_fields": fields})


def _writer(path: Path, cfg: Config) -> Any:
    from edged.logs import JsonlWriter

    return JsonlWriter(path, max_bytes=cfg.logs.max_bytes, backups=cfg.logs.backups,
                       spool_records=cfg.logs.spool_records)


class _Intake:
    """The daemon as its sources' sink (:class:`edged.sources.base.BatchSink`): one input, or several a source
    received back to back."""

    __slots__ = ("_one", "many")

    def __init__(self, one: Callable[[Any], bool], many: Callable[[Sequence[Any]], int]) -> None:
        self._one = one
        self.many = many

    def __call__(self, sample: Any) -> bool:
        return self._one(sample)


class Daemon:
    """One running edged. ``start()`` then ``run()`` (blocks until stopped) — or ``main()``."""

    def __init__(self, cfg: Config, notifier: Optional[Notifier] = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        self._sources_stop = threading.Event()
        self._router_beat = time.monotonic()
        self._router_thread: Optional[threading.Thread] = None
        self._source_threads: List[threading.Thread] = []
        self.sources: List[Any] = []
        self.models: Dict[str, Any] = {}
        self.dispatcher: Any = None
        self.queue: Any = None
        self.sampler: Any = None
        self.fog: Any = None  # the first fog node's back end (None: fog off)
        self.fogs: List[Tuple[Any, Any]] = []  # (FogConfig, back end) of every fog node
        self.decisions: Any = None
        self.sinks: Any = None  # edged.sinks.SinkSet when [[sinks]] are configured
        self.power_log: Any = None
        self.started_mono = time.monotonic()
        self.ready_after_s: Optional[float] = None
        self.log_dir: Optional[Path] = None
        self.profile_rows: List[Dict[str, Any]] = []
        self._hup = threading.Event()
        self.events = DecisionEvents()
        #: held by whoever hands inputs to the dispatcher (the router, or a source thread going inline)
        self._lane = threading.Lock()
        self._intake = _Intake(self._sink, self._sink_many)
        self._signals = contextlib.ExitStack()  # the signal watcher, until main() returns

    # ------------------------------------------------------------------ start-up

    def _status(self, text: str) -> None:
        log.info("%s", text)
        self.notifier.status(text)

    def _load_models(self) -> Any:
        from edged.models import Catalogue

        cat = Catalogue.discover(self.cfg.models.dirs)
        backends = {n: self.cfg.models.backends.get(n, self.cfg.models.backend) for n in cat.names()}
        # models enabled by name must be servable (else start-up fails with why); with none named, a
        # model that cannot be served here is skipped with one clear line and the others are served
        enabled, skipped = cat.select(self.cfg.models.enabled, backends)
        for name, reason in skipped.items():
            log.error("model %s skipped: %s", name, reason)
        if not enabled:
            raise ConfigError(f"{self.cfg.path}: no models to serve (catalogue is empty)")
        for name in enabled:
            self._status(f"loading model {name}")
            backend = self.cfg.models.backends.get(name, self.cfg.models.backend)
            options = {}
            if self.cfg.models.providers and cat.resolve_backend(name, backend) == "onnx":
                options["providers"] = list(self.cfg.models.providers)
            self.models[name] = cat.load(name, backend, threads=self.cfg.models.threads, **options)
        return cat

    def _profile(self, cat: Any) -> Dict[str, Any]:
        """WCET and p50 per model from the stored profile, measuring what is missing first."""
        from edged.profile import load_profile, profile_one, store_results

        sd = self.cfg.resolved_state_dir()
        prof = load_profile(sd)
        threads = self.cfg.models.threads
        missing = [n for n, m in self.models.items()
                   if prof is None or not prof.is_current(n, m.backend_name, threads, m.entry.model_hash,
                                                          dynamic=m.entry.is_dynamic)]
        if missing and self.cfg.daemon.profile_on_start:
            rows = []
            for i, name in enumerate(missing, 1):
                backend = self.models[name].backend_name
                self._status(f"profiling {name}/{backend} ({i}/{len(missing)}): no stored WCET for this device")
                self.notifier.extend_timeout(120)  # a slow board must not hit TimeoutStartSec= while profiling
                rows.append(profile_one(cat, name, backend, threads, repeats=self.cfg.daemon.profile_repeats,
                                        progress=self.notifier.status, gap_ms=self.cfg.daemon.profile_gap_ms,
                                        stop=self.stop_event))
            prof = store_results(rows, sd)
            self.profile_rows = rows
            log.info("profile stored in %s", prof.path)
        elif missing:
            log.warning("no stored WCET for %s on this device and profile_on_start = false: "
                        "threshold decisions for them will run locally", ", ".join(missing))
        wcet: Dict[str, float] = {}
        p50: Dict[str, float] = {}
        by_shape: Dict[str, Dict[str, float]] = {}
        p50_by_shape: Dict[str, Dict[str, float]] = {}
        for name, m in self.models.items():
            if prof is None:
                continue
            w = prof.wcet_us(name, m.backend_name, threads)
            p = prof.p50_us(name, m.backend_name, threads)
            if w is not None:
                wcet[name] = w
            if p is not None:
                p50[name] = p
            if m.entry.is_dynamic:  # WCET per input shape: the decision uses the input's own
                by_shape[name] = prof.wcet_by_shape(name, m.backend_name, threads)
                p50_by_shape[name] = prof.p50_by_shape(name, m.backend_name, threads)
        return {"wcet": wcet, "p50": p50, "wcet_by_shape": by_shape, "p50_by_shape": p50_by_shape}

    def _power(self) -> Any:
        from edged.power.base import make_power_source
        from edged.power.energy import ActivityTracker, PowerModel
        from edged.power.sampler import PowerSampler

        pc = self.cfg.power
        if pc.source == "none":
            return None, None, None
        if pc.source == "auto":
            source = make_power_source("auto", ina219=dict(pc.ina219), jtop=dict(pc.jtop), hwmon=dict(pc.hwmon))
        else:
            source = make_power_source(pc.source, **dict(getattr(pc, pc.source)))
        if getattr(source, "is_null", False) or source.name == "none":
            return None, None, None
        thermal = None
        if pc.thermal:
            from edged.power.thermal import ThermalReader

            thermal = ThermalReader(root=pc.thermal_root)
        from edged.power.battery import BatteryReader

        # a battery (laptop-class boards, UPS HATs with a fuel gauge) goes into the power log beside the rails
        sampler = PowerSampler(source, rate_hz=pc.rate_hz, sink=self.power_log.write, thermal=thermal,
                               battery=BatteryReader())
        tracker = ActivityTracker()
        model = PowerModel(tracker, window_s=max(0.05, sampler.interval_s))
        sampler.add_listener(model.observe)
        sampler.start()
        return sampler, tracker, model

    def _fogs(self) -> List[Tuple[Any, Any]]:
        """(config, back end) of every enabled fog node ([[fog]] or the single [fog]): zmq (edged fog) or oip
        (Triton, KServe, MLServer). One that cannot work raises here, and those already built are closed."""
        from edged.offload.backends import build_fog_backend

        built: List[Tuple[Any, Any]] = []
        try:
            for fc in self.cfg.fog_nodes:
                if fc.enabled:
                    built.append((fc, build_fog_backend(fc)))
        except Exception:
            for _, backend in built:
                backend.close()
            raise
        return built

    def _build_sources(self, specs: Dict[str, Any]) -> List[Any]:
        out: List[Any] = []
        for sc in self.cfg.sources:
            if isinstance(sc, ZmqSourceConfig):
                from edged.sources.zmq import ZmqSource

                out.append(ZmqSource(specs, endpoint=sc.endpoint, bind=sc.bind, rcvhwm=sc.rcvhwm,
                                     max_msg_bytes=sc.max_msg_bytes, name=sc.name))
            elif isinstance(sc, SerialSourceConfig):
                from edged.sources.serial import SerialSource

                out.append(SerialSource(specs, url=sc.url, framing=sc.framing, baudrate=sc.baudrate,
                                        default_model=sc.model or None, max_frame_bytes=sc.max_frame_bytes,
                                        name=sc.name))
            else:  # [[sources]] type = "mqtt" (its config class lives with the source)
                from edged.sources.mqtt import MqttSource

                out.append(MqttSource(specs, sc))
        return out

    def _build_sinks(self) -> Any:
        """The configured result sinks (None without [[sinks]]). The serial sink writes replies on the serial
        source an input came from."""
        if not self.cfg.sinks:
            return None
        from edged.sinks import build_sinks

        writers = {src.name: src.write_reply for src in self.sources if hasattr(src, "write_reply")}
        return build_sinks(self.cfg.sinks, writer_for=writers.get)

    def _publish(self, records: List[Dict[str, Any]], outputs: Sequence[Any]) -> None:
        """Dispatcher -> result sinks, right after the records are written (never blocks, never raises)."""
        from edged.sinks import Result

        self.sinks.publish_many([Result(rec, out) for rec, out in zip(records, outputs)])

    def start(self) -> None:
        from edged.logs import ensure_writable_dir
        from edged.offload.dispatcher import Dispatcher, FogNode
        from edged.offload.estimator import LinkEstimator
        from edged.offload.fog_client import CircuitBreaker
        from edged.offload.policy import parse_risk
        from edged.offload.types import DispatcherConfig
        from edged.sources.queue import IngestQueue

        cfg = self.cfg
        log_dir = cfg.resolved_log_dir()
        ensure_writable_dir(log_dir)  # an unwritable logs dir fails here, before READY, never after
        self.log_dir = log_dir
        self.fogs = self._fogs()  # a fog endpoint that cannot work fails now, not after minutes of profiling
        self.fog = self.fogs[0][1] if self.fogs else None
        self._status("starting: loading models")
        cat = self._load_models()
        if self.fogs:
            from edged.offload.backends import attach_models

            for _, backend in self.fogs:
                attach_models(backend, self.models)  # an OIP node's identity canary; nothing for edged fog
        timing = self._profile(cat)
        self.decisions = _writer(log_dir / "decisions.jsonl", cfg)
        self.power_log = _writer(log_dir / "power.jsonl", cfg)
        self.sampler, tracker, power_model = self._power()
        policies = {"*": cfg.policy.default, **dict(cfg.policy.models)}
        nodes = [FogNode(name=fog_name(fc), backend=backend, link=LinkEstimator(),
                         breaker=CircuitBreaker(failure_threshold=fc.breaker_failures,
                                                recovery_probes=fc.recovery_probes,
                                                probe_interval_s=fc.probe_interval_s))
                 for fc, backend in self.fogs]
        settings = DispatcherConfig(
            policies=policies, objective=cfg.policy.objective, local_workers=cfg.local.workers,
            max_local_queue=cfg.local.max_queue, max_batch=cfg.local.max_batch,
            fog_timeout_s=cfg.fog.timeout_ms / 1000.0, probe_interval_s=cfg.fog.probe_interval_s,
            wcet_us=timing["wcet"], local_exec_us=timing["p50"],
            wcet_by_shape=timing["wcet_by_shape"], p50_by_shape=timing["p50_by_shape"],
            risk_k=parse_risk(cfg.policy.risk), joint=cfg.policy.joint, makespan_weight=cfg.policy.makespan_weight)
        self.dispatcher = Dispatcher(
            self.models, settings, self._record_one, sink_many=self._record_many, nodes=nodes,
            energy_fn=self.sampler.energy_mj if self.sampler else None, activity=tracker, power=power_model,
            on_results=self._publish if cfg.sinks else None)
        self.queue = IngestQueue(cfg.queue.size, cfg.queue.when_full, on_drop=self._on_drop)
        self._router_thread = threading.Thread(target=self._route, name="router", daemon=True)
        self._router_thread.start()
        specs = dict(self.models)  # every input of each model's contract, and a quantised input's integer type
        self.sources = self._build_sources(specs)
        self.sinks = self._build_sinks()
        if self.sinks is not None:
            self.sinks.open()  # a sink that cannot bind fails start-up (no READY), naming its endpoint
        opened: List[Any] = []
        try:
            for src in self.sources:
                src.on_rejected = self.dispatcher.record_rejection
                # binds and opens now: a bind failure raises (exit non-zero, no READY), and a serial port is
                # opened (and flushed by pyserial) before READY, so nothing sent after READY is lost
                src.open()
                opened.append(src)
        except Exception:
            for src in opened:
                src.close()
            raise
        for src in self.sources:
            self._source_threads.append(src.start(self._intake, self._sources_stop))
        self.ready_after_s = time.monotonic() - self.started_mono
        where = ", ".join(getattr(s, "endpoint", None) or getattr(s, "url", s.name) for s in self.sources) or "none"
        msg = (f"ready in {self.ready_after_s:.2f}s: models {', '.join(self.models)}; sources {where}; "
               f"fog {', '.join(fog_address(fc) for fc, _ in self.fogs) or 'off'}; logs {log_dir}")
        log.info("%s", msg)
        self.notifier.ready(msg)

    # ------------------------------------------------------------------ pipeline

    def _record_one(self, record: Dict[str, Any]) -> None:
        self.decisions.write(record)
        self.events.observe([record])

    def _record_many(self, records: List[Dict[str, Any]]) -> None:
        self.decisions.write_many(records)
        self.events.observe(records)

    def _sink(self, sample: Any) -> bool:
        """Source -> dispatcher. When nothing is queued and no one is handing inputs to the dispatcher, the
        source's own thread decides the input (and, when it runs locally on an idle worker, runs it): at sensor
        rates an input then crosses no thread at all, as in a hand-written loop. Otherwise it joins the queue
        (under 'block' this waits for space: ZeroMQ RCVHWM backpressure, until the queue closes at shutdown;
        a refused or evicted sample gets a 'rejected' record via _on_drop), and the router takes it in order."""
        q = self.queue
        if not q.qsize() and not q.closed and self._lane.acquire(blocking=False):
            try:
                if not q.qsize():  # nothing accepted before it is still waiting: order holds
                    self.dispatcher.submit_many((sample,))  # one record per input, whatever happens inside
                    return True
            finally:
                self._lane.release()
        return bool(q.put(sample, timeout=None))

    def _sink_many(self, samples: Sequence[Any]) -> int:
        """:meth:`_sink` for inputs a source received back to back: decided in one round and, same-model
        neighbours, run as one batch on the source's thread when the lane is free; else queued in order.
        Returns how many were accepted."""
        q = self.queue
        if not q.qsize() and not q.closed and self._lane.acquire(blocking=False):
            try:
                if not q.qsize():
                    self.dispatcher.submit_many(samples)
                    return len(samples)
            finally:
                self._lane.release()
        return sum(1 for sample in samples if q.put(sample, timeout=None))

    def _on_drop(self, sample: Any, reason: str) -> None:
        if self.dispatcher is not None:
            self.dispatcher.record_rejected(sample, reason)

    def _route(self) -> None:
        q, d = self.queue, self.dispatcher
        while True:
            self._router_beat = time.monotonic()
            samples = q.get_many(ROUTER_BATCH, timeout=0.2)  # whatever is queued, without waiting for more
            if not samples:
                if q.closed and q.qsize() == 0:
                    return
                continue
            try:
                with self._lane:
                    d.submit_many(samples)  # records its own per-input failures; never raises for one input
            except Exception:
                log.exception("router: submit_many failed for %d input(s)", len(samples))

    # ------------------------------------------------------------------ main loop

    def status_line(self) -> str:
        s = self.dispatcher.stats() if self.dispatcher else {}
        c = s.get("decisions", {})
        qs = self.queue.qsize() if self.queue else 0
        rejected = sum(sum(src.stats.snapshot().get("rejected", {}).values()) for src in self.sources)
        fog = (s.get("fog") or "off") if self.fog else "off"
        power = ""
        if self.sampler is not None:
            w = self.sampler.latest_total_w()
            power = f"; {w:.2f} W" if w is not None else ""
        states = [src.state() for src in self.sources] + (list(self.sinks.states()) if self.sinks else [])
        waiting = "".join(f"; {st}" for st in states if st)
        return (f"{self.decided()} decided (local {c.get('local', 0)}, offload {c.get('offload', 0)}, "
                f"fallback {c.get('fallback', 0)}, rejected {c.get('rejected', 0)}); bad input {rejected}; "
                f"queue {qs}; fog {fog}{power}{waiting}{self._storage_note()}")

    def _storage_note(self) -> str:
        """'' while the decision log is healthy; else what is spooled and lost, for STATUS= and the stop line."""
        if self.decisions is None:
            return ""
        st = self.decisions.stats()
        lost = int(st.get("lost", 0)) + (self.dispatcher.sink_failures if self.dispatcher else 0)
        if not st.get("degraded") and not lost:
            return ""
        state = "DEGRADED" if st.get("degraded") else "recovered"
        return (f"; decision log {state}: {st.get('spooled', 0)} spooled in memory, {lost} lost"
                f"{' (' + str(st.get('last_error')) + ')' if st.get('last_error') else ''}")

    def records_lost(self) -> int:
        """Records that could not be kept: dropped from a full spool, or refused by the writer."""
        lost = int(self.decisions.stats().get("lost", 0)) if self.decisions is not None else 0
        return lost + (self.dispatcher.sink_failures if self.dispatcher else 0)

    def write_stats_file(self) -> None:
        """``<logs>/stats.json``: the sources' counters (unattributable garbage lives only there) for
        ``edged tail`` and ``edged report``. Best effort: the log disk may be the thing that is failing."""
        if self.log_dir is None:
            return
        from edged.logs import write_stats_file

        obj = {"ts": time.time(), "sources": {src.name: src.stats.snapshot() for src in self.sources},
               "dispatcher": self.dispatcher.stats() if self.dispatcher else {},
               "sinks": self.sinks.stats() if self.sinks is not None else {},
               "logs": {name: w.stats() for name, w in (("decisions", self.decisions), ("power", self.power_log))
                        if w is not None}}
        try:
            write_stats_file(self.log_dir, obj)
        except Exception as exc:  # noqa: BLE001 - never let the stats file stop the daemon
            log.debug("stats.json not written: %s", exc)

    def decided(self) -> int:
        """Accepted inputs that have their record (records of ingest rejections are not counted)."""
        if self.dispatcher is None:
            return 0
        s = self.dispatcher.stats()
        return int(sum(s.get("decisions", {}).values())) - int(s.get("ingest_rejected", 0))

    def tick(self) -> None:
        """One main-loop iteration's housekeeping (status, SIGHUP reopen, max_inputs)."""
        if self._hup.is_set():
            self._hup.clear()
            for w in (self.decisions, self.power_log):
                if w is not None:
                    w.reopen()
            log.info("SIGHUP: log files reopened")
        for w in (self.decisions, self.power_log):
            if w is not None:
                w.retry()  # a degraded writer tries its disk again (with backoff); no-op when healthy
        if self.cfg.daemon.max_inputs and self.decided() >= self.cfg.daemon.max_inputs:
            log.info("max_inputs = %d reached; stopping", self.cfg.daemon.max_inputs)
            self.stop_event.set()

    def pipeline_alive(self) -> bool:
        wd = self.notifier.watchdog_interval_s or 5.0
        return time.monotonic() - self._router_beat < max(2 * wd, 1.0)

    def run(self) -> None:
        wd = self.notifier.watchdog_interval_s if self.cfg.daemon.watchdog else None
        status_every = self.cfg.daemon.status_interval_s
        step = min([x for x in (wd, status_every, 0.5) if x])
        next_status = time.monotonic()
        next_ping = time.monotonic()
        while not self.stop_event.is_set():
            self.tick()
            now = time.monotonic()
            if wd and now >= next_ping:
                if self.pipeline_alive():
                    self.notifier.watchdog()
                else:
                    log.error("router thread stalled for %.1fs: withholding the watchdog ping",
                              now - self._router_beat)
                next_ping = now + wd
            if now >= next_status:
                self.notifier.status(self.status_line())
                self.write_stats_file()
                next_status = now + status_every
            self.stop_event.wait(step)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> bool:
        """Stop accepting, drain, record every accepted input, flush. True if everything drained in time."""
        deadline = time.monotonic() + self.cfg.daemon.shutdown_timeout_s
        self.notifier.stopping(f"stopping: {self.status_line()}")
        log.info("stopping: no new inputs; draining %d queued", self.queue.qsize() if self.queue else 0)
        self._sources_stop.set()
        for t in self._source_threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        ok = True
        if self.queue is not None:
            self.queue.close()
        if self._router_thread is not None:
            self._router_thread.join(timeout=max(0.1, deadline - time.monotonic()))
            ok = ok and not self._router_thread.is_alive()
        if self.dispatcher is not None:
            ok = bool(self.dispatcher.close(timeout_s=max(0.5, deadline - time.monotonic()))) and ok
        if self.sinks is not None:  # after the last result: what is queued may still go out, briefly
            self.sinks.close(timeout_s=min(2.0, max(0.1, deadline - time.monotonic())))
            for name, st in self.sinks.stats().items():
                log.info("sink %s: %s", name, st)
        for _, backend in self.fogs:
            backend.close()
        if self.sampler is not None:
            self.sampler.close()
        for m in self.models.values():
            m.close()
        for w in (self.decisions, self.power_log):
            if w is not None:  # a last try (up to 2 s) to write what is spooled; the rest is counted as lost
                w.close(timeout_s=min(2.0, max(0.0, deadline - time.monotonic())))
        final = self.status_line()
        self.write_stats_file()
        accepted = sum(int(src.stats.snapshot()["accepted"]) for src in self.sources)
        lost = self.records_lost()
        ingest = self.dispatcher.ingest_rejected if self.dispatcher else 0
        log.log(logging.ERROR if lost else logging.INFO,
                "stopped: accepted %d, decided %d, records lost %d, rejected at ingest %d: %s",
                accepted, self.decided(), lost, ingest, final)
        for src in self.sources:
            log.info("source %s: %s", src.name, src.stats.snapshot())
        return ok and lost == 0

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reopens the logs. The actions run in a watcher thread, never inside a
        Python signal handler: there, ``Event.set()`` can deadlock on the lock a ``wait()`` in the main thread
        holds, and a log line can raise "reentrant call" mid-write (seen under qemu; see edged/signals.py)."""
        from edged.signals import signal_actions

        def on_stop(name: str) -> Callable[[], None]:
            def act() -> None:
                log.info("%s received: shutting down", name)
                self.stop_event.set()

            return act

        self._signals.enter_context(signal_actions({signal.SIGTERM: on_stop("SIGTERM"),
                                                    signal.SIGINT: on_stop("SIGINT"),
                                                    signal.SIGHUP: self._hup.set}))


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None,
                   help="TOML config (default: built-in defaults: ZeroMQ source on tcp://*:5555, fog on loopback)")
    p.add_argument("--log-dir", type=Path, default=None, help="override logs.dir")
    p.add_argument("--models-dir", type=Path, action="append", default=None, metavar="DIR",
                   help="extra models directory (repeatable), added to models.dirs")
    p.add_argument("--state-dir", type=Path, default=None, help="override daemon.state_dir")
    p.add_argument("--max-inputs", type=int, default=None, help="stop after this many decisions (0 = never)")


def _configure_logging(cfg: Config) -> None:
    from edged.logs import setup_logging

    setup_logging(getattr(logging, cfg.logs.level.upper(), logging.INFO), journal=cfg.logs.journal,
                  identifier="edged")


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from edged.errors import Interrupted

    if hasattr(signal, "SIGXFSZ"):  # a file-size limit must give EFBIG (spooled, counted), not kill us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    cfg = load_config(args.config)
    if args.log_dir is not None:
        cfg = dataclasses.replace(cfg, logs=dataclasses.replace(cfg.logs, dir=str(args.log_dir)))
    if args.models_dir:
        missing = [str(d) for d in args.models_dir if not d.is_dir()]
        if missing:
            raise ConfigError(f"--models-dir {', '.join(missing)}: expected an existing directory")
        cfg = dataclasses.replace(cfg, models=dataclasses.replace(
            cfg.models, dirs=tuple(cfg.models.dirs) + tuple(str(d) for d in args.models_dir)))
    if args.state_dir is not None:
        cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, state_dir=str(args.state_dir)))
    if args.max_inputs is not None:
        cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, max_inputs=args.max_inputs))
    if not cfg.sources:
        cfg = dataclasses.replace(cfg, sources=(ZmqSourceConfig(),))
    _configure_logging(cfg)
    d = Daemon(cfg)
    d.install_signal_handlers()
    with d._signals:
        try:
            d.start()
        except Interrupted:  # SIGTERM/SIGINT during start-up (e.g. profiling): a clean stop
            log.info("stopped during start-up")
            d.stop_event.set()
            d.shutdown()
            return 0
        except EdgedError:
            d.stop_event.set()
            d.shutdown()
            raise
        try:
            d.run()
        finally:
            ok = d.shutdown()
    return 0 if ok else 1
