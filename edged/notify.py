"""systemd notification protocol (sd_notify): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

By default the datagram goes out on our own **non-blocking** AF_UNIX socket to
``$NOTIFY_SOCKET`` (a filesystem path, or an abstract socket written ``@name``).
systemd-python's ``systemd.daemon.notify`` is used only when asked for
(``prefer_systemd_python=True``): libsystemd's ``sd_notify`` sends on a blocking
socket, and when the receiver's buffer is full the call blocks the calling thread
— measured here, it froze the whole daemon (ingest stopped) — whereas a full
buffer costs our sender one dropped STATUS/WATCHDOG message. Without
``NOTIFY_SOCKET`` (not started by systemd) every call is a cheap no-op. Sending
never raises: a failed notification must not take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable, Mapping, Optional

log = logging.getLogger(__name__)


def _systemd_notify() -> Optional[Callable[[str], Any]]:
    try:
        from systemd import daemon  # type: ignore[import-not-found,attr-defined,unused-ignore]
    except ImportError:
        return None
    return getattr(daemon, "notify", None)


class Notifier:
    """Sends sd_notify messages. ``enabled`` is False when there is no NOTIFY_SOCKET."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None, prefer_systemd_python: bool = False) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        self.enabled = bool(self.address)
        self.watchdog_usec = 0
        wd = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        if wd.isdigit() and (not wd_pid or wd_pid == str(os.getpid())):
            self.watchdog_usec = int(wd)
        self._sd = _systemd_notify() if (prefer_systemd_python and self.enabled) else None
        self.via = "systemd-python" if self._sd else ("socket" if self.enabled else "off")
        self._sock: Optional[socket.socket] = None
        self._warned = False

    @property
    def watchdog_interval_s(self) -> Optional[float]:
        """How often to send WATCHDOG=1: half of WatchdogSec=, or None if the watchdog is off."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def _target(self) -> str:
        return "\0" + self.address[1:] if self.address.startswith("@") else self.address

    def notify(self, message: str) -> bool:
        if not self.enabled:
            return False
        try:
            if self._sd is not None:
                return bool(self._sd(message))
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self._target())
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %s failed: %s (further failures not logged)", self.address, exc)
                self._warned = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask systemd for more start-up (or stop) time: EXTEND_TIMEOUT_USEC= (systemd >= 236)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
