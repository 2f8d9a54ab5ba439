"""Bounded ingest queue between the sources and the router.

Two policies when full:

* ``block``: ``put`` waits for space (up to its timeout). A ZeroMQ source
  blocked in ``put`` stops reading its socket, so the socket's RCVHWM fills
  and ZeroMQ pushes back on the senders: real end-to-end backpressure.
* ``drop-oldest``: ``put`` never waits; the oldest queued sample is evicted
  and counted in ``dropped_oldest``.

Nothing is silently dropped: every sample the queue refuses or evicts is
handed to ``on_drop(sample, reason)`` (reasons ``"queue_full"``,
``"dropped_oldest"``, ``"queue_closed"``) so the daemon can still write one
decision line for it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional

from edged.sources.sample import Sample

log = logging.getLogger("edged.sources.queue")

POLICIES = ("block", "drop-oldest")
#: Longest single condition wait (s); longer waits loop so close() is always seen.
_WAIT_SLICE_S = 0.25

DropCallback = Callable[[Sample, str], None]


class IngestQueue:
    """Thread-safe bounded FIFO of :class:`Sample` with a full-queue policy.

    Args:
        maxsize: capacity in samples (>= 1).
        policy: ``"block"`` or ``"drop-oldest"``.
        on_drop: called (outside the lock) with every sample the queue refuses
            or evicts and the reason; exceptions in it are logged, not raised.
    """

    def __init__(self, maxsize: int = 1024, policy: str = "block", on_drop: Optional[DropCallback] = None) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.maxsize = maxsize
        self.policy = policy
        self.on_drop = on_drop
        self._items: Deque[Sample] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._getters_waiting = 0
        self.put_total = 0
        self.got_total = 0
        self.rejected_full = 0
        self.rejected_closed = 0
        self.dropped_oldest = 0
        self.high_watermark = 0

    # ------------------------------------------------------------------ producer side

    def put(self, sample: Sample, timeout: Optional[float] = None) -> bool:
        """Enqueue ``sample``; True if queued.

        ``block`` policy: waits for space up to ``timeout`` seconds (None = until
        space or :meth:`close`), then returns False and counts ``rejected_full``.
        ``drop-oldest``: never waits; evicts the oldest sample if full.
        After :meth:`close` every put returns False (``rejected_closed``).
        """
        evicted: Optional[Sample] = None
        refused: Optional[str] = None
        with self._lock:
            if not self._closed and len(self._items) >= self.maxsize:
                if self.policy == "drop-oldest":
                    evicted = self._items.popleft()
                    self.dropped_oldest += 1
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while not self._closed and len(self._items) >= self.maxsize:
                        left = _WAIT_SLICE_S if deadline is None else min(_WAIT_SLICE_S, deadline - time.monotonic())
                        if left <= 0:
                            break
                        self._not_full.wait(left)
                    if not self._closed and len(self._items) >= self.maxsize:
                        self.rejected_full += 1
                        refused = "queue_full"
            if self._closed:
                self.rejected_closed += 1
                refused = "queue_closed"
            if refused is None:
                self._items.append(sample)
                self.put_total += 1
                depth = len(self._items)
                if depth > self.high_watermark:
                    self.high_watermark = depth
                if self._getters_waiting:  # skip Condition.notify's ownership check when nobody waits
                    self._not_empty.notify()
        if evicted is not None:
            self._dropped(evicted, "dropped_oldest")
        if refused is not None:
            self._dropped(sample, refused)
            return False
        return True

    def sink(self, timeout: Optional[float] = None) -> Callable[[Sample], bool]:
        """A source sink that puts with ``timeout`` (see :meth:`put`)."""
        if timeout is None:
            return self.put

        def _sink(sample: Sample) -> bool:
            return self.put(sample, timeout=timeout)

        return _sink

    # ------------------------------------------------------------------ consumer side

    def get(self, timeout: float = 1.0) -> Optional[Sample]:
        """Oldest sample, waiting up to ``timeout`` s; None on timeout or when closed and empty."""
        with self._lock:
            deadline = time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._wait_not_empty(min(left, _WAIT_SLICE_S))
            sample = self._items.popleft()
            self.got_total += 1
            self._not_full.notify()
            return sample

    def get_many(self, max_items: int, timeout: float = 1.0) -> List[Sample]:
        """Up to ``max_items`` samples: waits up to ``timeout`` s for the first, then takes what is queued."""
        with self._lock:
            deadline = time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    return []
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._wait_not_empty(min(left, _WAIT_SLICE_S))
            n = min(max_items, len(self._items))
            out = [self._items.popleft() for _ in range(n)]
            self.got_total += n
            self._not_full.notify(n)
            return out

    def _wait_not_empty(self, timeout: float) -> None:
        self._getters_waiting += 1
        try:
            self._not_empty.wait(timeout)
        finally:
            self._getters_waiting -= 1

    def drain(self) -> List[Sample]:
        """Remove and return everything queued now (for shutdown: each still needs a decision)."""
        with self._lock:
            out = list(self._items)
            self._items.clear()
            self.got_total += len(out)
            self._not_full.notify_all()
            return out

    def qsize(self) -> int:
        with self._lock:
            return len(self._items)

    def close(self) -> None:
        """Refuse further puts and wake every waiting producer and consumer. Queued samples stay gettable."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> Dict[str, Any]:
        """JSON-ready counters."""
        with self._lock:
            return {
                "policy": self.policy,
                "maxsize": self.maxsize,
                "depth": len(self._items),
                "high_watermark": self.high_watermark,
                "put": self.put_total,
                "got": self.got_total,
                "rejected_full": self.rejected_full,
                "rejected_closed": self.rejected_closed,
                "dropped_oldest": self.dropped_oldest,
                "closed": self._closed,
            }

    def _dropped(self, sample: Sample, reason: str) -> None:
        if self.on_drop is None:
            return
        try:
            self.on_drop(sample, reason)
        except Exception:
            log.exception("ingest queue on_drop callback failed for %s seq %s (%s)", sample.model, sample.seq, reason)
