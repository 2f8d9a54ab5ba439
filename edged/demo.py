"""``make run``: the main job on an embedded default, start to finish, then clean up.

Starts real processes, exactly as on a device:

1. ``edged fog`` on loopback (the fog node),
2. ``edged sim --pty``: an MCU printing MLP inputs on a serial line (a pty pair),
3. ``edged run`` with both shipped models, a ZeroMQ source and that serial port,
4. ``edged sim --zmq``: a camera-like sender of CNN and MLP inputs in bursts,
5. ``edged tail -f`` on the decision log, so you watch every decision live.

Half-way the fog node is killed (``kill -9``): in-flight inputs fall back to local,
the circuit breaker opens, nothing is lost. Later a new fog node starts and the
probes bring offloading back. Then the senders stop, the daemon gets SIGTERM and
drains, and ``edged report`` prints the summary. Logs stay in ``run/last/``.

The CNN runs under the ``offload`` policy here so the offload -> fallback ->
resume cycle is visible; the MLP runs ``adaptive``, which keeps it local on a
machine where local inference (µs) beats a loopback round trip — the paper's finding.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, List, Optional

REPO = Path(__file__).resolve().parent.parent
EDGED = [sys.executable, "-m", "edged"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float, what: str) -> str:
    """Read proc.stdout until a line containing needle; raise with the output if it does not come."""
    deadline = time.monotonic() + timeout
    seen: List[str] = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return line.strip()
    raise RuntimeError(f"{what} did not report '{needle}' within {timeout:.0f}s:\n{''.join(seen)}")


def wait_for_file_text(path: Path, needle: str, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    text = path.read_text(errors="replace") if path.exists() else ""
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s:\n{text[-3000:]}")


class Procs:
    """Every child process, so each one is stopped however the demo ends."""

    def __init__(self) -> None:
        self.items: List[subprocess.Popen] = []

    def start(self, args: List[str], stdout: Any = None, **kw: Any) -> subprocess.Popen:
        p = subprocess.Popen(args, stdout=stdout if stdout is not None else subprocess.PIPE,
                             stderr=kw.pop("stderr", subprocess.STDOUT), text=True, cwd=str(REPO), **kw)
        self.items.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.items):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.items:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def write_config(path: Path, run_dir: Path, zmq_port: int, fog_port: int, serial_path: str, sink_port: int) -> None:
    path.write_text(f"""# written by make run (edged/demo.py); see systemd/edged.toml for every key
[daemon]
state_dir = "{run_dir / 'state'}"
status_interval_s = 1.0
shutdown_timeout_s = 15.0

[logs]
dir = "{run_dir / 'logs'}"
journal = "off"

[models]
backend = "auto"
threads = 1

[policy]
default = "adaptive"
[policy.models]
cnn = "offload"   # always offload while the fog is up: watch offload -> fallback -> resume
mlp = "adaptive"  # queue-aware: local when local is faster, which it is for the MLP

[local]
workers = 1

[fog]
endpoint = "tcp://127.0.0.1:{fog_port}"
timeout_ms = 300
breaker_failures = 3
probe_interval_s = 0.5

[power]
source = "auto"   # no INA219/jtop/hwmon here: logs 'no power sensor found' and carries on

[[sources]]
type = "zmq"
name = "zmq"
endpoint = "tcp://127.0.0.1:{zmq_port}"

[[sources]]
type = "serial"
name = "serial"
url = "{serial_path}"
framing = "lines"
baudrate = 921600
model = "mlp"

