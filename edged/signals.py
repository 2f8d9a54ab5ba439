"""Signals turned into events without running Python code inside a signal handler.

``threading.Event.set()`` (or ``clear()``, logging, a print) inside a Python signal handler can
deadlock or raise: the handler runs in the main thread between two bytecodes, so when the main
thread is inside ``stop.wait()`` holding the event's condition lock (the bookkeeping before and
after the actual wait), ``stop.set()`` in the handler waits for that same non-reentrant lock
forever; a ``print``/log line in the handler while the main thread is writing to the same stream
raises ``RuntimeError: reentrant call``. Reproduced: a loop of ``stop.wait(0)`` with
``signal.signal(SIGTERM, lambda *_: stop.set())`` hangs on about one SIGTERM in four, with py-spy
showing ``Event.wait -> Condition._release_save -> <handler> -> Event.set -> Condition.__enter__``;
``edged sim`` hung that way under qemu (every bytecode is slow there, so the window is wide).

:func:`signal_actions` installs a Python-level handler that does nothing; the C-level handler
writes the signal number to a pipe (``signal.set_wakeup_fd``: async-signal-safe, from whichever
thread the kernel picked, numpy's BLAS threads included), and a watcher thread reading that pipe
runs the actions as ordinary code::

    stop = threading.Event()
    with stop_on_signals(stop):               # SIGINT and SIGTERM set stop
        while not stop.is_set():
            ...
            stop.wait(0.01)

    with signal_actions({signal.SIGTERM: stop.set, signal.SIGHUP: reopen.set}):
        ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
from typing import Callable, Dict, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signal_actions(actions: Mapping[int, Callable[[], object]]) -> Iterator[None]:
    """Run ``actions[signum]()`` in a watcher thread each time that signal arrives, inside the block.

    The previous handlers and wakeup fd are restored on exit. Must be entered from the main thread
    (Python installs handlers only there); elsewhere it raises ``ValueError`` like ``signal.signal``.
    An action that raises is logged and the watcher goes on.
    """
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("signal_actions() must be entered from the main thread")
    wanted: Dict[int, Callable[[], object]] = {int(sig): fn for sig, fn in actions.items()}
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    closing = threading.Event()

    def watch() -> None:
        while not closing.is_set():
            ready, _, _ = select.select([r], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(r, 512)
            except BlockingIOError:
                continue
            for signum in data:  # one byte per signal received (coalesced by the kernel if pending)
                fn = wanted.get(signum)
                if fn is None:
                    continue
                try:
                    fn()
                except Exception:  # an action must not kill the watcher
                    log.exception("action for signal %d failed", signum)

    watcher = threading.Thread(target=watch, name="edged-signals", daemon=True)
    watcher.start()
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    previous = {}
    try:
        for sig in wanted:
            previous[sig] = signal.signal(sig, _noted)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        closing.set()
        try:
            os.write(w, b"\0")  # wake the watcher now rather than at its next 1 s select timeout
        except OSError:
            pass
        watcher.join(2.0)
        os.close(r)
        os.close(w)


def stop_on_signals(stop: threading.Event,
                    signals: Sequence[int] = STOP_SIGNALS) -> contextlib.AbstractContextManager[None]:
    """``stop.set()`` on each of ``signals`` (SIGINT, SIGTERM), safely: see :func:`signal_actions`."""
    return signal_actions({sig: stop.set for sig in signals})


def _noted(signum: int, frame: object) -> None:
    """The Python-level handler: nothing to do, the wakeup pipe already carries the signal number."""
