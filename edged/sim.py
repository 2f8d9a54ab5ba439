"""``edged sim``: a sensor simulator speaking wire protocol v1.

Replays a model's validation set (or a user ``.npz``/``.csv``) to a serial
port, a fresh pty pair, or a ZeroMQ endpoint, at a rate or as fast as
possible, optionally in bursts, with jitter and with injected corrupt frames.

Library use (tests, ``make run``)::

    inputs = load_sim_inputs(["mlp"])
    with open_target(pty=True) as target:        # target.path = /dev/pts/N
        stats = simulate(target, inputs, rate_hz=100, count=1000, stop=stop_event)
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import select
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from edged.errors import ConfigError, InputError, UnknownModelError
from edged.runtime.base import TensorSpec
from edged.signals import stop_on_signals
from edged.sources.framing import build_cobs_frame, format_line

FRAMINGS = ("lines", "cobs")

# ----------------------------------------------------------------------------- inputs


def _models_dir() -> Path:
    try:
        from edged.models import shipped_models_dir

        return shipped_models_dir()
    except ImportError:
        return Path(__file__).resolve().parent.parent / "models"


def load_sim_inputs(
    models: Sequence[str],
    data_path: Optional[str] = None,
    specs: Optional[Mapping[str, TensorSpec]] = None,
) -> Dict[str, np.ndarray]:
    """Rows to send per model, in the model's canonical layout and dtype.

    ``models`` may contain ``"all"``. Without ``data_path`` each model's
    ``models/<name>/validation.npz`` is used; with it, exactly one model.
    ``specs`` (name -> TensorSpec) defaults to the catalogue's, when available.
    """
    from edged.sources.replay import load_inputs

    if specs is None:
        specs = _catalogue_specs()
    names: List[str] = []
    for m in models or ["all"]:
        for part in m.split(","):
            part = part.strip()
            if part == "all":
                names += [n for n in sorted(specs) if n not in names] if specs else _dirs_with_validation()
            elif part and part not in names:
                names.append(part)
    if not names:
        raise InputError("edged sim: no models to simulate (none found in the catalogue)")
    if specs:
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise UnknownModelError(f"unknown model(s) {unknown}; known: {sorted(specs)}")
    if data_path is not None and len(names) != 1:
        raise ConfigError(f"--data replays one model; got {names}")
    out: Dict[str, np.ndarray] = {}
    for name in names:
        path = Path(data_path) if data_path else _models_dir() / name / "validation.npz"
        if not path.exists():
            raise InputError(f"edged sim: no inputs for model {name!r}: {path} does not exist")
        rows = load_inputs(path)
        spec = specs.get(name) if specs else None
        if spec is not None:
            shape = (len(rows),) + tuple(int(d) for d in spec.sample_shape if d)
            if int(np.prod(shape[1:])) * len(rows) != rows.size:
                raise InputError(
                    f"{path}: rows of {rows.shape[1:]} do not fit model {name!r} input {spec.sample_shape}"
                )
            rows = rows.reshape(shape).astype(spec.dtype)
        out[name] = np.ascontiguousarray(rows)
    return out


def _catalogue_specs() -> Dict[str, TensorSpec]:
    try:
        from edged.models import Catalogue

        return Catalogue.discover().input_specs()
    except ImportError:
        return {}


def _dirs_with_validation() -> List[str]:
    root = _models_dir()
    return sorted(p.parent.name for p in root.glob("*/validation.npz")) if root.is_dir() else []


# ----------------------------------------------------------------------------- targets


class Target:
    """Where the simulator writes. ``send`` raises :class:`TargetStopped` when stop is set while blocked."""

    path: str = ""

    def send_input(self, model: str, seq: int, array: np.ndarray, ts: float) -> int:
        """Send one valid input; return bytes sent."""
        raise NotImplementedError

    def send_corrupt(self, rng: random.Random, model: str, array: np.ndarray) -> int:
        """Send one corrupt frame/message; return bytes sent."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TargetStopped(Exception):
    """The stop event was set while waiting to write.

    ``blocked``: the wait was for the receiver (a full socket or pty), not for the pace.
    """

    def __init__(self, blocked: bool = True) -> None:
        super().__init__("stopped while waiting to write" + (" (receiver not reading)" if blocked else ""))
        self.blocked = blocked


