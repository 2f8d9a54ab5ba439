"""edged.signals: signals become events from a watcher thread, never inside a Python signal handler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edged.signals import signal_actions, stop_on_signals
from tests.helpers_ingest import wait_until

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(30)
def test_actions_run_per_signal_and_previous_handlers_come_back() -> None:
    stop, hup, calls = threading.Event(), threading.Event(), []

    def boom() -> None:
        calls.append("usr1")
        raise RuntimeError("an action that fails must not stop the watcher")

    before = signal.getsignal(signal.SIGHUP)
    with signal_actions({signal.SIGTERM: stop.set, signal.SIGHUP: hup.set, signal.SIGUSR1: boom}):
        os.kill(os.getpid(), signal.SIGUSR1)
        assert wait_until(lambda: calls == ["usr1"], 5)
        os.kill(os.getpid(), signal.SIGHUP)
        assert hup.wait(5) and not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGHUP) is before


def test_only_the_main_thread_may_install() -> None:
    errors = []

    def worker() -> None:
        try:
            with stop_on_signals(threading.Event()):
                pass
        except ValueError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=worker)
    t.start()
    t.join(5)
    assert errors and "main thread" in errors[0]


@pytest.mark.timeout(120)
def test_stop_on_signals_never_deadlocks_a_main_thread_inside_event_wait() -> None:
    """Event.set() in a Python signal handler deadlocks when the signal lands while the main thread
    holds the event's lock inside stop.wait() (with a plain handler this loop hangs within a few dozen
    rounds); stop_on_signals sets it from a watcher thread."""
    code = """
import os, signal, threading
from edged.signals import stop_on_signals
stop = threading.Event()
with stop_on_signals(stop):
    for i in range(300):
        stop.clear()
        threading.Timer(0.0005 * (i % 7), os.kill, (os.getpid(), signal.SIGTERM)).start()
        while not stop.is_set():
            stop.wait(0)  # the event's lock is held for most of each call
print("rounds done", flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=100)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "rounds done"
