"""``edged sim``: a sensor simulator speaking wire protocol v1 and v2.

Drives any catalogue model (``--models-dir`` adds the user's): replays its
validation set, or seeded synthetic inputs of its declared shapes when it has
none (``--shape`` picks a dynamic model's shape), or a user ``.npz``/``.csv``,
to a serial port, a fresh pty pair, or a ZeroMQ endpoint, at a rate or as fast
as possible, optionally in bursts, with jitter and with injected corrupt frames.
A model with one data input of fixed shape is sent as v1 (one array); a model
with several data inputs or a dynamic shape as v2 (named tensors with their
shapes: ZeroMQ one frame per tensor, COBS back to back, JSON ``inputs``).

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
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edged.errors import ConfigError, InputError, ManifestError, UnknownModelError
from edged.runtime.base import TensorSpec
from edged.signals import stop_on_signals
from edged.sources.framing import build_cobs_frame, build_tensor_cobs_frame, build_tensor_frames, format_line

FRAMINGS = ("lines", "cobs")
#: Seeded synthetic inputs generated per model that has no validation set (cycled).
SYNTHETIC_ROWS = 64


class FeedRows:
    """The inputs of a model sent as v2: row ``i`` is ``{input name: one sample}`` (data inputs only).

    ``feeds`` holds each input with a leading row axis, or without one for a value shared by
    every row (an unbatched input such as a sample rate). ``where`` says where they came from.
    """

    def __init__(self, feeds: Mapping[str, np.ndarray], per_row: Mapping[str, bool], where: str = "") -> None:
        self.feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        self.per_row = dict(per_row)
        self.where = where
        counts = {len(v) for k, v in self.feeds.items() if self.per_row[k]}
        if len(counts) > 1:
            raise InputError(f"edged sim: inputs have different numbers of rows: "
                             f"{ {k: len(v) for k, v in self.feeds.items() if self.per_row[k]} }")
        self.n = counts.pop() if counts else 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        return {k: (v[i] if self.per_row[k] else v) for k, v in self.feeds.items()}


#: What is sent per model: rows of the one input (v1), or :class:`FeedRows` (v2).
SimRows = Union[np.ndarray, FeedRows]
#: One input as a target sends it: an array (v1) or input name -> array (v2).
SimInput = Union[np.ndarray, Mapping[str, np.ndarray]]

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
    models_dirs: Sequence[str] = (),
    seed: int = 0,
    shapes: Optional[Mapping[str, Sequence[int]]] = None,
) -> Dict[str, SimRows]:
    """What to send per model, in the model's canonical layout and dtype.

    ``models`` may contain ``"all"``. With ``specs`` (name -> TensorSpec, the v1 form) each
    model's shipped ``validation.npz`` is read as rows of its one input. Otherwise the catalogue
    (shipped models plus ``models_dirs``) decides: each model's validation set, or
    :data:`SYNTHETIC_ROWS` seeded synthetic inputs (``seed``) of its declared shapes when it has
    none; ``shapes`` (input name, or ``""`` for the primary input -> shape with or without the batch
    axis) picks a dynamic model's shape. ``data_path`` replays one file for exactly one model.
    A model with one data input of fixed shape gets an array of rows (sent as v1), any other a
    :class:`FeedRows` (sent as v2).
    """
    entries: Dict[str, Any] = {}
    if specs is None:
        entries = _catalogue_entries(models_dirs)
        known: Sequence[str] = sorted(entries)
    else:
        known = sorted(specs)
    names: List[str] = []
    for m in models or ["all"]:
        for part in m.split(","):
            part = part.strip()
            if part == "all":
                names += [n for n in known if n not in names] if known else _dirs_with_validation()
            elif part and part not in names:
                names.append(part)
    if not names:
        raise InputError("edged sim: no models to simulate (none found in the catalogue)")
    if known:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UnknownModelError(f"unknown model(s) {unknown}; known: {list(known)}")
    if data_path is not None and len(names) != 1:
        raise ConfigError(f"--data replays one model; got {names}")
    out: Dict[str, SimRows] = {}
    for name in names:
        if name in entries:
            out[name] = _entry_rows(entries[name], data_path, seed, shapes or {})
            continue
        path = Path(data_path) if data_path else _models_dir() / name / "validation.npz"
        spec = specs.get(name) if specs else None
        out[name] = _spec_rows(name, path, spec)
    return out


def _spec_rows(name: str, path: Path, spec: Optional[TensorSpec]) -> np.ndarray:
    from edged.sources.replay import load_inputs

    if not path.exists():
        raise InputError(f"edged sim: no inputs for model {name!r}: {path} does not exist")
    rows = load_inputs(path)
    if spec is not None:
        if not all(spec.sample_shape):
            raise InputError(f"edged sim: model {name!r} has a dynamic input {spec.sample_shape}: "
                             "simulate it from the catalogue (it sends the shape)")
        shape = (len(rows),) + tuple(int(d) for d in spec.sample_shape if d)
        if int(np.prod(shape[1:])) * len(rows) != rows.size:
            raise InputError(
                f"{path}: rows of {rows.shape[1:]} do not fit model {name!r} input {spec.sample_shape}"
            )
        rows = rows.reshape(shape).astype(spec.dtype)
    return np.ascontiguousarray(rows)


def parse_shape(text: str) -> Tuple[str, Tuple[int, ...]]:
    """``--shape`` value: ``[INPUT=]DIMS`` with DIMS like ``64x48x1`` or ``1,64,48,1`` -> (input or "", dims)."""
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.replace(",", "x").split("x") if d.strip())
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(f"--shape {text!r}: expected [INPUT=]DIMS with positive integers, "
                          "e.g. 64x48x1 or x=1x64x48x1")
    return name.strip(), shape


def _shapes_for(entry: Any, shapes: Mapping[str, Sequence[int]]) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Full shapes (batch axis first) of ``entry``'s dynamic inputs from ``--shape`` values; None if none apply."""
    out: Dict[str, Tuple[int, ...]] = {}
    for inp in entry.inputs:
        if not inp.dynamic:
            continue
        given = shapes.get(inp.name, shapes.get("") if inp.name == entry.primary_input.name else None)
        if given is None:
            continue
        dims = tuple(int(d) for d in given)
        full = (1, *dims) if inp.batched and len(dims) == len(inp.sample_shape) else dims
        want = inp.shape
        if len(full) != len(want) or any(w is not None and w != d for w, d in zip(want[1:] if inp.batched else want,
                                                                                   full[1:] if inp.batched else full)):
            raise ConfigError(f"--shape {'x'.join(map(str, dims))}: model {entry.name!r} input {inp.name!r} is "
                              f"{['?' if d is None else d for d in want]} (? = any size)")
        out[inp.name] = full
    return out or None


