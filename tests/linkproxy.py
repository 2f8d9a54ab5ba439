"""A user-space TCP proxy that emulates a network link (``tc netem`` is not available here).

``LinkProxy(0, "127.0.0.1", fog_port)`` listens on a free port (``proxy.port``) and
forwards every connection to the target, applying per direction:

* ``latency_ms`` — one-way delay added to every chunk;
* ``bandwidth_Bps`` — bytes/s serialisation rate (``None`` = unlimited); chunks queue behind
  each other, so a burst takes ``bytes / bandwidth`` to drain, like a real bottleneck;
* ``loss`` — probability that a chunk is "lost". Dropping bytes inside a TCP stream would
  corrupt it, so loss is emulated as what TCP makes of it: the chunk (and everything behind
  it) arrives ``retransmit_ms`` later (a retransmission timeout);
* ``outage`` — every open connection is reset (RST) and new ones are accepted and reset
  at once, so the client sees the peer vanish; ZeroMQ reconnects by itself once it ends;
* ``jitter_ms`` — each chunk's latency is ``latency_ms ± jitter_ms`` (uniform); TCP keeps the
  order, so a late chunk holds back the ones behind it (head-of-line blocking, as on Wi-Fi);
* ``stall_ms`` every ``stall_every_s`` — nothing is delivered during the last ``stall_ms`` of
  each period (counted from when the setting was applied); what would arrive then arrives at
  the end of the stall (a radio that stops, then flushes).

``python -m tests.linkproxy --target-port P [settings JSON]`` runs one in its own process (so it
can be pinned to another core than the edge it serves): it prints ``port N``, then reads
commands from stdin, one JSON line each: ``{"configure": {...}}``, ``{"schedule": [[t_s, {...}],
...]}``, ``{"quit": true}``.

Settings change at run time (``configure``, ``outage``) or on a timeline (``schedule``);
a change applies to chunks read after it.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Deque, List, Mapping, Optional, Sequence, Tuple

_CHUNK = 65536


@dataclass(frozen=True)
class LinkSettings:
    """Link parameters, each applied to both directions."""

    latency_ms: float = 0.0
    bandwidth_Bps: Optional[float] = None
    loss: float = 0.0
    retransmit_ms: float = 200.0
    outage: bool = False
    jitter_ms: float = 0.0
    stall_ms: float = 0.0
    stall_every_s: float = 0.0

    def stalled_until(self, t: float, anchor: float) -> float:
        """``t`` moved to the end of the stall it falls in (monotonic s), or ``t`` if none."""
        if self.stall_ms <= 0 or self.stall_every_s <= 0 or t < anchor:
            return t
        period = self.stall_every_s
        k, phase = divmod(t - anchor, period)
        if phase >= period - self.stall_ms / 1000.0:
            return anchor + (k + 1) * period
        return t


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) so the peer notices at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Direction:
    """One direction of one connection: a reader thread timestamps chunks, a writer delivers them."""

    def __init__(self, proxy: LinkProxy, conn: _Connection, src: socket.socket, dst: socket.socket,
                 name: str) -> None:
        self.proxy = proxy
        self.conn = conn
        self.src = src
        self.dst = dst
        self.cv = threading.Condition()
        self.chunks: Deque[Tuple[float, bytes]] = deque()
        self.eof = False
        self.tx_free_at = 0.0
        self.last_deliver = 0.0
        self.reader = threading.Thread(target=self._read, name=f"linkproxy-{name}-r", daemon=True)
        self.writer = threading.Thread(target=self._write, name=f"linkproxy-{name}-w", daemon=True)

    def start(self) -> None:
        self.reader.start()
        self.writer.start()

    def _read(self) -> None:
        while not self.conn.closed.is_set():
            try:
                r, _, _ = select.select([self.src], [], [], 0.1)
                if not r:
                    continue
                data = self.src.recv(_CHUNK)
            except (OSError, ValueError):
                data = b""
            now = time.monotonic()
            with self.cv:
                if not data:
                    self.eof = True
                    self.cv.notify()
                    return
                s = self.proxy.settings
                start = max(now, self.tx_free_at)
                self.tx_free_at = start + (len(data) / s.bandwidth_Bps if s.bandwidth_Bps else 0.0)
                latency = s.latency_ms
                if s.jitter_ms > 0:
                    latency = max(0.0, latency + self.proxy.rng.uniform(-s.jitter_ms, s.jitter_ms))
                deliver = self.tx_free_at + latency / 1000.0
                if s.loss > 0 and self.proxy.rng.random() < s.loss:
                    deliver += s.retransmit_ms / 1000.0
                deliver = s.stalled_until(deliver, self.proxy.stall_anchor)
                deliver = max(deliver, self.last_deliver)  # TCP delivers in order
                self.last_deliver = deliver
                self.chunks.append((deliver, data))
                self.cv.notify()

    def _write(self) -> None:
        while not self.conn.closed.is_set():
            with self.cv:
                if not self.chunks:
                    if self.eof:
                        break
                    self.cv.wait(0.1)
                    continue
                deliver, data = self.chunks[0]
                wait = deliver - time.monotonic()
                if wait > 0:
                    self.cv.wait(min(wait, 0.1))
                    continue
                self.chunks.popleft()
            try:
                self.dst.sendall(data)
            except OSError:
                break
        self.conn.close()


class _Connection:
    def __init__(self, proxy: LinkProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self.up = _Direction(proxy, self, client, upstream, "up")
        self.down = _Direction(proxy, self, upstream, client, "down")

    def start(self) -> None:
        self.up.start()
        self.down.start()

    def close(self, rst: bool = False) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for s in (self.client, self.upstream):
            if rst:
                _reset(s)
            else:
                try:
                    s.close()
                except OSError:
                    pass


class LinkProxy:
    """TCP proxy ``127.0.0.1:port → target_host:target_port`` with an emulated link.

    Args:
        listen_port: port to listen on (0 = a free one; read :attr:`port`).
        target_host / target_port: where connections are forwarded.
        seed: random seed for the loss emulation.
        **settings: initial :class:`LinkSettings` fields.
    """

    def __init__(self, listen_port: int = 0, target_host: str = "127.0.0.1", target_port: int = 0,
                 seed: int = 0, **settings: Any) -> None:
        self.target = (target_host, target_port)
        self.settings = LinkSettings(**settings)
        self.stall_anchor = time.monotonic()  # stall periods count from when the stall setting was applied
        self.rng = random.Random(seed)
        self._lock = threading.Lock()
        self._conns: List[_Connection] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", listen_port))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name="linkproxy-accept", daemon=True)
        self._thread.start()
        self._schedules: List[threading.Thread] = []

    @property
    def endpoint(self) -> str:
        """ZeroMQ endpoint of the proxy."""
        return f"tcp://127.0.0.1:{self.port}"

    def configure(self, **changes: Any) -> LinkSettings:
        """Change link settings (fields of :class:`LinkSettings`); returns the new settings."""
        outage = changes.get("outage")
        with self._lock:
            self.settings = replace(self.settings, **changes)
            if "stall_ms" in changes or "stall_every_s" in changes:
                self.stall_anchor = time.monotonic()
        if outage:
            self._reset_all()
        return self.settings

    def outage(self, on: bool = True) -> None:
        """Start (reset every connection, refuse new ones) or end an outage."""
        self.configure(outage=on)

    def schedule(self, steps: Sequence[Tuple[float, Mapping[str, Any]]]) -> threading.Thread:
        """Apply ``settings`` at ``t_s`` seconds from now, for each ``(t_s, settings)`` step."""
        t0 = time.monotonic()

        def run() -> None:
            for t_s, changes in sorted(steps, key=lambda s: s[0]):
                if self._stop.wait(max(0.0, t0 + t_s - time.monotonic())):
                    return
                self.configure(**dict(changes))

        th = threading.Thread(target=run, name="linkproxy-schedule", daemon=True)
        th.start()
        self._schedules.append(th)
        return th

    def _reset_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close(rst=True)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._listener], [], [], 0.1)
                if not r:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                continue
            if self.settings.outage:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
                upstream.settimeout(None)
            except OSError:
                _reset(client)  # target down: the client sees the connection die, like a dead host
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, client, upstream)
            with self._lock:
                self._conns = [c for c in self._conns if not c.closed.is_set()]
                self._conns.append(conn)
                self.accepted += 1
            conn.start()

    def close(self) -> None:
        """Stop accepting, close every connection, stop schedules."""
        self._stop.set()
        self._thread.join(2.0)
        try:
            self._listener.close()
        except OSError:
            pass
        self._reset_all()

    def __enter__(self) -> LinkProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a proxy in this process, driven by JSON lines on stdin (see the module docstring)."""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description="TCP proxy with an emulated link, driven by JSON lines on stdin")
    ap.add_argument("--target-host", default="127.0.0.1")
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("settings", nargs="?", default="{}", help="initial LinkSettings as JSON")
    args = ap.parse_args(argv)
    proxy = LinkProxy(0, args.target_host, args.target_port, seed=args.seed, **json.loads(args.settings))
    print(f"port {proxy.port}", flush=True)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            if "configure" in cmd:
                proxy.configure(**cmd["configure"])
            if "schedule" in cmd:
                proxy.schedule([(float(t), dict(c)) for t, c in cmd["schedule"]])
            if cmd.get("quit"):
                break
    finally:
        proxy.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