[[sinks]]
type = "zmq"      # every result on a PUB socket: python -m edged.sinks.watch tcp://127.0.0.1:{sink_port}
endpoint = "tcp://127.0.0.1:{sink_port}"
""")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="make run: fog + daemon + simulated sensors on loopback, then a summary")
    ap.add_argument("--seconds", type=float, default=12.0, help="how long the sensors send (default 12)")
    ap.add_argument("--rate", type=float, default=6.0, help="ZeroMQ bursts per second (default 6)")
    ap.add_argument("--burst", type=int, default=4, help="inputs per ZeroMQ burst (default 4)")
    ap.add_argument("--dir", type=Path, default=REPO / "run" / "last", help="where logs and state go")
    args = ap.parse_args(argv)

    run_dir = args.dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "logs").mkdir(parents=True)
    procs = Procs()
    fog_port, zmq_port, sink_port = free_port(), free_port(), free_port()
    tail: Optional[subprocess.Popen] = None
    daemon: Optional[subprocess.Popen] = None
    t0 = time.monotonic()
    try:
        say(f"starting the fog node on tcp://127.0.0.1:{fog_port}")
        fog = procs.start(EDGED + ["fog", "--bind", f"tcp://127.0.0.1:{fog_port}", "--workers", "2"])
        print(wait_for_line(fog, "serving", 60, "edged fog"), flush=True)

        say("starting a simulated serial sensor (MLP inputs as text lines on a pty)")
        sim_pty = procs.start(EDGED + ["sim", "--pty", "--model", "mlp", "--rate", "10",
                                       "--count", str(int(10 * args.seconds)), "--progress", "0"])
        serial_path = wait_for_line(sim_pty, "serial device ready at", 30, "edged sim --pty").rsplit(" ", 1)[-1]
        print(f"serial device: {serial_path}", flush=True)

        cfg = run_dir / "edged.toml"
        write_config(cfg, run_dir, zmq_port, fog_port, serial_path, sink_port)
        say(f"starting the daemon: edged run --config {cfg.relative_to(REPO) if cfg.is_relative_to(REPO) else cfg}")
        # the result subscriber connects first: ZeroMQ delivers to a subscriber only once its subscription arrived
        results_txt = open(run_dir / "results.txt", "w")  # noqa: SIM115 - the subscriber writes it until the end
        watcher = procs.start([sys.executable, "-m", "edged.sinks.watch", f"tcp://127.0.0.1:{sink_port}"],
                              stdout=results_txt)
        daemon_log = open(run_dir / "daemon.log", "w")  # noqa: SIM115 - the daemon child writes it until the end
        daemon = procs.start(EDGED + ["run", "--config", str(cfg)], stdout=daemon_log)
        wait_for_file_text(run_dir / "daemon.log", "ready in", 120, daemon, "edged run")
        for line in (run_dir / "daemon.log").read_text().splitlines():
            if "ready in" in line or "power" in line.lower():
                print(line.split(": ", 1)[-1], flush=True)

        say("live decisions (edged tail -f); a ZeroMQ sender starts now")
        tail = procs.start(EDGED + ["tail", "decisions", "-f", "--dir", str(run_dir / "logs")], stdout=sys.stdout)
        n_zmq = int(args.rate * args.seconds) * args.burst
        sim_zmq = procs.start(EDGED + ["sim", "--zmq", f"tcp://127.0.0.1:{zmq_port}", "--model", "all", "--rate",
                                       str(args.rate * args.burst), "--burst", str(args.burst), "--count", str(n_zmq),
                                       "--progress", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        third = args.seconds / 3
        time.sleep(third)
        say("kill -9 the fog node: in-flight inputs fall back to local, the breaker opens, nothing is lost")
        fog.kill()
        fog.wait()
        time.sleep(third)
        say("a new fog node starts on the same port: probes bring offloading back")
        fog2 = procs.start(EDGED + ["fog", "--bind", f"tcp://127.0.0.1:{fog_port}", "--workers", "2"])
        wait_for_line(fog2, "serving", 60, "edged fog (restart)")
        for sim in (sim_zmq, sim_pty):  # let both sensors finish what they were asked to send
            try:
                sim.wait(timeout=third + 10)
            except subprocess.TimeoutExpired:
                sim.terminate()
        time.sleep(0.5)

        say("senders done: SIGTERM to the daemon (it drains and writes every accepted input)")
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        time.sleep(0.5)
        if tail is not None:
            tail.send_signal(signal.SIGINT)
            tail.wait(timeout=10)
            tail = None
        daemon_log.close()
        print(f"daemon exited with {code} after {time.monotonic() - t0:.1f}s", flush=True)
        watcher.send_signal(signal.SIGINT)
        try:
            watcher.wait(timeout=5)
        except subprocess.TimeoutExpired:
            watcher.kill()
        results_txt.close()
        got = (run_dir / "results.txt").read_text(errors="replace").splitlines()
        say(f"results out: a subscriber on the ZeroMQ result sink (python -m edged.sinks.watch "
            f"tcp://127.0.0.1:{sink_port}) printed {len(got)} results; the first and last three:")
        for line in got[:3] + (["..."] if len(got) > 6 else []) + got[max(3, len(got) - 3):]:
            print(line, flush=True)
        say("summary (edged report)")
        sys.stdout.flush()
        subprocess.run(EDGED + ["report", str(run_dir / "logs")], cwd=str(REPO), check=False)
        print(f"\nlogs kept in {run_dir}/logs (decisions.jsonl, power.jsonl), daemon output in {run_dir}/daemon.log",
              flush=True)
        return 0 if code == 0 else 1
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()


def _reap_on_signal() -> None:
    # SIGTERM to `make run` takes the same cleanup path as Ctrl-C
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


if __name__ == "__main__":
    _reap_on_signal()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
