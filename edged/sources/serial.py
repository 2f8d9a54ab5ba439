"""Serial source: ``lines`` or ``cobs`` framing over any pyserial URL.

Ports are opened with ``serial.serial_for_url`` so ``/dev/ttyUSB0``,
``loop://``, ``socket://host:port`` and ``spy://`` all take the same path.
A port that disappears (``SerialException``/``OSError``) is reopened with
exponential backoff (0.1 s -> 5 s); the outage is logged once when it starts
and once when it ends, and counted in ``stats.reconnects``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Mapping, Optional, Union

from edged.runtime.base import TensorSpec
from edged.sources.base import Sink, Source
from edged.sources.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    CobsDeframer,
    FrameError,
    LineDeframer,
    cobs_decode,
    parse_body,
    parse_line,
)
from edged.sources.sample import Sample
from edged.sources.stats import OutageLog
from edged.sources.validate import header_seq, sample_from_payload, sample_from_values

log = logging.getLogger("edged.sources.serial")

FRAMINGS = ("lines", "cobs")
#: Read timeout of the port (s): how quickly ``run`` notices ``stop`` when idle.
READ_TIMEOUT_S = 0.1
#: Largest single read (bytes).
READ_CHUNK = 65536
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
#: Rejections whose bytes are counted as ``garbage_bytes`` (no frame could be recognised).
_GARBAGE_REASONS = frozenset({"bad_cobs", "truncated", "bad_crc", "unparsable"})


def open_port(url: str, baudrate: int) -> Any:
    """Open ``url`` with pyserial (``timeout`` = :data:`READ_TIMEOUT_S`)."""
    import serial  # core dependency, imported here so edged.sources stays light

    return serial.serial_for_url(url, baudrate=baudrate, timeout=READ_TIMEOUT_S)


class SerialSource(Source):
    """Serial port source.

    Args:
        specs: model name -> input spec.
        url: pyserial URL or device path.
        framing: ``"lines"`` (text, one input per line) or ``"cobs"`` (binary frames).
        baudrate: line rate (bit/s); ignored by ptys, ``loop://`` and ``socket://``.
        default_model: model for lines without a ``name:`` prefix (and COBS
            headers without ``model``); None = such inputs are ``unknown_model``.
        max_frame_bytes: longest frame/line accepted (bytes); longer = ``oversize``.
        name: source name (default ``serial:<url>``).
    """

    def __init__(
        self,
        specs: Mapping[str, TensorSpec],
        url: str,
        framing: str = "lines",
        baudrate: int = 115200,
        default_model: Optional[str] = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        name: Optional[str] = None,
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
        super().__init__(specs, name or f"serial:{url}")
        self.url = url
        self.framing = framing
        self.baudrate = baudrate
        self.default_model = default_model
        self.max_frame_bytes = max_frame_bytes
        self.deframer: Union[CobsDeframer, LineDeframer] = (
            CobsDeframer(max_frame_bytes) if framing == "cobs" else LineDeframer(max_frame_bytes)
        )
        self.connected = threading.Event()
        self._outage = OutageLog(self.name)
        self._was_connected = False

    # ------------------------------------------------------------------ loop

    def run(self, sink: Sink, stop: threading.Event) -> None:
        backoff = BACKOFF_START_S
        while not stop.is_set():
            port = self._open(stop, backoff)
            if port is None:
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_START_S
            try:
                self._read_loop(port, sink, stop)
            finally:
                self.connected.clear()
                try:
                    port.close()
                except Exception:
                    pass
                discarded = self.deframer.reset()
                if discarded:
                    self.stats.count_garbage(discarded)

    def _open(self, stop: threading.Event, backoff: float) -> Any:
        try:
            port = open_port(self.url, self.baudrate)
        except Exception as exc:  # SerialException, OSError, ValueError from a bad URL
            self._outage.down(f"opening {self.url}", exc)
            stop.wait(backoff)
            return None
        self._outage.up()
        if self._was_connected:  # back after a loss (the first open is not a reconnect)
            self.stats.count_reconnect()
        self._was_connected = True
        self.connected.set()
        return port

    def _read_loop(self, port: Any, sink: Sink, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                waiting = port.in_waiting
                data = port.read(min(max(1, waiting), READ_CHUNK))
            except Exception as exc:  # SerialException / OSError: the port went away
                if not stop.is_set():
                    self._outage.down(f"reading {self.url}", exc)
                return
            if data:
                try:
                    self.feed(data, sink)
                except Exception:
                    self.stats.count_error()
                    log.exception("source %s: unexpected error handling %d bytes", self.name, len(data))

    # ------------------------------------------------------------------ bytes -> samples

    def feed(self, data: bytes, sink: Sink) -> None:
        """Process a chunk of received bytes (public so tests and benches can drive it directly)."""
        for segment, err in self.deframer.feed(data):
            if err is not None:
                self.stats.count_rejected(err.reason, err.detail, garbage_bytes=err.nbytes)
                continue
            try:
                sample = self._parse(segment)
            except FrameError as err2:
                garbage = len(segment) if err2.reason in _GARBAGE_REASONS else 0
                self.stats.count_rejected(err2.reason, err2.detail, garbage_bytes=garbage)
                continue
            self.deliver(sample, sink)

    def _parse(self, segment: bytes) -> Sample:
        if self.framing == "cobs":
            header, payload = parse_body(cobs_decode(segment))
            if "model" not in header and self.default_model:
                header["model"] = self.default_model
            seq = header_seq(header)
            model = header.get("model")
            if seq is not None and isinstance(model, str) and model in self.specs:
                self.stats.track_seq((str(header.get("sender", "")), model), seq)
            sample = sample_from_payload(self.specs, header, payload, self.name, -1 if seq is None else seq)
            if seq is None:  # numbered only once valid, so rejected inputs leave no holes
                sample.seq = self.next_local_seq(sample.model)
            return sample
        name, values = parse_line(segment)
        name = name or self.default_model
        if name is None:
            raise FrameError("unknown_model", "line has no 'name:' prefix and the source has no default model")
        sample = sample_from_values(self.specs, name, values, self.name, -1)
        sample.seq = self.next_local_seq(name)
        return sample