class StreamTarget(Target):
    """A byte stream (serial port or pty master) carrying ``lines`` or ``cobs`` frames.

    ``pace_bytes_per_s`` > 0 limits the write rate to a line rate (e.g.
    ``baud / 10`` for 8N1), which a pty does not do by itself.
    """

    def __init__(self, write: Callable[[bytes], None], framing: str = "lines", path: str = "",
                 pace_bytes_per_s: float = 0.0, close: Optional[Callable[[], None]] = None) -> None:
        if framing not in FRAMINGS:
            raise ConfigError(f"framing must be one of {FRAMINGS}, got {framing!r}")
        self._write = write
        self.framing = framing
        self.path = path
        self.pace_bytes_per_s = pace_bytes_per_s
        self._close = close
        self._pace_t: Optional[float] = None
        self.stop: Optional[threading.Event] = None

    def encode(self, model: str, seq: int, array: np.ndarray, ts: float) -> bytes:
        if self.framing == "lines":
            return format_line(array.ravel(), model)
        header = {"model": model, "seq": seq, "ts": round(ts, 6)}
        return build_cobs_frame(header, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())

    def send_input(self, model: str, seq: int, array: np.ndarray, ts: float) -> int:
        return self.write(self.encode(model, seq, array, ts))

    def send_corrupt(self, rng: random.Random, model: str, array: np.ndarray) -> int:
        return self.write(corrupt_stream_bytes(rng, self.framing, self.encode(model, 0, array, time.time())))

    def write(self, data: bytes) -> int:
        if self.pace_bytes_per_s > 0:
            now = time.monotonic()
            if self._pace_t is None or self._pace_t < now - 0.05:
                self._pace_t = now
            self._pace_t += len(data) / self.pace_bytes_per_s
            delay = self._pace_t - time.monotonic()
            if delay > 0 and self.stop is not None and self.stop.wait(delay):
                raise TargetStopped(blocked=False)
            elif delay > 0 and self.stop is None:
                time.sleep(delay)
        self._write(data)
        return len(data)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