def _entry_rows(entry: Any, data_path: Optional[str], seed: int, shapes: Mapping[str, Sequence[int]]) -> SimRows:
    """One catalogue model's inputs: ``data_path``, else its validation set, else seeded synthetic ones."""
    data_inputs = [i for i in entry.inputs if not i.state]
    chosen = _shapes_for(entry, shapes)
    feeds: Dict[str, np.ndarray]
    if data_path is not None:
        feeds = _file_feeds(entry, Path(data_path))
        where = str(data_path)
    elif chosen is None and entry.validation_path is not None:
        try:
            feeds, _ = entry.load_validation_feeds()
        except ManifestError as exc:
            raise InputError(f"edged sim: {exc}") from None
        where = f"validation set {entry.validation_path}"
    else:
        if chosen is None and entry.profile_shapes:
            chosen = dict(entry.profile_shapes[0])
        feeds = entry.make_feeds(chosen, seed=seed, batch=SYNTHETIC_ROWS)
        where = f"{SYNTHETIC_ROWS} synthetic inputs (seed {seed})"
    per_row = {}
    for i in data_inputs:
        arr = feeds[i.name]
        per_row[i.name] = arr.ndim == len(i.sample_shape) + 1
    primary = entry.primary_input
    if len(data_inputs) == 1 and not primary.dynamic:
        rows = np.asarray(feeds[primary.name], dtype=primary.dtype)
        if not per_row[primary.name]:
            rows = rows[np.newaxis]
        shape = (len(rows),) + tuple(int(d) for d in primary.sample_shape)
        if rows.size != int(np.prod(shape)):
            raise InputError(f"edged sim: {where}: rows of {rows.shape[1:]} do not fit model {entry.name!r} input "
                             f"{list(primary.sample_shape)}")
        return np.ascontiguousarray(rows.reshape(shape))
    return FeedRows({i.name: np.asarray(feeds[i.name], dtype=i.dtype) for i in data_inputs}, per_row, where)


