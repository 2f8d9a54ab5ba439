"""Per-source accounting: accepted, rejected by reason, lost in transit.

Counters are updated by the source's own thread (single writer: the hot-path
increments take no lock) and read by anyone through :meth:`SourceStats.snapshot`,
which returns a JSON-ready copy.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Dict, Hashable, Optional, Set, Tuple

log = logging.getLogger("edged.sources")

#: Minimum interval between two log lines for the same (source, reason) (s).
REJECT_LOG_INTERVAL_S = 10.0
#: Most ``(sender, model)`` keys the sequence tracker keeps; the least recently seen is forgotten.
MAX_TRACKED_SENDERS = 4096
#: Most refused-but-numbered ``seq`` values remembered per key between two valid inputs.
MAX_REJECTED_AHEAD = 64
#: Marker in a key's refused-seq set: more were refused than remembered; the next gap is not blamed on transit.
_OVERFLOW = -1


class SourceStats:
    """Counters for one source.

    Attributes:
        accepted: inputs validated and handed to the sink.
        rejected: inputs/frames refused, keyed by reason (``bad_crc``, ``wrong_size`` ...).
        lost_in_transit: inputs missing according to the senders' ``seq`` gaps.
        seq_restarts: times a sender's ``seq`` went backwards (sender restarted).
        tracked_senders: ``(sender, model)`` keys the sequence tracker holds now (at most ``max_tracked``).
        senders_evicted: keys the tracker forgot to stay within ``max_tracked`` (least recently seen first).
        garbage_bytes: stream bytes that did not belong to a valid frame (serial).
        reconnects: times the transport came back after an outage.
        not_accepted_downstream: valid inputs the sink refused (queue full/closed).
    """

    def __init__(self, name: str, log_interval_s: float = REJECT_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, max_tracked: int = MAX_TRACKED_SENDERS) -> None:
        self.name = name
        self.accepted = 0
        self.rejected: Dict[str, int] = {}
        self.unattributed: Dict[str, int] = {}  # rejections without a decision record (see count_unattributed)
        self.lost_in_transit = 0
        self.seq_restarts = 0
        self.garbage_bytes = 0
        self.reconnects = 0
        self.not_accepted_downstream = 0
        self.errors = 0
        self._lock = threading.Lock()
        self.senders_evicted = 0
        self.max_tracked = max(1, int(max_tracked))
        # (sender, model) -> last valid seq, least recently seen first (an LRU of at most max_tracked keys)
        self._last_seq: collections.OrderedDict[Hashable, int] = collections.OrderedDict()
        # (sender, model) -> seqs above the last valid one that were refused (so their gap is not "lost")
        self._rejected_ahead: Dict[Hashable, Set[int]] = {}
        self._log_interval_s = log_interval_s
        self._clock = clock
        self._last_log: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = {}

    # ---- updates (source thread)

    def count_accepted(self, n: int = 1) -> None:
        # hot path, single writer (the source thread): a plain increment, no lock
        self.accepted += n

    def count_rejected(self, reason: str, detail: str = "", garbage_bytes: int = 0) -> None:
        """Count one rejection and log it, at most once per reason per ``log_interval_s``."""
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            self.garbage_bytes += garbage_bytes
            now = self._clock()
            last = self._last_log.get(reason)
            if last is not None and now - last < self._log_interval_s:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return
            self._last_log[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
        more = f" (+{suppressed} more since last report)" if suppressed else ""
        log.warning("source %s rejected input: %s: %s%s", self.name, reason, detail or "-", more)

    def count_unattributed(self, reason: str) -> None:
        """One of the rejections counted by :meth:`count_rejected` that has no decision record (its header
        named no loaded model): ``edged tail`` and ``edged report`` show these from ``stats.json``."""
        with self._lock:
            self.unattributed[reason] = self.unattributed.get(reason, 0) + 1

    def count_garbage(self, nbytes: int) -> None:
        with self._lock:
            self.garbage_bytes += nbytes

    def count_reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1

    def count_downstream_refusal(self) -> None:
        with self._lock:
            self.not_accepted_downstream += 1

    def count_error(self) -> None:
        with self._lock:
            self.errors += 1

    def track_seq(self, sender: Hashable, seq: int) -> int:
        """Record a VALID input's ``seq`` from ``sender`` (e.g. ``(sender, model)``); return how many were lost.

        A gap ``seq > last + 1`` adds to ``lost_in_transit`` the skipped numbers that were
        not refused inputs (see :meth:`note_rejected_seq`); a ``seq`` at or below the last
        one is a sender restart (tracking resets). The tracker is an LRU of at most
        ``max_tracked`` keys, so hostile or churning senders cost bounded memory.
        """
        # hot path, single writer (the source thread): no lock
        d = self._last_seq
        last = d.get(sender)
        if last is None:
            d[sender] = seq
            if len(d) > self.max_tracked:
                old, _ = d.popitem(last=False)
                self._rejected_ahead.pop(old, None)
                self.senders_evicted += 1
            return 0
        d[sender] = seq
        d.move_to_end(sender)
        if seq == last + 1 and not self._rejected_ahead:
            return 0
        ahead = self._rejected_ahead.pop(sender, None)
        if seq <= last:
            self.seq_restarts += 1
            return 0
        gap = seq - last - 1
        if ahead:
            if _OVERFLOW in ahead:
                gap = 0  # more refusals than remembered: do not blame transit for any of this gap
            else:
                gap -= sum(1 for s in ahead if last < s < seq)
                keep = {s for s in ahead if s > seq}
                if keep:
                    self._rejected_ahead[sender] = keep
        self.lost_in_transit += gap
        return gap

    def note_rejected_seq(self, sender: Hashable, seq: int) -> None:
        """A REFUSED input carried ``seq``: its number is not lost in transit when the next valid one jumps it.

        Only for keys the tracker already holds (refused inputs never create state), only
        numbers above the last valid one, at most :data:`MAX_REJECTED_AHEAD` per key.
        """
        last = self._last_seq.get(sender)
        if last is None or seq <= last:
            return
        ahead = self._rejected_ahead.setdefault(sender, set())
        if _OVERFLOW in ahead:
            return
        if len(ahead) >= MAX_REJECTED_AHEAD:
            ahead.add(_OVERFLOW)
        else:
            ahead.add(seq)

    # ---- reads (any thread)

    @property
    def rejected_total(self) -> int:
        with self._lock:
            return sum(self.rejected.values())

    def snapshot(self) -> Dict[str, Any]:
        """JSON-ready copy of every counter."""
        with self._lock:
            return {
                "source": self.name,
                "accepted": self.accepted,
                "rejected": dict(sorted(self.rejected.items())),
                "rejected_total": sum(self.rejected.values()),
                "unattributed": dict(sorted(self.unattributed.items())),
                "lost_in_transit": self.lost_in_transit,
                "seq_restarts": self.seq_restarts,
                "tracked_senders": len(self._last_seq),
                "senders_evicted": self.senders_evicted,
                "garbage_bytes": self.garbage_bytes,
                "reconnects": self.reconnects,
                "not_accepted_downstream": self.not_accepted_downstream,
                "errors": self.errors,
            }


class OutageLog:
    """Logs a transport outage once when it starts and once when it ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down_since: Optional[float] = None
        self.attempts = 0

    def down(self, what: str, exc: BaseException) -> None:
        self.attempts += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("source %s: %s failed (%s); retrying with backoff", self.name, what, exc)

    def up(self) -> Tuple[bool, float]:
        """Mark the transport up; returns (was_down, outage seconds)."""
        if self.down_since is None:
            return False, 0.0
        outage = time.monotonic() - self.down_since
        log.warning("source %s: back after %.1f s (%d attempts)", self.name, outage, self.attempts)
        self.down_since = None
        self.attempts = 0
        return True, outage
