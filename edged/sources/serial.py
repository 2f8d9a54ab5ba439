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
from typing import Any, List, Mapping, Optional, Union

from edged.errors import SourceError, describe_os_error
from edged.sources.base import Sink, Source, batch_sink
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
from edged.sources.validate import HeaderInfo, inputs_from_values, known_model

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


def _line_model(segment: bytes) -> Optional[str]:
    """The ``name:`` prefix of a line, if it has an ASCII one (for attributing a refused line)."""
    colon = segment.find(b":")
    if colon <= 0:
        return None
    try:
        return segment[:colon].strip().decode("ascii") or None
    except UnicodeDecodeError:
        return None


class SerialSource(Source):
    """Serial port source.

    Args:
        specs: model name -> ``ModelEntry`` (every input), ``LoadedModel`` or a v1 ``TensorSpec``.
        url: pyserial URL or device path.
        framing: ``"lines"`` (text, one input per line: models with one data input only) or
            ``"cobs"`` (binary frames; several named tensors with ``tensors`` in the header).
        baudrate: line rate (bit/s); ignored by ptys, ``loop://`` and ``socket://``.
        default_model: model for lines without a ``name:`` prefix (and COBS
            headers without ``model``); None = such inputs are ``unknown_model``.
        max_frame_bytes: longest frame/line accepted (bytes, inclusive); longer = ``oversize``.
        name: source name (default ``serial:<url>``).
    """

    def __init__(
        self,
        specs: Mapping[str, Any],
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
        self._port: Any = None
        self._state: Optional[str] = None
        from edged.sinks.serial import ReplyBuffer

        #: results going back to the device on this port (the serial result sink writes here)
        self.replies = ReplyBuffer()

    def write_reply(self, data: bytes) -> bool:
        """Queue ``data`` for the device on this port and write what the port takes now. Never blocks;
        False (nothing queued) while the port is closed or the reply buffer is full."""
        return self.replies.write(data)

    # ------------------------------------------------------------------ life cycle

    def open(self) -> None:
        """Open the port now if the device is there, so pyserial's input flush happens before READY=1.

        An absent or busy device does not raise: ``run`` keeps retrying with backoff and
        :meth:`state` says ``waiting for <url>: <why>``. A URL pyserial cannot understand at
        all (``ValueError``: unknown scheme, bad option) raises :class:`~edged.errors.SourceError`.
        """
        if self._port is not None or self.connected.is_set():
            return
        try:
            self._port = self._open_once()
        except ValueError as exc:
            raise SourceError(f"serial source {self.name!r}: cannot open {self.url}: {exc}") from None

    def state(self) -> Optional[str]:
        """``waiting for /dev/ttyUSB0: No such file or directory (ENOENT)`` while the port is not open, else None."""
        return self._state

    def close(self) -> None:
        """Close a port taken by :meth:`open` when the source will not run."""
        if self._thread is None and self._port is not None:
            try:
                self._port.close()
            except Exception:
                pass
            self._port = None
            self.connected.clear()

    def _open_once(self) -> Any:
        """One attempt: the open port, or None (state and outage updated). ValueError propagates."""
        try:
            port = open_port(self.url, self.baudrate)
        except ValueError:
            raise
        except Exception as exc:  # SerialException, OSError: absent, busy, no permission
            self._state = f"waiting for {self.url}: {describe_os_error(exc)}"
            self._outage.down(f"opening {self.url}", exc)
            return None
        self._state = None
        self._outage.up()
        if self._was_connected:  # back after a loss (the first open is not a reconnect)
            self.stats.count_reconnect()
        self._was_connected = True
        self.connected.set()
        return port

    # ------------------------------------------------------------------ loop

    def run(self, sink: Sink, stop: threading.Event) -> None:
        backoff = BACKOFF_START_S
        while not stop.is_set():
            port, self._port = self._port, None
            if port is None:
                try:
                    port = self._open_once()
                except ValueError as exc:  # a URL that can never work; start() raised it already
                    self._state = f"cannot open {self.url}: {str(exc)[:200]}"
                    self._outage.down(f"opening {self.url}", exc)
                    port = None
                if port is None:
                    stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
            backoff = BACKOFF_START_S
            self.replies.attach(port)
            try:
                self._read_loop(port, sink, stop)
            finally:
                self.replies.detach()  # replies still waiting for a port that is gone are counted lost
                self.connected.clear()
                try:
                    port.close()
                except Exception:
                    pass
                discarded = self.deframer.reset()
                if discarded:
                    self.stats.count_garbage(discarded)

    def _read_loop(self, port: Any, sink: Sink, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                waiting = port.in_waiting
                data = port.read(min(max(1, waiting), READ_CHUNK))
            except Exception as exc:  # SerialException / OSError: the port went away
                if not stop.is_set():
                    self._state = f"waiting for {self.url}: {describe_os_error(exc)}"
                    self._outage.down(f"reading {self.url}", exc)
                return
            if data:
                self.feed(data, sink)
            if self.replies.pending:
                self.replies.flush()
        try:  # stopping: what the OS already holds is handled, not dropped
            waiting = port.in_waiting
            if waiting:
                self.feed(port.read(min(waiting, READ_CHUNK)), sink)
        except Exception:
            pass

    # ------------------------------------------------------------------ bytes -> samples

    def feed(self, data: bytes, sink: Sink) -> None:
        """Process a chunk of received bytes (public so tests and benches can drive it directly).

        Never raises: each frame/line is its own failure domain.
        """
        try:
            segments = list(self.deframer.feed(data))
        except Exception as exc:  # the deframer is simple; if it ever fails, restart it clean
            dropped = self.deframer.reset()
            self.reject_unexpected(exc)
            self.stats.count_garbage(dropped)
            return
        many = batch_sink(sink)
        ready: List[Sample] = []  # frames of this chunk, handed over together (in order) to a BatchSink
        for segment, err in segments:
            if err is not None:
                self.deliver_many(ready, sink, many)  # the frames before a refused one are recorded first
                self.reject_error(err, garbage_bytes=err.nbytes)
                continue
            try:
                sample = self._parse(segment)
            except FrameError as err2:
                self.deliver_many(ready, sink, many)
                garbage = len(segment) if err2.reason in _GARBAGE_REASONS else 0
                model = None
                if err2.header is None and self.framing == "lines":
                    model = _line_model(segment) or self.default_model
                self.reject_error(err2, model=model, garbage_bytes=garbage)
                continue
            except Exception as exc:
                self.deliver_many(ready, sink, many)
                self.reject_unexpected(exc)
                continue
            if many is not None:
                ready.append(sample)
                continue
            try:
                self.deliver(sample, sink)
            except Exception as exc:
                self.stats.count_error()
                self._log_traceback(f"sink failed for one sample ({type(exc).__name__})", exc)
        self.deliver_many(ready, sink, many)

    def _parse(self, segment: bytes) -> Sample:
        if self.framing == "cobs":
            header = None
            try:
                header, payload = parse_body(cobs_decode(segment))
                if "model" not in header and self.default_model:
                    header["model"] = self.default_model
            except FrameError as err:
                if err.header is None:
                    err.header = header
                raise
            return self.sample_from_body(header, payload, None)
        name, values = parse_line(segment)
        name = name or self.default_model
        if name is None:
            raise FrameError("unknown_model", "line has no 'name:' prefix and the source has no default model")
        spec = known_model(self.specs, name)
        arr = inputs_from_values(self.contracts[name], values)
        return self.make_sample(HeaderInfo(name, spec, None, None, None, None, {}), arr, None)