def corrupt_stream_bytes(rng: random.Random, framing: str, valid: bytes) -> bytes:
    """A corrupt version of one encoded input: garbage, a flipped byte or a cut frame."""
    kind = rng.randrange(3)
    if framing == "lines":
        if kind == 0:
            return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz!?#%") for _ in range(rng.randint(1, 40))) + b"\n"
        if kind == 1:
            return valid[: max(1, len(valid) // 2)].rstrip(b"\n") + b"\n"  # too few values
        return b"nan," + valid.split(b":", 1)[-1]  # one value too many, and a NaN
    body = bytearray(valid[1:-1])  # COBS bytes between delimiters
    if kind == 0:
        return b"\x00" + bytes(rng.randrange(1, 256) for _ in range(rng.randint(1, 60))) + b"\x00"
    if kind == 1:
        i = rng.randrange(len(body))
        body[i] = body[i] ^ rng.randrange(1, 256) or 0x01
        return b"\x00" + bytes(body) + b"\x00"
    return b"\x00" + bytes(body[: rng.randrange(1, len(body))]) + b"\x00"


def _fd_writer(fd: int, stop: Callable[[], Optional[threading.Event]]) -> Callable[[bytes], None]:
    """Write all of ``data`` to a non-blocking fd, waiting (0.1 s slices) while it is full."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                ev = stop()
                if ev is not None and ev.is_set():
                    raise TargetStopped() from None
                select.select([], [fd], [], 0.1)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise

    return write


def open_pty_target(framing: str = "lines", pace_bytes_per_s: float = 0.0) -> StreamTarget:
    """Create a pty pair in raw mode; the daemon opens ``target.path`` (``/dev/pts/N``).

    The simulator keeps both ends open, so the daemon may close and reopen the path.
    """
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    os.set_blocking(master, False)
    path = os.ttyname(slave)
    holder: Dict[str, Any] = {}

    def close() -> None:
        for fd in (master, slave):
            try:
                os.close(fd)
            except OSError:
                pass

    target = StreamTarget(_fd_writer(master, lambda: holder["t"].stop), framing, path, pace_bytes_per_s, close)
    holder["t"] = target
    target.master_fd = master  # type: ignore[attr-defined]
    target.slave_fd = slave  # type: ignore[attr-defined]
    return target


def open_serial_target(url: str, framing: str = "lines", baudrate: int = 115200,
                       pace_bytes_per_s: float = 0.0) -> StreamTarget:
    """Open a pyserial URL for writing (``/dev/ttyUSB0``, ``socket://``, ``loop://`` ...)."""
    import serial

    try:
        port = serial.serial_for_url(url, baudrate=baudrate, write_timeout=1.0)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise ConfigError(f"edged sim: cannot open serial port {url!r}: {exc}") from None
    holder: Dict[str, Any] = {}

    def write(data: bytes) -> None:
        while True:
            try:
                port.write(data)
                return
            except serial.SerialTimeoutException:
                ev = holder["t"].stop
                if ev is not None and ev.is_set():
                    raise TargetStopped() from None

    target = StreamTarget(write, framing, url, pace_bytes_per_s, port.close)
    holder["t"] = target
    return target


class ZmqTarget(Target):
    """A PUSH socket sending two-frame ``[header, payload]`` messages (or one-frame JSON)."""

    def __init__(self, endpoint: str, bind: bool = False, json_messages: bool = False, sndhwm: int = 1000) -> None:
        import zmq

        self._zmq = zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        try:
            if bind:
                self.sock.bind(endpoint)
                self.path = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                self.sock.connect(endpoint)
                self.path = endpoint
        except zmq.ZMQError as exc:
            self.close()
            raise ConfigError(f"edged sim: cannot {'bind' if bind else 'connect'} {endpoint!r}: {exc}") from None
        self.json_messages = json_messages
        self.stop: Optional[threading.Event] = None

    def _send(self, frames: List[bytes]) -> int:
        zmq = self._zmq
        while True:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
                return sum(len(f) for f in frames)
            except zmq.Again:
                if self.stop is not None and self.stop.is_set():
                    raise TargetStopped() from None
                self.sock.poll(100, zmq.POLLOUT)

    def send_input(self, model: str, seq: int, array: np.ndarray, ts: float) -> int:
        import json

        if self.json_messages:
            msg = {"model": model, "seq": seq, "ts": round(ts, 6), "data": array.ravel().tolist()}
            return self._send([json.dumps(msg).encode()])
        header = json.dumps({"model": model, "seq": seq, "ts": round(ts, 6)}, separators=(",", ":")).encode()
        return self._send([header, np.ascontiguousarray(array).tobytes()])

    def send_corrupt(self, rng: random.Random, model: str, array: np.ndarray) -> int:
        kind = rng.randrange(3)
        if kind == 0:
            return self._send([b"{not json", array.tobytes()])
        if kind == 1:
            return self._send([b'{"model":"%s"}' % model.encode(), array.tobytes()[:-1]])
        return self._send([b'{"model":"no_such_model"}', array.tobytes()])

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def open_target(serial: Optional[str] = None, pty: bool = False, zmq: Optional[str] = None, bind: bool = False,
                framing: str = "lines", baudrate: int = 115200, pace: bool = False) -> Target:
    """Open exactly one of the three targets (``pace``: limit a stream to ``baudrate / 10`` bytes/s)."""
    chosen = [x for x in (serial is not None, pty, zmq is not None) if x]
    if len(chosen) != 1:
        raise ConfigError("edged sim: choose exactly one of --serial URL, --pty, --zmq ENDPOINT")
    pace_bps = baudrate / 10.0 if pace else 0.0
    if serial is not None:
        return open_serial_target(serial, framing, baudrate, pace_bps)
    if pty:
        return open_pty_target(framing, pace_bps)
    assert zmq is not None
    return ZmqTarget(zmq, bind=bind)


# ----------------------------------------------------------------------------- the loop


@dataclass
class SimStats:
    """What the simulator sent."""

    sent: Dict[str, int] = field(default_factory=dict)
    corrupt: int = 0
    bytes_sent: int = 0
    elapsed_s: float = 0.0
    stopped_early: bool = False
    #: stopped while the receiver was not taking more (backpressure): what the transport still held
    #: may not have been delivered (ZeroMQ keeps trying for its LINGER, 2 s, then drops it)
    blocked_at_stop: bool = False

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def summary(self) -> str:
        rate = self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0
        per_model = ", ".join(f"{m}={n}" for m, n in self.sent.items()) or "none"
        text = (f"edged sim: sent {self.total} inputs ({per_model}), {self.corrupt} corrupt injected, "
                f"{self.bytes_sent} bytes in {self.elapsed_s:.2f} s ({rate:.1f} inputs/s)")
        if self.blocked_at_stop:
            text += "; stopped while the receiver was not reading: the last ones may not have been delivered"
        return text

    def to_dict(self) -> Dict[str, Any]:
        return {"sent": dict(self.sent), "total": self.total, "corrupt": self.corrupt,
                "bytes_sent": self.bytes_sent, "elapsed_s": round(self.elapsed_s, 4),
                "blocked_at_stop": self.blocked_at_stop}


def simulate(
    target: Target,
    inputs: Mapping[str, np.ndarray],
    rate_hz: float = 0.0,
    count: int = 0,
    burst: int = 1,
    jitter_ms: float = 0.0,
    corrupt: float = 0.0,
    seed: int = 0,
    stop: Optional[threading.Event] = None,
    progress_s: float = 5.0,
    progress_stream: Optional[IO[str]] = None,
) -> SimStats:
    """Send inputs round-robin over models until ``count`` (0 = forever) or ``stop``.

    ``rate_hz`` is the average input rate (0 = as fast as the target takes
    them); ``burst`` inputs go back to back, then the pause for all of them;
    ``jitter_ms`` adds a uniform ±jitter to each pause; with probability
    ``corrupt`` a corrupt frame is sent before an input (valid inputs are never
    replaced, and ``seq`` counts valid inputs only, per model from 0).
    """
    stop = stop or threading.Event()
    if hasattr(target, "stop"):
        target.stop = stop  # type: ignore[attr-defined]
    rng = random.Random(seed)
    models = list(inputs)
    if not models:
        raise InputError("edged sim: nothing to send")
    stats = SimStats(sent={m: 0 for m in models})
    row = {m: 0 for m in models}
    burst = max(1, burst)
    period = burst / rate_hz if rate_hz > 0 else 0.0
    t0 = time.monotonic()
    next_t = t0
    next_progress = t0 + progress_s if progress_s > 0 else float("inf")
    i = 0
    try:
        while not stop.is_set() and (count <= 0 or i < count):
            for _ in range(burst):
                if count > 0 and i >= count:
                    break
                model = models[i % len(models)]
                rows = inputs[model]
                x = rows[row[model] % len(rows)]
                row[model] += 1
                if corrupt > 0 and rng.random() < corrupt:
                    stats.bytes_sent += target.send_corrupt(rng, model, x)
                    stats.corrupt += 1
                stats.bytes_sent += target.send_input(model, stats.sent[model], x, time.time())
                stats.sent[model] += 1
                i += 1
            now = time.monotonic()
            if now >= next_progress:
                next_progress = now + progress_s
                _progress(stats, now - t0, progress_stream)
            if period:
                next_t += period
                delay = next_t - now
                if jitter_ms:
                    delay += rng.uniform(-jitter_ms, jitter_ms) / 1000.0
                if delay > 0 and stop.wait(delay):
                    break
    except TargetStopped as exc:
        stats.blocked_at_stop = exc.blocked
    stats.elapsed_s = time.monotonic() - t0
    stats.stopped_early = stop.is_set() and (count <= 0 or i < count)
    return stats


def _progress(stats: SimStats, elapsed: float, stream: Optional[IO[str]]) -> None:
    out = stream or sys.stderr
    print(f"edged sim: {stats.total} sent, {stats.corrupt} corrupt, {stats.total / max(elapsed, 1e-9):.1f} inputs/s",
          file=out, flush=True)


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_argument_group("target (choose one)")
    where.add_argument("--serial", metavar="URL", help="pyserial URL or device: /dev/ttyUSB0, socket://host:port ...")
    where.add_argument("--pty", action="store_true", help="create a pty pair and print the device path to open")
    where.add_argument("--zmq", metavar="ENDPOINT", help="ZeroMQ PUSH endpoint, e.g. tcp://127.0.0.1:5555")
    where.add_argument("--bind", action="store_true", help="bind the ZeroMQ endpoint instead of connecting")
    p.add_argument("--framing", choices=FRAMINGS, default="lines", help="serial/pty framing (default lines)")
    p.add_argument("--baud", type=int, default=115200, help="serial baud rate (bit/s, default 115200)")
    p.add_argument("--pace", action="store_true",
                   help="limit serial/pty writes to the line rate baud/10 bytes/s (a pty has no rate of its own)")
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="model to simulate (repeatable, or 'all' to interleave every model; default all)")
    p.add_argument("--data", metavar="FILE", help="replay this .npz (array x) or .csv instead of the validation set")
    p.add_argument("--rate", type=float, default=10.0, help="inputs per second (0 = as fast as possible; default 10)")
    p.add_argument("--count", type=int, default=0, help="inputs to send (0 = forever, the default)")
    p.add_argument("--burst", type=int, default=1, help="inputs sent back to back per period (default 1)")
    p.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="uniform ±jitter on each pause (ms)")
    p.add_argument("--corrupt", type=float, default=0.0, metavar="FRACTION",
                   help="probability of injecting a corrupt frame before an input (0..1)")
    p.add_argument("--seed", type=int, default=0, help="random seed for jitter and corruption")
    p.add_argument("--progress", type=float, default=5.0, metavar="S", help="progress line interval (s, 0 = off)")


def main(args: argparse.Namespace) -> int:
    if not 0.0 <= args.corrupt <= 1.0:
        raise ConfigError(f"--corrupt must be between 0 and 1, got {args.corrupt}")
    if args.rate < 0 or args.count < 0 or args.burst < 1 or args.jitter < 0:
        raise ConfigError("--rate, --count and --jitter must be >= 0 and --burst >= 1")
    inputs = load_sim_inputs(args.model or ["all"], args.data)
    stop = threading.Event()
    # SIGINT/SIGTERM set stop from a watcher thread: Event.set() in a signal handler can deadlock
    # against the pacing loop's stop.wait() (see edged.signals)
    with stop_on_signals(stop):
        target = open_target(serial=args.serial, pty=args.pty, zmq=args.zmq, bind=args.bind,
                             framing=args.framing, baudrate=args.baud, pace=args.pace)
        with target:
            if args.pty:
                print(f"edged sim: serial device ready at {target.path}", flush=True)
            elif args.zmq:
                print(f"edged sim: ZeroMQ PUSH {'bound to' if args.bind else 'connected to'} {target.path}",
                      file=sys.stderr, flush=True)
            stats = simulate(target, inputs, rate_hz=args.rate, count=args.count, burst=args.burst,
                             jitter_ms=args.jitter, corrupt=args.corrupt, seed=args.seed, stop=stop,
                             progress_s=args.progress)
            if args.pty and not stop.is_set():
                # keep the master open until the reader drained the pty, or we are told to stop
                _wait_drained(target, stop)
        print(stats.summary(), flush=True)
    return 0


def _wait_drained(target: Target, stop: threading.Event, timeout_s: float = 10.0) -> None:
    """Wait (≤ ``timeout_s``) until the pty's reader consumed what we wrote."""
    import fcntl
    import termios

    fd = getattr(target, "slave_fd", None)
    if fd is None:
        return
    deadline = time.monotonic() + timeout_s
    buf = bytearray(4)
    while time.monotonic() < deadline and not stop.is_set():
        try:
            fcntl.ioctl(fd, termios.FIONREAD, buf)
        except OSError:
            return
        if int.from_bytes(bytes(buf), sys.byteorder) == 0:
            return
        stop.wait(0.05)
