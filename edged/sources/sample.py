"""The unit of work flowing through edged: one validated sensor input."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np


@dataclass
class Sample:
    """One sensor input, validated against its model's input spec.

    Attributes:
        model: catalogue name of the model that must process this input.
        seq: sender's sequence number (monotonic per sender; gaps = lost in transit).
        array: the input, shape = model's sample shape (no batch dim), model dtype,
            in the model's canonical (manifest) layout; finite values only.
        source: name of the source it arrived on (e.g. ``"zmq"``, ``"serial:/dev/ttyUSB0"``).
        t_arrival: ``time.monotonic()`` when edged received it (s); latency is measured from here.
        ts_arrival: wall-clock unix time when edged received it (s), for logs.
        sender_ts: sender's own unix timestamp (s), the header's ``ts``, if it sent one.
        deadline_ms: optional latency budget from the sender, relative to arrival.
        meta: the header fields edged does not interpret (bounded: at most 16 keys of at
            most 64 bytes, JSON scalar values, strings at most 256 bytes; see docs/protocol.md).
        sender: the header's ``sender`` (a string of at most 128 UTF-8 bytes), if it sent one.
        feeds: every input the message carried, by input name (no batch axis, canonical layout,
            validated), when it carried more than the primary input (wire protocol v2); else None,
            and ``array`` is the whole input. ``array`` is always ``feeds[primary]`` when both are set.
            A state input is here only if the sender sent it explicitly (it then wins over the
            state edged keeps for that sender).
    """

    model: str
    seq: int
    array: np.ndarray
    source: str = ""
    t_arrival: float = field(default_factory=time.monotonic)
    ts_arrival: float = field(default_factory=time.time)
    sender_ts: Optional[float] = None
    deadline_ms: Optional[float] = None
    meta: Dict[str, Any] = field(default_factory=dict)
    sender: Optional[str] = None
    feeds: Optional[Dict[str, np.ndarray]] = None

    @property
    def nbytes(self) -> int:
        """Payload size in bytes (what a transfer to the fog node carries): every input the message carried."""
        if self.feeds is None:
            return int(self.array.nbytes)
        return sum(int(a.nbytes) for a in self.feeds.values())
