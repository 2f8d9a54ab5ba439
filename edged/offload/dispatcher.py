"""The dispatch engine: decide per input, run locally or on the fog, fall back, write one record each.

Threads:

* the caller (the daemon's router thread) calls :meth:`Dispatcher.submit`: the decision is
  made there, offloads are handed to the fog back end, local work goes to a bounded queue
  (``submit`` blocks while it is full: backpressure, never a drop);
* ``local_workers`` threads run local inputs, fallbacks first;
* the fog back end's I/O thread resolves offload futures; a failure re-queues the input
  locally as a ``fallback`` (fallbacks bypass the bound, so that thread never blocks);
* one probe thread keeps the link estimates fresh (a small and a padded ping when no
  round trip is recent) and, while the circuit breaker holds the fog down, sends the
  probes that bring it back.

Invariant: every submitted input ends as exactly one record passed to ``sink`` (result,
or an explicit error). A job is marked recorded under a lock before its record is
emitted, so a late fog reply, a fallback and a shutdown can never produce two.

The decision inputs are rounded (0.1 µs) *before* ``decide`` runs and stored in the
record, so ``decide(record["policy"], inputs_from_record(record))`` replays it exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edged.errors import ConfigError
from edged.offload.estimator import LinkEstimator, LocalEstimator
from edged.offload.fog_client import (
    CircuitBreaker,
    FogBackend,
    FogError,
    FogFailure,
    FogRefused,
    FogReply,
    FogTimeout,
)
from edged.offload.policy import RECORD_FIELDS_14, Decision, DecisionInputs, decide, decide_batch, start_order
from edged.offload.types import ActivityLike, DispatcherConfig, ModelLike, PowerLike, SampleLike
from edged.results import (
    StateStore,
    primary_summary,
    summarize,
    summarize_classifier,
    summarize_classifier_rows,
    summarize_output,
    summarize_tensor,
)
from edged.sources.sample import Sample

log = logging.getLogger("edged.dispatch")
_floor = math.floor
#: the decision inputs of a record written before any decision (e.g. a rejection)
_NO_INPUTS = DecisionInputs()
#: every key a decision record always has, in the order it is written (docs/logs.md), all None
_RECORD_TEMPLATE: Dict[str, Any] = dict.fromkeys((
    "ts", "seq", "source", "model", "policy", "decision", "reason", "wcet_us", "local_exec_us", "t_l_us",
    "t_l_out_us", "t_f_us", "fog_queue_us", "threshold_us", "local_queue_us", "expected_local_us",
    "expected_offload_us", "fog_up", "deadline_us", "objective", "latency_us", "exec_us", "transfer_us", "result",
    "error", "fog_error", "energy_mj", "batch", "sender", "sender_ts"))

#: bytes the request header adds to a payload (JSON: id, model, hash, dtype, shape, ...)
HEADER_OVERHEAD_BYTES = 200
#: assumed reply size (bytes) for a model until a reply has been seen
DEFAULT_REPLY_BYTES = 300
#: about the size of a ping (header only) each way, bytes
PING_BYTES = 120
DECISIONS = ("local", "offload", "fallback", "rejected")
#: the key of the caller's thread in ``_busy`` while it runs an input inline
INLINE = -1
#: most expected local work (µs) the caller's thread runs inline; a hand-off costs tens of µs, so beyond this
#: it buys the caller time to receive (and stamp) what arrives meanwhile
INLINE_MAX_US = 2000.0
#: one input's raw outputs: output name -> array (batch axis removed)
Outputs = Dict[str, np.ndarray]


def _r(x: Optional[float], nd: int = 1) -> Optional[float]:
    """``x`` to ``nd`` decimals for the record. The value the decision uses is the value the record stores, so
    any fixed rounding replays exactly; one decimal (every µs number) takes the float path, the double nearest
    k / 10 (JSON prints it as those digits), ~4x cheaper than ``round``'s decimal conversion."""
    if x is None:
        return None
    if type(x) is not float:  # noqa: E721 - exact type: hot path
        x = float(x)
    if nd == 1 and x - x == 0.0:  # finite
        return _floor(x * 10.0 + 0.5) / 10.0
    return round(x, nd)


@dataclass
class _Job:
    sample: SampleLike
    policy: str
    ts: float
    inputs: Optional[DecisionInputs] = None
    decision: Optional[Decision] = None
    recorded: bool = False
    fog_error: Optional[str] = None
    est_us: float = 0.0
    radio_token: Any = None
    t_sent: float = 0.0
    key: int = 0
    state_key: Optional[Tuple[str, str]] = None  # (sender, model) this job holds while it runs (stateful models)
    shape: Optional[str] = None  # a dynamic model's input shape key (what its WCET was looked up by)
    wcet_scaled: bool = False  # that shape was not profiled: its WCET is scaled from the nearest profiled one
    joint: Optional[Tuple[int, int]] = None  # (inputs decided together, this one's index) from decide_batch
    node: int = 0  # the fog node this input was compared with (and sent to when offloaded)
    failover: Optional[str] = None  # "<node>: <error>" of a first node that failed before another served it
    t_f_source: Optional[str] = None  # where the reply's T_F came from (OIP: server, server_stats, derived)


@dataclass(eq=False)
class FogNode:
    """One fog node: its back end, its own link/fog estimates and circuit breaker, and the models it refuses."""

    name: str
    backend: FogBackend
    link: LinkEstimator
    breaker: CircuitBreaker
    refused: Dict[str, str] = field(default_factory=dict)  # model -> refusal, until a ping shows matching hashes
    reply_bytes: Dict[str, int] = field(default_factory=dict)  # model -> last reply size

    def up_for(self, model: str) -> bool:
        return self.breaker.is_up() and model not in self.refused