def _file_feeds(entry: Any, path: Path) -> Dict[str, np.ndarray]:
    """``--data`` for a catalogue model: an ``.npz`` with an array per data input (``x`` = the primary), or
    rows of the primary input (``.npz`` ``x``, ``.npy``, ``.csv``) for a model with one data input."""
    from edged.sources.replay import load_inputs

    data_inputs = [i for i in entry.inputs if not i.state]
    if not path.exists():
        raise InputError(f"edged sim: {path} does not exist")
    if path.suffix == ".npz" and len(data_inputs) > 1:
        with np.load(path) as z:
            out = {}
            for i in data_inputs:
                key = "x" if i.name == entry.primary_input.name and "x" in z else i.name
                if key not in z:
                    raise InputError(f"{path}: no array {i.name!r} for model {entry.name!r} (has {sorted(z.files)})")
                out[i.name] = np.asarray(z[key])
            return out
    if len(data_inputs) > 1:
        raise InputError(f"edged sim: model {entry.name!r} takes inputs {[i.name for i in data_inputs]}: --data must "
                         "be an .npz with one array per input")
    rows = load_inputs(path)
    p = entry.primary_input
    if p.dynamic:
        return {p.name: np.asarray(rows)}
    return {p.name: np.asarray(rows).reshape((len(rows),) + tuple(int(d) for d in p.sample_shape))}


def _catalogue_entries(models_dirs: Sequence[str] = ()) -> Dict[str, Any]:
    try:
        from edged.models import Catalogue
    except ImportError:
        return {}
    try:
        return Catalogue.discover(list(models_dirs)).entries()
    except ManifestError as exc:  # a --models-dir that does not exist
        raise ConfigError(f"edged sim: {exc}") from None


def _dirs_with_validation() -> List[str]:
    root = _models_dir()
    return sorted(p.parent.name for p in root.glob("*/validation.npz")) if root.is_dir() else []


# ----------------------------------------------------------------------------- targets


