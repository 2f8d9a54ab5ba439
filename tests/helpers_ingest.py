"""Shared helpers for the ingest tests: specs, a real pty pair, a collecting sink."""

from __future__ import annotations

import os
import threading
import time
import tty
from typing import Callable, Dict, List

import numpy as np

from edged.runtime.base import TensorSpec
from edged.sources.sample import Sample

SPECS: Dict[str, TensorSpec] = {
    "mlp": TensorSpec("input", (None, 30), "float32", "NC"),
    "cnn": TensorSpec("input", (None, 8, 8, 1), "float32", "NHWC"),
    "counts": TensorSpec("input", (None, 4), "int16", "NC"),
}


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, step: float = 0.01) -> bool:
    """Poll ``cond`` until true or ``timeout`` s; returns the last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


class Collector:
    """A sink that keeps every sample (thread-safe)."""

    def __init__(self) -> None:
        self.samples: List[Sample] = []
        self._lock = threading.Lock()

    def __call__(self, sample: Sample) -> bool:
        with self._lock:
            self.samples.append(sample)
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self.samples)


class PtyPair:
    """A raw-mode pty: tests write to ``master``; the source opens ``path`` (the slave)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master, view[:65536])
            view = view[n:]

    def writer_thread(self, chunks: List[bytes]) -> threading.Thread:
        def write() -> None:
            for c in chunks:
                self.write_all(c)

        t = threading.Thread(target=write, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def mlp_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 30)).astype(np.float32)


# --------------------------------------------------------------------------- docs/protocol.md examples


def hexdump(data: bytes) -> str:
    """``offset  hex bytes  |ascii|`` lines, 16 bytes per line (as in docs/protocol.md)."""
    out = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        hexes = " ".join(f"{c:02x}" for c in chunk).ljust(47)
        text = "".join(chr(c) if 32 <= c < 127 else "." for c in chunk)
        out.append(f"{i:04x}  {hexes}  |{text}|")
    return "\n".join(out)


def protocol_examples() -> Dict[str, str]:
    """Every worked example of docs/protocol.md, computed by the real encoder."""
    import json as _json
    import zlib as _zlib

    from edged.sources.framing import build_body, build_cobs_frame, cobs_encode, format_line

    x = np.array([1.0, -2.5, 0.0], dtype=np.float32)
    header = {"model": "demo", "seq": 7}
    head = _json.dumps(header, separators=(",", ":")).encode()
    body = build_body(header, x.tobytes())
    return {
        "zmq-header": hexdump(head),
        "zmq-payload": hexdump(x.tobytes()),
        "zmq-json": _json.dumps({"model": "demo", "seq": 7, "data": x.tolist()}),
        "lines": format_line(x, "demo").decode().rstrip("\n"),
        "cobs-body": hexdump(body),
        "cobs-crc": f"0x{_zlib.crc32(body[:-4]):08x}",
        "cobs-frame": hexdump(build_cobs_frame(header, x.tobytes())),
        "cobs-long": hexdump(cobs_encode(b"\x11" * 300)[:4]) + "  ...  (254 x 0x11, then 0x2f, 46 x 0x11)",
    }