class Dispatcher:
    """Decides, runs and records every input. See the module docstring for the threads.

    Args:
        models: loaded models by name (:class:`~edged.offload.types.ModelLike`: ``predict(x)``; with a manifest
            ``entry``, also ``run(feeds)`` and ``entry.model_hash``).
        config: every plain setting (:class:`~edged.offload.types.DispatcherConfig`), or just the policies by
            model name (``"*"`` = default) with the other settings at their defaults.
        sink: called with one JSON-ready dict per input (serialised: never concurrently).
        fog: fog back end, or ``None`` for local only.
        link: link/fog estimator (a fresh :class:`LinkEstimator` if ``None``).
        nodes: several fog nodes instead of ``fog``/``link``/``breaker`` (:class:`FogNode`, each with its own
            estimator and breaker): an input is compared with the best node for it, and an offload that fails is
            sent once more to the next-best healthy node before it falls back here.
        energy_fn: ``(t0, t1) -> mJ`` over a monotonic window, or ``None``.
        activity: :class:`~edged.offload.types.ActivityLike` (kinds ``local`` and ``radio``), or ``None``.
        power: :class:`~edged.offload.types.PowerLike` (learned W per activity), or ``None``.
        clock: monotonic clock (s); ``Sample.t_arrival`` must use the same clock.
        breaker: circuit breaker (default K=3 failures, M=2 probes, ``config.probe_interval_s`` between probes).
        local: local execution estimator (default: seeded with ``config.local_exec_us`` or else ``wcet_us``).
        sink_many: optional ``sink`` for a list of records (one write for a batch), e.g. ``JsonlWriter.write_many``.
        on_results: optional ``(records, outputs)`` callback, called after the records are written, with each
            record's raw model outputs (output name -> array, batch axis removed; ``None`` for an input without
            a result): what result sinks publish. Must not block.
        state: per-(sender, model) recurrent state for stateful models (a fresh :class:`StateStore` if None).
        **settings: :class:`~edged.offload.types.DispatcherConfig` fields that override ``config``'s
            (``wcet_us=...``, ``max_batch=...``); an unknown one is a :class:`ConfigError`.
    """

    def __init__(self, models: Mapping[str, ModelLike],
                 config: Union[DispatcherConfig, Mapping[str, str], None] = None,
                 sink: Optional[Callable[[Dict[str, Any]], None]] = None, *,
                 fog: Optional[FogBackend] = None, link: Optional[LinkEstimator] = None,
                 energy_fn: Optional[Callable[[float, float], Optional[float]]] = None,
                 activity: Optional[ActivityLike] = None, power: Optional[PowerLike] = None,
                 clock: Callable[[], float] = time.monotonic, breaker: Optional[CircuitBreaker] = None,
                 local: Optional[LocalEstimator] = None,
                 sink_many: Optional[Callable[[List[Dict[str, Any]]], None]] = None,
                 on_results: Optional[Callable[[List[Dict[str, Any]], Sequence[Optional[Outputs]]], None]] = None,
                 state: Optional[StateStore] = None, nodes: Optional[Sequence[FogNode]] = None,
                 **settings: Any) -> None:
        if config is None:
            config = DispatcherConfig()
        elif not isinstance(config, DispatcherConfig):  # the policies alone
            config = DispatcherConfig(policies=config)
        if settings:
            config = config.replace(**settings)
        if sink is None:
            raise ConfigError("a dispatcher needs a sink for its records")
        self.config = cfg = config
        self.models = dict(models)
        self.policies = dict(cfg.policies)
        self.default_policy = cfg.default_policy
        self.sink = sink
        if nodes:
            self.nodes: List[FogNode] = list(nodes)
        elif fog is not None:
            self.nodes = [FogNode(name=str(getattr(fog, "node", None) or getattr(fog, "endpoint", None) or "fog"),
                                  backend=fog, link=link or LinkEstimator(clock=clock),
                                  breaker=breaker or CircuitBreaker(probe_interval_s=cfg.probe_interval_s,
                                                                    clock=clock))]
        else:
            self.nodes = []
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ConfigError(f"fog node names must differ: {', '.join(names)}")
        # the first node's parts, by their single-node names (one node: the whole fog)
        self.fog = self.nodes[0].backend if self.nodes else None
        self.link = self.nodes[0].link if self.nodes else (link or LinkEstimator(clock=clock))
        self.wcet_us = dict(cfg.wcet_us)
        self.objective = cfg.objective
        self.max_local_queue = cfg.max_local_queue
        self.max_batch = cfg.max_batch
        self.sink_many = sink_many
        self._pending_us = 0.0  # local work decided in the current submit_many, not yet queued (router thread)
        self.fog_timeout_s = cfg.fog_timeout_s
        self.energy_fn = energy_fn
        self.activity = activity
        self.power = power
        self.clock = clock
        self.breaker = self.nodes[0].breaker if self.nodes else (
            breaker or CircuitBreaker(probe_interval_s=cfg.probe_interval_s, clock=clock))
        seeds = dict(self.wcet_us)
        seeds.update(cfg.local_exec_us)
        self.local = local or LocalEstimator(seeds)
        self.probe_interval_s = cfg.probe_interval_s
        self.probe_pad_bytes = cfg.probe_pad_bytes
        self.hashes: Dict[str, Optional[str]] = {}
        for name, m in self.models.items():
            h = cfg.model_hashes.get(name)
            if h is None:
                h = getattr(m, "model_hash", None) or getattr(getattr(m, "entry", None), "model_hash", None)
            self.hashes[name] = h
        self._model_locks = {name: threading.Lock() for name in self.models}
        self.on_results = on_results
        self.state = state or StateStore()
        self._state_lock = threading.Lock()
        self._state_busy: set = set()  # (sender, model) keys with an input of a stateful model unrecorded
        self._state_parked: Dict[Tuple[str, str], Deque[_Job]] = {}
        #: name -> the model's manifest entry, when it has one (LoadedModel.entry); test doubles may not
        self._entries: Dict[str, Any] = {n: getattr(m, "entry", None) for n, m in self.models.items()}
        #: models served by predict(): one data input, one (non-state) output, no state. The others run
        #: through run() with every input and output; they stay local until the fog protocol carries them all.
        self._simple = {n: e is None or (len(e.inputs) == 1 and len(e.outputs) == 1 and not e.stateful)
                        for n, e in self._entries.items()}
        self._dynamic = {n: e is not None and bool(e.is_dynamic) for n, e in self._entries.items()}
        self._stateful = {n: e is not None and bool(e.stateful) for n, e in self._entries.items()}
        self.wcet_by_shape = {k: dict(v) for k, v in cfg.wcet_by_shape.items()}
        self.p50_by_shape = {k: dict(v) for k, v in cfg.p50_by_shape.items()}
        self.risk_k = cfg.risk_k
        self.joint = cfg.joint
        self.makespan_weight = cfg.makespan_weight
        self._refused: Dict[str, str] = self.nodes[0].refused if self.nodes else {}
        self._reply_bytes: Dict[str, int] = self.nodes[0].reply_bytes if self.nodes else {}
        self._cv = threading.Condition()
        self._queue: Deque[_Job] = deque()
        self._fallbacks: Deque[_Job] = deque()
        self._queued_us = 0.0
        self._busy: Dict[int, tuple] = {}  # worker index -> (t_start, est_us)
        self._outstanding: Dict[int, _Job] = {}
        self._sink_lock = threading.Lock()
        self._stop = threading.Event()
        self._closing = False
        self.counts: Dict[str, int] = {d: 0 for d in DECISIONS}
        self.per_model: Dict[str, int] = {}
        self.errors = 0
        self.ingest_rejected = 0  # records of messages a source refused (never accepted)
        self.sink_failures = 0  # records the sink raised on: counted as lost, never as written
        self._seq = 0
        self._workers = [threading.Thread(target=self._worker, args=(i,), name=f"dispatch-local-{i}", daemon=True)
                         for i in range(cfg.local_workers)]
        for t in self._workers:
            t.start()
        self._probers = [threading.Thread(target=self._probe_loop, args=(node,), daemon=True,
                                          name="dispatch-probe" + (f"-{node.name}" if len(self.nodes) > 1 else ""))
                         for node in self.nodes]
        for t in self._probers:
            t.start()

    # ---- public --------------------------------------------------------------------------------
    def policy_for(self, model: str) -> str:
        return self.policies.get(model, self.default_policy)

    def submit(self, sample: SampleLike) -> None:
        """Decide and start one input. May block while the local queue is full; never drops."""
        self.submit_many([sample])

    def submit_many(self, samples: Sequence[SampleLike]) -> None:
        """Decide and start several inputs (e.g. everything the router found queued).

        Each input is decided from its own numbers, in order; an input decided to run locally
        counts in the local backlog (``local_queue_us``) of the inputs after it, exactly as if
        submitted one by one. Local inputs enter the local queue under one lock round.
        """
        local: List[_Job] = []
        base_us = self._queued_and_running_us()
        defer = self.joint and len(samples) > 1 and self.fog is not None
        together: List[_Job] = []  # adaptive inputs waiting for the joint decision
        try:
            for sample in samples:
                job: Optional[_Job] = None
                try:
                    job = self._decide_one(sample, base_us, defer=defer)
                    if job is None:
                        continue
                    if job.decision is None:
                        together.append(job)
                        continue
                    self._start(job, local)
                except Exception as exc:  # this input gets an error record; the others go on
                    log.exception("submit failed for %s seq %s", getattr(sample, "model", "?"),
                                  getattr(sample, "seq", "?"))
                    if job is None:
                        job = _Job(sample=sample, policy=self.policy_for(sample.model), ts=time.time())
                        self._track(job)
                    self._emit(job, "rejected", reason="internal error", error=f"{type(exc).__name__}: {exc}")
            if together:
                for job in self._decide_together(together):  # in start order: shortest first per resource
                    try:
                        self._start(job, local)
                    except Exception as exc:  # this input gets an error record; the others go on
                        log.exception("submit failed for %s seq %s", job.sample.model, getattr(job.sample, "seq", "?"))
                        self._emit(job, "rejected", reason="internal error", error=f"{type(exc).__name__}: {exc}")
        finally:
            if local and self._claim_idle_worker(local):
                self._run_inline(local)  # nothing queued, no worker busy, short: no hand-off buys anything
            else:
                self._enqueue_local_many(local)

    def _start(self, job: _Job, local: List[_Job]) -> None:
        """Send a decided input to the fog, or add it to ``local`` (queued by the caller)."""
        if job.decision is not None and job.decision.decision == "offload":
            self._offload(job)
        else:
            est = job.inputs.local_exec_us if job.inputs is not None else None
            job.est_us = est if est is not None else (self.local.exec_us(job.sample.model) or 0.0)
            local.append(job)
            self._pending_us += job.est_us

    def _decide_together(self, jobs: List[_Job]) -> List[_Job]:
        """Decide ``adaptive`` inputs that wait together with :func:`decide_batch`; each job keeps the numbers
        the joint schedule saw, so its record replays alone. Returns the jobs in the order to start them
        (:func:`start_order`: the schedule assumed it)."""
        if self._local_dominates(jobs):
            return self._decide_in_turn(jobs)
        try:
            planned = decide_batch("adaptive", [j.inputs or _NO_INPUTS for j in jobs], self.makespan_weight)
        except Exception as exc:  # a bug in the joint plan must not lose an input
            log.exception("joint decision failed for %d inputs", len(jobs))
            for j in jobs:
                j.decision = Decision("local", f"decision failed: {exc}")
            return jobs
        for n, (job, (seen, d)) in enumerate(zip(jobs, planned)):
            job.inputs, job.decision, job.joint = seen, d, (len(jobs), n)
            self._refusal_reason(job)
        order = start_order([seen for seen, _ in planned], [d.decision == "offload" for _, d in planned])
        return [jobs[n] for n in order]

    @staticmethod
    def _local_dominates(jobs: Sequence[_Job]) -> bool:
        """True when running every one of ``jobs`` here, in turn, is the best joint plan, so the search can be
        skipped: even the soonest any of them could finish on the fog (alone, mean estimates: a lower bound of
        what the risk-adjusted plan compares) is later than the last would finish here, by more than what taking
        one input off the local queue could save all the others (n x the longest local run)."""
        soonest = float("inf")
        total = longest = 0.0
        backlog: Optional[float] = None
        for job in jobs:
            i = job.inputs
            if i is None:
                return False
            if backlog is None:
                backlog = i.local_queue_us
            run = i.local_exec_us if i.local_exec_us is not None else i.wcet_us
            if run is None:
                return False
            total += run
            longest = max(longest, run)
            if i.fog_up and i.t_l_in_us is not None and i.t_f_us is not None:
                soonest = min(soonest, i.t_l_in_us + (i.fog_queue_us or 0.0) + i.t_f_us + (i.t_l_out_us or 0.0))
        return soonest >= (backlog or 0.0) + total + len(jobs) * longest

    def _decide_in_turn(self, jobs: List[_Job]) -> List[_Job]:
        """Each input decided alone, in order, the local queue grown by the earlier local ones (what
        submit_many does without joint decisions); each record keeps the numbers its decision saw."""
        extra = 0.0
        for job in jobs:
            i = job.inputs or _NO_INPUTS
            if extra:
                i = copy.copy(i)
                object.__setattr__(i, "local_queue_us", _r(i.local_queue_us + extra))
            job.inputs = i
            try:
                job.decision = decide(job.policy, i)
            except Exception as exc:  # a bug in a policy must not lose the input
                log.exception("decision failed for %s", job.sample.model)
                job.decision = Decision("local", f"decision failed: {exc}")
            if job.decision.decision == "local":
                run = i.local_exec_us if i.local_exec_us is not None else i.wcet_us
                extra += run or 0.0
            self._refusal_reason(job)
        return jobs

    def _decide_one(self, sample: Any, backlog_base_us: Optional[float] = None,
                    defer: bool = False) -> Optional[_Job]:
        """Track one input and decide it; None if it was already recorded (rejected). With ``defer``, an
        ``adaptive`` input only gets its numbers (``decision`` stays None: :meth:`_decide_together` decides)."""
        job = _Job(sample=sample, policy=self.policy_for(sample.model), ts=time.time())
        self._track(job)
        if self._closing and self._stop.is_set():
            self._emit(job, "rejected", reason="dispatcher closed", error="dispatcher closed")
            return None
        if sample.model not in self.models:
            self._emit(job, "rejected", reason="unknown model",
                       error=f"model {sample.model!r} is not loaded (loaded: {', '.join(sorted(self.models))})")
            return None
        if self._park_if_busy(job):
            return None  # decided when this sender's previous input of this stateful model is recorded
        self._decide(job, backlog_base_us, defer)
        return job

    def _decide(self, job: _Job, backlog_base_us: Optional[float] = None, defer: bool = False) -> None:
        sample = job.sample
        try:
            wcet = local_exec = None
            if self._dynamic.get(sample.model):  # the WCET of this input's shape, not of the model
                from edged.profile import estimate_wcet_us

                job.shape = self._entries[sample.model].shape_key(getattr(sample, "feeds", None) or sample.array)
                wcet, job.wcet_scaled = estimate_wcet_us(self.wcet_by_shape.get(sample.model, {}), job.shape)
                local_exec, _ = estimate_wcet_us(self.p50_by_shape.get(sample.model, {}), job.shape)
            job.inputs = self._inputs(sample, backlog_base_us, wcet, local_exec, job)
            if defer and job.policy == "adaptive" and job.inputs.objective == "latency":
                return
            job.decision = decide(job.policy, job.inputs)
        except Exception as exc:  # a bug in estimation must not lose the input
            log.exception("decision failed for %s seq %s", sample.model, sample.seq)
            job.decision = Decision("local", f"decision failed: {exc}")
        self._refusal_reason(job)

    def _refusal_reason(self, job: _Job) -> None:
        """"fog down" for a model the reachable nodes refuse (hash mismatch) says so."""
        d = job.decision
        model = job.sample.model
        if (d is not None and d.reason == "fog down"
                and any(model in n.refused and n.breaker.is_up() for n in self.nodes)):
            job.decision = dataclasses.replace(d, reason="fog refuses this model's hash")

    # ---- stateful models: one input per (sender, model) at a time -------------------------------
    def _park_if_busy(self, job: _Job) -> bool:
        """A stateful model's input waits while the same sender's previous input is unrecorded: its state
        input is that input's state output, wherever it ran. True if ``job`` was parked."""
        if not self._stateful.get(job.sample.model):
            return False
        key = (self._sender(job.sample), job.sample.model)
        with self._state_lock:
            if key in self._state_busy:
                self._state_parked.setdefault(key, deque()).append(job)
                return True
            self._state_busy.add(key)
        job.state_key = key
        return False

    def _release(self, jobs: Sequence[_Job]) -> None:
        """After ``jobs`` are recorded: start each one's next parked input (same sender, stateful model)."""
        for job in jobs:
            key = job.state_key
            if key is None:
                continue
            with self._state_lock:
                q = self._state_parked.get(key)
                nxt = q.popleft() if q else None
                if q is not None and not q:
                    del self._state_parked[key]
                if nxt is None:
                    self._state_busy.discard(key)
            if nxt is None:
                continue
            nxt.state_key = key
            try:
                self._decide(nxt)
                if nxt.decision is not None and nxt.decision.decision == "offload":
                    self._offload(nxt)
                else:
                    nxt.est_us = self.local.exec_us(nxt.sample.model) or 0.0
                    with self._cv:  # the priority queue: this thread must not wait for room
                        self._fallbacks.append(nxt)
                        self._queued_us += nxt.est_us
                        self._cv.notify()
            except Exception as exc:  # noqa: BLE001 - this input gets an error record; the chain goes on
                log.exception("starting a parked input failed")
                self._emit(nxt, "rejected", reason="internal error", error=f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _sender(sample: Any) -> str:
        return str(getattr(sample, "sender", None) or getattr(sample, "source", "") or "")

    def record_rejected(self, sample: Any, reason: str, detail: Optional[str] = None) -> None:
        """Write a ``rejected`` record for an input refused after it was accepted (e.g. queue drop-oldest)."""
        job = _Job(sample=sample, policy=self.policy_for(sample.model), ts=time.time())
        self._track(job)
        self._emit(job, "rejected", reason=reason, error=detail or reason)

    def record_rejection(self, rejection: Any) -> None:
        """Write the ``rejected`` record of a message a source refused whose header named a loaded model.

        ``rejection`` carries ``model``, ``reason``, ``detail``, ``source``, ``sender``, ``seq``,
        ``t_arrival``, ``sender_ts`` and ``meta`` (see :class:`edged.sources.base.Rejection`). Such
        records are counted apart (``ingest_rejected``): the input was never accepted, so they do not
        enter the accepted = decided balance.
        """
        with self._sink_lock:
            self.ingest_rejected += 1
        self.record_rejected(rejection, rejection.reason, detail=getattr(rejection, "detail", None) or None)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Finish every submitted input (one record each), then stop threads.

        Inputs still unfinished after ``timeout_s`` get an error record. Returns True if all
        finished normally. The fog back end is not closed (its owner closes it).
        """
        self._closing = True
        deadline = time.monotonic() + timeout_s
        clean = True
        with self._cv:
            while self._outstanding and time.monotonic() < deadline:
                self._cv.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            leftover = list(self._outstanding.values())
        for job in leftover:
            clean = False
            where = job.decision.decision if job.decision else "rejected"
            self._emit(job, "fallback" if job.fog_error else where,
                       error=f"dispatcher closed before the input finished (after {timeout_s:.1f}s)")
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        for t in self._workers:
            t.join(2.0)
        for t in self._probers:
            t.join(2.0)
        return clean

    def stats(self) -> Dict[str, Any]:
        """Counters for systemd ``STATUS=`` and the log: decisions, per model, in flight, breaker."""
        with self._cv:
            in_flight = len(self._outstanding)
            qlen = len(self._queue) + len(self._fallbacks)
        return {"decisions": dict(self.counts), "models": dict(self.per_model), "in_flight": in_flight,
                "local_queue": qlen, "errors": self.errors, "ingest_rejected": self.ingest_rejected,
                "sink_failures": self.sink_failures,
                "fog": (None if not self.nodes else self.breaker.state if len(self.nodes) == 1
                        else ", ".join(f"{n.name} {n.breaker.state}" for n in self.nodes)),
                "fogs": {n.name: {"state": n.breaker.state, "refused_models": sorted(n.refused)} for n in self.nodes},
                "refused_models": sorted({m for n in self.nodes for m in n.refused})}

    def status_line(self) -> str:
        s = self.stats()
        d = s["decisions"]
        return (f"local={d['local']} offload={d['offload']} fallback={d['fallback']} rejected={d['rejected']} "
                f"in_flight={s['in_flight']} fog={s['fog'] or 'none'}")

    # ---- decision ------------------------------------------------------------------------------
    def _local_backlog_us(self, base_us: Optional[float] = None) -> float:
        """Expected wait before a new local input starts (µs): queued + running work left + work decided
        in this submit_many but not yet queued, spread over the workers. ``base_us`` (queued + running,
        taken once per batch by submit_many) saves a lock round per input."""
        if base_us is None:
            base_us = self._queued_and_running_us()
        return (base_us + self._pending_us) / max(1, len(self._workers))

    def _queued_and_running_us(self) -> float:
        now = self.clock()
        with self._cv:
            busy = sum(max(0.0, est - (now - t0) * 1e6) for t0, est in self._busy.values())
            return self._queued_us + busy

    def _inputs(self, sample: Any, backlog_base_us: Optional[float] = None, wcet_us: Optional[float] = None,
                local_exec_us: Optional[float] = None, job: Optional[_Job] = None) -> DecisionInputs:
        """The numbers one decision is made from. ``wcet_us``/``local_exec_us`` override the model's (a dynamic
        model's values for this input's shape). With several fog nodes, the fog's numbers are those of the best
        node for this input (``job.node``)."""
        model = sample.model
        if self.fog is None and self.power is None and getattr(sample, "deadline_ms", None) is None:
            # local only, no power model, no deadline: the other numbers are None (the hot path of a local edge)
            wcet = wcet_us if wcet_us is not None else self.wcet_us.get(model)
            exec_us = local_exec_us if local_exec_us is not None else self.local.exec_us(model)
            return DecisionInputs(wcet_us=None if wcet is None else _r(wcet),
                                  local_exec_us=None if exec_us is None else _r(exec_us),
                                  local_queue_us=_r(self._local_backlog_us(backlog_base_us)) or 0.0,
                                  objective=self.objective)
        fog_up = False
        t_l_in = t_l_out = t_f = t_l_dev = t_f_dev = t_l_tx = None
        fog_queue: Optional[float] = None
        if self.nodes:
            # one lock round per node: T_L with this edge's bytes ahead (and a collapse an overdue request shows),
            # the fog queue as the last report drained plus this edge's own work ahead, the dispersions
            index, nums = self._best_node(model, int(sample.nbytes) + HEADER_OVERHEAD_BYTES)
            if job is not None:
                job.node = index
            fog_up = self.nodes[index].up_for(model)
            t_l_in, t_l_out, t_f, fog_queue, t_l_dev, t_f_dev, t_l_tx = nums
        deadline_us = None
        if getattr(sample, "deadline_ms", None) is not None:
            deadline_us = float(sample.deadline_ms) * 1000.0 - (self.clock() - sample.t_arrival) * 1e6
        p = self.power
        return DecisionInputs(
            wcet_us=_r(wcet_us if wcet_us is not None else self.wcet_us.get(model)),
            local_exec_us=_r(local_exec_us if local_exec_us is not None else self.local.exec_us(model)),
            local_queue_us=_r(self._local_backlog_us(backlog_base_us)) or 0.0,
            t_l_in_us=_r(t_l_in), t_l_out_us=_r(t_l_out),
            t_f_us=_r(t_f), fog_queue_us=_r(fog_queue), fog_up=fog_up, deadline_us=_r(deadline_us),
            objective=self.objective,
            p_active_w=_r(getattr(p, "p_active_w", None), 4), p_idle_w=_r(getattr(p, "p_idle_w", None), 4),
            p_radio_w=_r(getattr(p, "p_radio_w", None), 4),
            local_dev_us=_r(self.local.dev_us(model)), t_l_dev_us=_r(t_l_dev), t_f_dev_us=_r(t_f_dev),
            risk_k=self.risk_k, t_l_tx_us=_r(t_l_tx))

    def _best_node(self, model: str, nbytes: int, exclude: int = -1) -> Tuple[int, Any]:
        """(index, offload numbers) of the node an offload of ``model`` would finish soonest on, among the nodes
        up for it (except ``exclude``); the first such node while none has estimates yet; else node 0 (or the
        first node that is not ``exclude``), which the decision then sees as down."""
        best: Optional[Tuple[float, int, Any]] = None
        fallback: Optional[Tuple[int, Any]] = None
        for index, node in enumerate(self.nodes):
            if index == exclude:
                continue
            nums = node.link.offload_numbers(nbytes, node.reply_bytes.get(model, DEFAULT_REPLY_BYTES), model)
            if fallback is None:
                fallback = (index, nums)
            if len(self.nodes) == 1:
                return index, nums
            if not node.up_for(model):
                continue
            t_l_in, t_l_out, t_f, fog_queue = nums[0], nums[1], nums[2], nums[3]
            total = (float("inf") if t_l_in is None or t_f is None
                     else t_l_in + (fog_queue or 0.0) + t_f + (t_l_out or 0.0))
            if best is None or total < best[0]:
                best = (total, index, nums)
        if best is not None:
            return best[1], best[2]
        if fallback is None:
            raise LookupError("no fog node left to try")
        return fallback

    # ---- offload path ----------------------------------------------------------------------------
    def _offload(self, job: _Job) -> None:
        node = self.nodes[job.node]
        sample = job.sample
        job.radio_token = self._begin("radio")
        job.t_sent = self.clock()
        model = sample.model
        # announced before the send: the estimator queues its bytes on the uplink and its work on the fog
        node.link.on_send(job.key, int(sample.nbytes) + HEADER_OVERHEAD_BYTES, model,
                          node.reply_bytes.get(model, DEFAULT_REPLY_BYTES))
        try:
            payload = sample.array if self._simple.get(model, True) else self._feeds(sample)
            fut = node.backend.submit(model, payload, self.hashes.get(model), self.fog_timeout_s)
        except Exception as exc:  # a back end that cannot even take the request: run it here
            node.link.on_fail(job.key)
            self._end(job.radio_token)
            self._on_fog_failure(job, FogFailure(f"submit failed: {exc}"))
            return
        fut.add_done_callback(functools.partial(self._on_fog_done, job, node))

    def _on_fog_done(self, job: _Job, node: FogNode, fut: Future[FogReply]) -> None:
        self._end(job.radio_token)
        exc = fut.exception()
        if exc is not None:
            node.link.on_fail(job.key, timed_out=isinstance(exc, FogTimeout))
            self._on_fog_failure(job, exc)
            return
        reply = fut.result()
        node.breaker.record_success()
        model = job.sample.model
        node.reply_bytes[model] = reply.bytes_in
        node.link.observe_round_trip(reply.bytes_out, reply.bytes_in, reply.rtt_us, reply.t_f_us, reply.queue_us,
                                     model=model, key=job.key,
                                     fog_queue_est_us=getattr(reply, "queue_est_us", None))
        job.t_f_source = getattr(reply, "t_f_source", None)
        t_done = self.clock()
        energy = self._energy(job.t_sent, t_done)
        try:
            if isinstance(reply.outputs, dict):  # every output by name (v2); state comes back with them
                entry = self._entries[model]
                if entry.stateful:
                    self.state.update(self._sender(job.sample), entry, reply.outputs)
                outputs = _rows(reply.outputs)
            else:
                outputs = self._one_output(model, np.asarray(reply.outputs))
            result, summary = self._summarize(model, outputs)
        except Exception as exc:
            self._emit(job, "offload", error=f"fog output unusable: {exc}", exec_us=reply.t_f_us)
            return
        self._emit(job, "offload", t_done=t_done, exec_us=reply.t_f_us,
                   transfer_us=max(0.0, reply.rtt_us - reply.t_f_us - reply.queue_us), result=result,
                   energy_mj=energy, outputs=outputs, summary=summary)

    def _on_fog_failure(self, job: _Job, exc: BaseException) -> None:
        """An offload failed on its node: that node learns it (refusal, breaker); the input is sent once more to
        the next-best node up for its model, if there is one and it has not been tried, else runs here."""
        model = job.sample.model
        node = self.nodes[job.node]
        if isinstance(exc, FogRefused):
            if model not in node.refused:
                log.error("fog %s refused model %s: %s (not sending it there from now on)", node.name, model, exc)
            node.refused[model] = str(exc)
        elif not isinstance(exc, FogError):  # an error the fog answered itself means it is alive
            self._fog_failed(node, str(exc))
        error = f"{type(exc).__name__}: {exc}"
        if job.failover is None and len(self.nodes) > 1 and not job.recorded and not self._stop.is_set():
            try:
                index, _ = self._best_node(model, int(job.sample.nbytes) + HEADER_OVERHEAD_BYTES, exclude=job.node)
            except LookupError:
                index = -1
            if index >= 0 and self.nodes[index].up_for(model):
                job.failover = f"{node.name}: {error}"
                log.info("fog %s failed for %s seq %s (%s): sending it to %s", node.name, model,
                         getattr(job.sample, "seq", "?"), error, self.nodes[index].name)
                job.node = index
                self._offload(job)
                return
        job.fog_error = error if job.failover is None else f"{job.failover}; {node.name}: {error}"
        with self._cv:
            if job.recorded:
                return
            job.est_us = self.local.exec_us(model) or 0.0
            self._fallbacks.append(job)
            self._queued_us += job.est_us
            self._cv.notify()

    # ---- local path ------------------------------------------------------------------------------
    def _claim_idle_worker(self, jobs: List[_Job]) -> bool:
        """True (and the caller counts as a busy worker) when no local input waits, no worker is busy and the
        inputs are expected to take at most :data:`INLINE_MAX_US`. Longer work goes to a worker, so the caller
        (a source's thread) goes back to receiving: what arrives meanwhile is stamped when it arrives, and seen
        in the local backlog of the next decisions, instead of waiting unseen in a socket buffer."""
        est = 0.0
        for job in jobs:
            est += job.est_us
        if est > INLINE_MAX_US:
            return False
        with self._cv:
            if self._queue or self._fallbacks or self._busy or self._stop.is_set():
                return False
            self._busy[INLINE] = (self.clock(), est)
            self._pending_us = 0.0
            return True

    def _run_inline(self, jobs: List[_Job]) -> None:
        """Run local inputs on the caller's thread (the inline fast path), in order, same-model neighbours as
        one batch exactly as a worker would; each still gets exactly one record."""
        try:
            pending = deque(jobs)
            while pending:
                batch = _next_batch(pending, self._simple, self._dynamic, self.max_batch)
                try:
                    if len(batch) == 1:
                        self._run_local(batch[0])
                    else:
                        self._run_local_batch(batch)
                except Exception as exc:  # _emit is idempotent: a recorded input is skipped
                    log.exception("local run failed")
                    for job in batch:
                        self._emit(job, "fallback" if job.fog_error else "local", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._cv:
                self._busy.pop(INLINE, None)
                if self._queue or self._fallbacks:  # arrived meanwhile (e.g. a fallback): a worker takes them
                    self._cv.notify()

    def _enqueue_local_many(self, jobs: List[_Job]) -> None:
        if not jobs:
            self._pending_us = 0.0
            return
        with self._cv:
            for job in jobs:
                while len(self._queue) >= self.max_local_queue and not self._stop.is_set():
                    self._cv.notify_all()  # make sure the workers see what is already queued
                    self._cv.wait(0.1)  # backpressure: the caller waits, nothing is dropped
                self._queue.append(job)
                self._queued_us += job.est_us
            self._pending_us = 0.0
            self._cv.notify_all()

    def _worker(self, index: int) -> None:
        while True:
            with self._cv:
                while not self._fallbacks and not self._queue:
                    if self._stop.is_set():
                        return
                    self._cv.wait(0.2)
                batch = self._take_batch()
                est = sum(job.est_us for job in batch)
                self._queued_us = max(0.0, self._queued_us - est)
                self._busy[index] = (self.clock(), est)
                self._cv.notify_all()  # wakes a submit waiting for room
            try:
                if len(batch) == 1:
                    self._run_local(batch[0])
                else:
                    self._run_local_batch(batch)
            except Exception as exc:  # never let a worker die: each input gets an error record
                log.exception("local run failed")
                for job in batch:  # _emit is idempotent: inputs already recorded are skipped
                    self._emit(job, "fallback" if job.fog_error else "local", error=f"{type(exc).__name__}: {exc}")
            finally:
                with self._cv:
                    self._busy.pop(index, None)

    def _take_batch(self) -> List[_Job]:
        """Under ``_cv``: the next fallback, or the next local input plus the inputs of the same model
        queued right behind it (up to ``max_batch``). Batching only takes what is already waiting, so it
        never delays an input; under load it runs one inference per batch instead of one per input."""
        if self._fallbacks:
            return [self._fallbacks.popleft()]
        return _next_batch(self._queue, self._simple, self._dynamic, self.max_batch)

    def _run_local(self, job: _Job) -> None:
        sample = job.sample
        where = "fallback" if job.fog_error else "local"
        with self._cv:
            if job.recorded:
                return
        model = sample.model
        token = self._begin("local")
        t0 = self.clock()
        try:
            with self._model_locks[model]:  # also keeps a stateful model's inputs in queue order
                outputs = self._infer_one(model, sample)
        except Exception as exc:
            self._end(token)
            self._emit(job, where, error=f"local inference failed: {type(exc).__name__}: {exc}")
            return
        t1 = self.clock()
        self._end(token)
        exec_us = (t1 - t0) * 1e6
        self.local.observe(model, exec_us)
        try:
            result, summary = self._summarize(model, outputs)
        except Exception as exc:
            self._emit(job, where, t_done=t1, exec_us=exec_us, error=f"output unusable: {type(exc).__name__}: {exc}")
            return
        self._emit(job, where, t_done=t1, exec_us=exec_us, result=result, energy_mj=self._energy(t0, t1),
                   outputs=outputs, summary=summary)

    def _run_local_batch(self, jobs: List[_Job]) -> None:
        """One batched inference for several queued inputs of one model; each still gets its own record.

        ``exec_us`` and ``energy_mj`` of each record are its share of the batch (batch time / n), and
        the record's ``batch`` field says how many inputs shared the run.
        """
        with self._cv:
            jobs = [j for j in jobs if not j.recorded]
        if not jobs:
            return
        model = jobs[0].sample.model
        token = self._begin("local")
        t0 = self.clock()
        try:
            stacked = np.stack([j.sample.array for j in jobs])
            with self._model_locks[model]:
                out = self.models[model].predict(stacked, validate=False)  # sources validated each input
            rows = [self._one_output(model, row) for row in out]
            results = self._summarize_rows(model, out, rows)
        except Exception as exc:
            self._end(token)
            for j in jobs:
                self._emit(j, "fallback" if j.fog_error else "local",
                           error=f"local inference failed: {type(exc).__name__}: {exc}")
            return
        t1 = self.clock()
        self._end(token)
        n = len(jobs)
        share_us = (t1 - t0) * 1e6 / n
        self.local.observe(model, share_us)
        energy = self._energy(t0, t1)
        share_mj = None if energy is None else energy / n
        recs, done, outs = [], [], []
        for j, outputs, (result, summary) in zip(jobs, rows, results):
            rec = self._record(j, "fallback" if j.fog_error else "local", t_done=t1, exec_us=share_us,
                               result=result, energy_mj=share_mj, batch=n, summary=summary)
            if rec is not None:
                recs.append(rec)
                done.append(j)
                outs.append(outputs)
        self._write(recs, done, outs)

    # ---- probes ----------------------------------------------------------------------------------
    def _probe_loop(self, node: FogNode) -> None:
        """One per fog node: probes that bring a node that is down back, and keep an idle node's estimates fresh."""
        breaker, link = node.breaker, node.link
        while not self._stop.wait(min(0.05, self.probe_interval_s)):
            try:
                if not breaker.is_up():
                    if breaker.probe_due():
                        err = self._probe(node, 0) or self._probe(node, self.probe_pad_bytes)
                        breaker.record_probe(err is None, err or "")
                elif (kind := link.probe_kind(self.probe_interval_s)) is not None:
                    # "full": stale, or a collapse / change to learn; "ping": nothing came back for a while
                    err = self._probe(node, 0) or (self._probe(node, self.probe_pad_bytes) if kind == "full"
                                                   else None)
                    if err is not None:
                        self._fog_failed(node, err)
                    elif self._stop.wait(self.probe_interval_s):
                        return
            except Exception:  # the probe loop must survive anything
                log.exception("probe of fog %s failed unexpectedly", node.name)

    def _fog_failed(self, node: FogNode, error: str) -> None:
        if node.breaker.record_failure(error):
            node.link.forget_link()  # the link that comes back is learned afresh from the probes

    def _probe(self, node: FogNode, pad: int) -> Optional[str]:
        """One ping of ``node``; feeds its estimator; returns None on success or the error text."""
        link = node.link
        key = ("probe", self.clock())  # announced like an offload: the bytes queued ahead of it count in the fit
        link.on_send(key, PING_BYTES + pad, None, PING_BYTES + pad)
        try:
            pong = node.backend.ping(timeout_s=min(self.fog_timeout_s, 2.0), pad_bytes=pad)
        except FogFailure as exc:
            link.on_fail(key)
            return f"probe: {type(exc).__name__}: {exc}"
        link.observe_round_trip(pong.bytes_out, pong.bytes_in, pong.rtt_us, key=key)
        link.observe_fog_queue(pong.queue_est_us, workers=pong.workers or None,
                               age_us=link.t_l_us(pong.bytes_in) or 0.0)  # made a one-way trip ago
        for name, info in pong.models.items():
            if name not in self.models:
                continue
            if info.get("t_f_us") is not None:
                link.observe_fog_report(name, float(info["t_f_us"]))
            if name in node.refused and info.get("model_hash") == self.hashes.get(name):
                log.info("fog %s now serves the same %s as this edge: offloading it again", node.name, name)
                node.refused.pop(name, None)
        return None

    # ---- records ---------------------------------------------------------------------------------
    def _track(self, job: _Job) -> None:
        with self._cv:
            self._seq += 1
            self._outstanding[self._seq] = job
            job.key = self._seq

    def _record(self, job: _Job, decision: str, reason: Optional[str] = None, t_done: Optional[float] = None,
              exec_us: Optional[float] = None, transfer_us: Optional[float] = None,
              result: Optional[Dict[str, Any]] = None, error: Optional[str] = None,
              energy_mj: Optional[float] = None, batch: int = 1,
              summary: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
        with self._cv:  # claimed here; it leaves _outstanding only once written (see _write)
            if job.recorded:
                return None
            job.recorded = True
        sample = job.sample
        i = job.inputs or _NO_INPUTS
        d = job.decision
        if reason is None:
            reason = d.reason if d else ""
            if decision == "fallback" and job.fog_error:
                reason = f"{reason}; fallback: {job.fog_error}"
        t_end = t_done if t_done is not None else self.clock()
        seq: Optional[int]
        meta: Optional[Dict[str, Any]]
        if type(sample) is Sample:  # the hot path: plain attribute reads (rejections carry fewer fields)
            seq, source, sender, sender_ts, meta = (sample.seq, sample.source, sample.sender, sample.sender_ts,
                                                    sample.meta)
        else:
            seq, source = getattr(sample, "seq", None), getattr(sample, "source", "")
            sender, sender_ts = getattr(sample, "sender", None), getattr(sample, "sender_ts", None)
            meta = getattr(sample, "meta", None)
        if d is not None:
            threshold, exp_local, exp_offload = d.threshold_us, d.expected_local_us, d.expected_offload_us
            threshold = None if threshold is None else _r(threshold)
            exp_local = None if exp_local is None else _r(exp_local)
            exp_offload = None if exp_offload is None else _r(exp_offload)
        else:
            threshold = exp_local = exp_offload = None
        # a copy of the key order with everything None, then only what this input has (~3x cheaper than a literal)
        rec = _RECORD_TEMPLATE.copy()
        rec["ts"] = round(job.ts, 6)
        rec["seq"] = seq
        rec["source"] = source
        rec["model"] = sample.model
        rec["policy"] = job.policy
        rec["decision"] = decision
        rec["reason"] = reason
        rec["wcet_us"] = i.wcet_us
        rec["local_exec_us"] = i.local_exec_us
        rec["local_queue_us"] = i.local_queue_us
        rec["fog_up"] = i.fog_up
        rec["objective"] = i.objective
        if i.t_l_in_us is not None or i.t_f_us is not None or i.fog_queue_us is not None or i.t_l_out_us is not None:
            rec["t_l_us"] = i.t_l_in_us
            rec["t_l_out_us"] = i.t_l_out_us
            rec["t_f_us"] = i.t_f_us
            rec["fog_queue_us"] = i.fog_queue_us
        if threshold is not None:
            rec["threshold_us"] = threshold
        if exp_local is not None:
            rec["expected_local_us"] = exp_local
        if exp_offload is not None:
            rec["expected_offload_us"] = exp_offload
        if i.deadline_us is not None:
            rec["deadline_us"] = i.deadline_us
        rec["latency_us"] = round((t_end - sample.t_arrival) * 1e6, 1)
        if exec_us is not None:
            rec["exec_us"] = _r(exec_us)
        if transfer_us is not None:
            rec["transfer_us"] = _r(transfer_us)
        if result is not None:
            rec["result"] = result
        if error is not None:
            rec["error"] = error
        if job.fog_error is not None:
            rec["fog_error"] = job.fog_error
        if energy_mj is not None:
            rec["energy_mj"] = _r(energy_mj, 4)
        rec["batch"] = batch
        if sender is not None:
            rec["sender"] = sender
        if sender_ts is not None:
            rec["sender_ts"] = sender_ts
        if meta:
            rec["meta"] = meta
        if summary is not None:  # every output's summary, for models whose result is more than one classifier
            rec["outputs"] = summary
        if job.shape is not None:
            rec["shape"] = job.shape
            rec["wcet_scaled"] = job.wcet_scaled
        if i.t_l_tx_us is not None or i.local_dev_us is not None or i.joint_local_us is not None:
            for name in RECORD_FIELDS_14:  # risk and joint numbers, when set: inputs_from_record reads them back
                value = getattr(i, name)
                if value is not None and not (name == "risk_k" and value == 0.0):
                    rec[name] = value
        if d is not None and d.compared_local_us is not None:
            rec["compared_local_us"], rec["compared_offload_us"] = _r(d.compared_local_us), _r(d.compared_offload_us)
        if job.joint is not None:
            rec["joint_n"], rec["joint_index"] = job.joint
        if self.nodes and job.inputs is not None:  # the node compared with (and, offloaded, the one that ran it)
            rec["fog"] = self.nodes[job.node].name
            if job.failover is not None:
                rec["failover"] = job.failover
            if job.t_f_source is not None:
                rec["t_f_source"] = job.t_f_source
        if i.objective == "energy":
            rec.update(p_active_w=i.p_active_w, p_idle_w=i.p_idle_w, p_radio_w=i.p_radio_w,
                       expected_local_mj=_r(d.expected_local_mj, 4) if d else None,
                       expected_offload_mj=_r(d.expected_offload_mj, 4) if d else None)
        return rec

    def _emit(self, job: _Job, decision: str, outputs: Optional[Outputs] = None, **kw: Any) -> None:
        """Finish one input: its record (once, whatever races) goes to the sink."""
        rec = self._record(job, decision, **kw)
        if rec is not None:
            self._write([rec], [job], [outputs])

    def _write(self, recs: List[Dict[str, Any]], jobs: List[_Job],
               outputs: Optional[Sequence[Optional[Outputs]]] = None) -> None:
        """Hand records to the sink (then their outputs to ``on_results``), then retire their jobs, so
        close() never returns before a line it waits for is written."""
        try:
            self._write_records(recs)
            if self.on_results is not None and recs:
                try:
                    self.on_results(recs, outputs if outputs is not None else [None] * len(recs))
                except Exception:  # result sinks never cost a record
                    log.exception("result sinks failed")
        finally:
            with self._cv:
                for job in jobs:
                    self._outstanding.pop(job.key, None)
                if self._closing:  # only close() waits for _outstanding to empty (and it polls as well)
                    self._cv.notify_all()
            if self._state_busy:
                self._release(jobs)

    def _write_records(self, recs: List[Dict[str, Any]]) -> None:
        with self._sink_lock:
            for rec in recs:
                self.counts[rec["decision"]] = self.counts.get(rec["decision"], 0) + 1
                self.per_model[rec["model"]] = self.per_model.get(rec["model"], 0) + 1
                if rec["error"]:
                    self.errors += 1
            try:
                if self.sink_many is not None:
                    self.sink_many(recs)
                else:
                    for rec in recs:
                        self.sink(rec)
            except Exception:  # a failing sink must not kill the thread that finished the input
                self.sink_failures += len(recs)  # not written: the daemon reports them as lost
                log.exception("decision sink failed: %d record(s) lost", len(recs))

    # ---- results ---------------------------------------------------------------------------------
    def _infer_one(self, model: str, sample: Any) -> Outputs:
        """Run one input locally; every output by name, batch axis removed. Stateful models get the
        sender's state fed in and keep the new state (under the model lock, so in queue order)."""
        m = self.models[model]
        if self._simple.get(model, True):
            return self._one_output(model, m.predict(sample.array, validate=False))  # sources validated it
        entry = self._entries[model]
        outs = m.run(self._feeds(sample), validate=False)
        if entry.stateful:
            self.state.update(self._sender(sample), entry, outs)
        return _rows(outs)

    def _feeds(self, sample: Any) -> Dict[str, Any]:
        """Every input of ``sample`` by name, with the sender's state for a stateful model (it travels with
        the input when offloaded: the fog keeps no state)."""
        entry = self._entries[sample.model]
        feeds = getattr(sample, "feeds", None) or {entry.primary_input.spec.name: sample.array}
        return self.state.feeds(self._sender(sample), entry, feeds) if entry.stateful else dict(feeds)

    def _one_output(self, model: str, out: np.ndarray) -> Outputs:
        """The single output of a simple model (one input's row), keyed by its manifest name."""
        entry = self._entries.get(model)
        return {entry.outputs[0].name if entry is not None else "output": out}

    def _summarize(self, model: str, outputs: Outputs) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
        """(``result``, ``outputs`` summary) of one input. ``result`` is the first classifier's summary (label,
        name, score, top) — never an argmax over a non-classifier; the per-output summary is returned only
        when the model's result is more than one classifier output."""
        entry = self._entries.get(model)
        if entry is None:
            return None, {k: _summary_fallback(v) for k, v in outputs.items()}
        # the summaries take a batch of one (their leading axis of 1 is dropped); ``outputs`` are rows
        if self._simple.get(model, True):
            o = entry.outputs[0]
            row = next(iter(outputs.values()))
            if o.is_classifier:  # a row is one sample: summarised as is (summarize_output's batch axis is moot)
                return summarize_classifier(row, o), None
            return None, {o.name: summarize_output(row[np.newaxis], o)}
        summary = summarize(entry, {k: v[np.newaxis] for k, v in outputs.items()})
        return primary_summary(entry, summary), summary

    def _summarize_rows(self, model: str, out: np.ndarray,
                        rows: List[Outputs]) -> List[Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]]:
        """:meth:`_summarize` of every row of a simple model's batched output, a classifier's in one pass."""
        entry = self._entries.get(model)
        if entry is not None and self._simple.get(model, True) and entry.outputs[0].kind == "probabilities":
            return [(r, None) for r in summarize_classifier_rows(out, entry.outputs[0])]
        return [self._summarize(model, r) for r in rows]

    # ---- helpers -------------------------------------------------------------------------------
    def _begin(self, kind: str) -> Any:
        if self.activity is None:
            return None
        try:
            return self.activity.begin(kind)
        except Exception:
            log.exception("activity.begin failed")
            return None

    def _end(self, token: Any) -> None:
        if self.activity is None or token is None:
            return
        try:
            self.activity.end(token)
        except Exception:
            log.exception("activity.end failed")

    def _energy(self, t0: float, t1: float) -> Optional[float]:
        if self.energy_fn is None:
            return None
        try:
            return self.energy_fn(t0, t1)
        except Exception:
            log.exception("energy_fn failed")
            return None


def _next_batch(queue: Deque[_Job], simple: Mapping[str, bool], dynamic: Mapping[str, bool],
                max_batch: int) -> List[_Job]:
    """Pop the next input of ``queue`` plus the inputs of the same model right behind it (up to ``max_batch``;
    a dynamic model's only while their shapes are equal; a model with several tensors or state alone)."""
    first = queue.popleft()
    batch = [first]
    model = first.sample.model
    if not simple.get(model, True):  # several tensors or state: one input at a time, in order
        return batch
    shape = first.sample.array.shape if dynamic.get(model) else None  # only equal shapes stack
    while (queue and len(batch) < max_batch and queue[0].sample.model == model
           and (shape is None or queue[0].sample.array.shape == shape)):
        batch.append(queue.popleft())
    return batch


def _rows(outs: Mapping[str, np.ndarray]) -> Outputs:
    """One input's outputs from a run of one: the batch axis of 1 removed."""
    return {k: v[0] if v.ndim and v.shape[0] == 1 else v for k, v in outs.items()}


def _summary_fallback(out: np.ndarray) -> Dict[str, Any]:
    """Summary of an output of a model without a manifest entry (test doubles): a tensor summary."""
    return summarize_tensor(np.asarray(out))


__all__: List[str] = ["Dispatcher", "DECISIONS", "HEADER_OVERHEAD_BYTES"]