class Target:
    """Where the simulator writes. ``send`` raises :class:`TargetStopped` when stop is set while blocked."""

    path: str = ""

    def send_input(self, model: str, seq: int, array: SimInput, ts: float) -> int:
        """Send one valid input (an array: v1; input name -> array: v2); return bytes sent."""
        raise NotImplementedError

    def send_corrupt(self, rng: random.Random, model: str, array: SimInput) -> int:
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

    def encode(self, model: str, seq: int, array: SimInput, ts: float) -> bytes:
        if isinstance(array, Mapping):  # v2: several named tensors
            if self.framing == "lines":
                if len(array) != 1:
                    raise ConfigError(f"edged sim: model {model!r} takes inputs {list(array)}: a line carries one; "
                                      "use --framing cobs")
                return format_line(next(iter(array.values())).ravel(), model)
            return build_tensor_cobs_frame({"model": model, "seq": seq, "ts": round(ts, 6)}, array)
        if self.framing == "lines":
            return format_line(array.ravel(), model)
        header = {"model": model, "seq": seq, "ts": round(ts, 6)}
        return build_cobs_frame(header, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())

    def send_input(self, model: str, seq: int, array: SimInput, ts: float) -> int:
        return self.write(self.encode(model, seq, array, ts))

    def send_corrupt(self, rng: random.Random, model: str, array: SimInput) -> int:
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

    def send_input(self, model: str, seq: int, array: SimInput, ts: float) -> int:
        import json

        if isinstance(array, Mapping):  # v2: header with "tensors", one frame per tensor (or JSON "inputs")
            if self.json_messages:
                msg = {"model": model, "seq": seq, "ts": round(ts, 6),
                       "inputs": {k: np.asarray(v).tolist() for k, v in array.items()}}
                return self._send([json.dumps(msg).encode()])
            return self._send(build_tensor_frames({"model": model, "seq": seq, "ts": round(ts, 6)}, array))
        if self.json_messages:
            msg = {"model": model, "seq": seq, "ts": round(ts, 6), "data": array.ravel().tolist()}
            return self._send([json.dumps(msg).encode()])
        header = json.dumps({"model": model, "seq": seq, "ts": round(ts, 6)}, separators=(",", ":")).encode()
        return self._send([header, np.ascontiguousarray(array).tobytes()])

    def send_corrupt(self, rng: random.Random, model: str, array: SimInput) -> int:
        kind = rng.randrange(3)
        if isinstance(array, Mapping):
            frames = build_tensor_frames({"model": model}, array)
            if kind == 0:
                return self._send([b"{not json", *frames[1:]])
            if kind == 1:
                return self._send([frames[0], frames[1][:-1], *frames[2:]])  # one tensor a byte short
            return self._send([b'{"model":"no_such_model"}', *frames[1:]])
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
    inputs: Mapping[str, SimRows],
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
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                   help="extra models directory (repeatable), as for edged run: its models can be simulated too")
    p.add_argument("--data", metavar="FILE",
                   help="replay this .npz (array x, or one array per input) or .csv instead of the validation set")
    p.add_argument("--shape", action="append", default=[], metavar="[INPUT=]DIMS",
                   help="shape of a dynamic model's input, e.g. 64x48x1 (the primary input) or x=1x64x48x1 "
                        "(repeatable; default: the manifest's first profile_shapes, or the validation set's)")
    p.add_argument("--rate", type=float, default=10.0, help="inputs per second (0 = as fast as possible; default 10)")
    p.add_argument("--count", type=int, default=0, help="inputs to send (0 = forever, the default)")
    p.add_argument("--burst", type=int, default=1, help="inputs sent back to back per period (default 1)")
    p.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="uniform ±jitter on each pause (ms)")
    p.add_argument("--corrupt", type=float, default=0.0, metavar="FRACTION",
                   help="probability of injecting a corrupt frame before an input (0..1)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed for jitter, corruption and synthetic inputs (models without a validation set)")
    p.add_argument("--progress", type=float, default=5.0, metavar="S", help="progress line interval (s, 0 = off)")


def main(args: argparse.Namespace) -> int:
    if not 0.0 <= args.corrupt <= 1.0:
        raise ConfigError(f"--corrupt must be between 0 and 1, got {args.corrupt}")
    if args.rate < 0 or args.count < 0 or args.burst < 1 or args.jitter < 0:
        raise ConfigError("--rate, --count and --jitter must be >= 0 and --burst >= 1")
    shapes = dict(parse_shape(t) for t in args.shape)
    inputs = load_sim_inputs(args.model or ["all"], args.data, models_dirs=args.models_dir, seed=args.seed,
                             shapes=shapes)
    if args.zmq is None:
        check_framing(inputs, args.framing)
    for name, rows in inputs.items():
        if isinstance(rows, FeedRows):
            shown = ", ".join(f"{k} {list(v.shape[1:] if rows.per_row[k] else v.shape)}" for k, v in rows.feeds.items())
            print(f"edged sim: {name}: {rows.where}; protocol v2 ({shown})", file=sys.stderr, flush=True)
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


def check_framing(inputs: Mapping[str, SimRows], framing: str) -> None:
    """``lines`` carry one input per line: refuse (ConfigError) a model with several data inputs or a
    multi-dimensional dynamic input before sending anything."""
    if framing != "lines":
        return
    for name, rows in inputs.items():
        if not isinstance(rows, FeedRows):
            continue
        if len(rows.feeds) > 1:
            raise ConfigError(f"edged sim: model {name!r} takes inputs {list(rows.feeds)}: a line carries one input; "
                              "use --framing cobs (or --zmq)")
        (key, arr), = rows.feeds.items()
        if (arr.ndim - (1 if rows.per_row[key] else 0)) > 1:
            raise ConfigError(f"edged sim: model {name!r} has a dynamic input {key!r} of {arr.ndim - 1} dimensions: "
                              "a line cannot carry its shape; use --framing cobs (or --zmq)")


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
