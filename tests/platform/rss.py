"""The daemon's memory with one model and with both: VmRSS / VmHWM of a real ``edged run``.

Starts ``edged run`` as systemd would (a NOTIFY_SOCKET to wait for READY=1), feeds it inputs with
``edged sim`` over ZeroMQ for ``--seconds``, reads ``/proc/<pid>/status`` every 0.5 s, then stops it
with SIGTERM. For each configuration it prints the peak VmRSS, VmHWM and RssAnon (MiB), and the same
for a bare ``python3 -c 'import numpy'`` baseline: under qemu-user the figures include the
emulator's own memory (translated code, its heap), which the baseline bounds.

Used by ``make test-arm64`` (tests/platform/arm64.sh) for the Pi Zero 2 W budget; it runs on any host::

    .venv/bin/python tests/platform/rss.py --seconds 20 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]

#: name -> ([models] table body, models edged sim sends)
CONFIGS: Dict[str, Tuple[str, str]] = {
    "mlp (onnx)": ('enabled = ["mlp"]\nbackend = "onnx"', "mlp"),
    "cnn (onnx)": ('enabled = ["cnn"]\nbackend = "onnx"', "cnn"),
    "mlp + cnn (onnx)": ('enabled = ["mlp", "cnn"]\nbackend = "onnx"', "mlp,cnn"),
    "mlp + cnn (litert)": ('enabled = ["mlp", "cnn"]\nbackend = "litert"', "mlp,cnn"),
}


def _status(pid: int) -> Dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process in MiB ({} once it is gone)."""
    out: Dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024.0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, port: int, models: str) -> Path:
    path = tmp / "edged.toml"
    path.write_text(
        f"""[daemon]
state_dir = "{tmp / 'state'}"
profile_repeats = 1
[logs]
dir = "{tmp / 'logs'}"
journal = "off"
[models]
{models}
[fog]
enabled = false
[power]
source = "none"
[[sources]]
type = "zmq"
endpoint = "tcp://127.0.0.1:{port}"
"""
    )
    return path


def measure(name: str, models: str, sim_models: str, seconds: float, rate: float) -> Dict[str, object]:
    """Run the daemon with one configuration; peak memory figures and how many inputs it decided."""
    with tempfile.TemporaryDirectory(prefix="edged-rss-") as d:
        tmp = Path(d)
        port = _free_port()
        cfg = _config(tmp, port, models)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = str(tmp / "notify")
        notify.bind(notify_path)
        notify.settimeout(1.0)
        env = {**os.environ, "NOTIFY_SOCKET": notify_path, "PYTHONUNBUFFERED": "1"}
        t0 = time.monotonic()
        daemon = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)], cwd=str(REPO),
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ready_s: Optional[float] = None
        peak: Dict[str, float] = {}
        sim: Optional[subprocess.Popen] = None
        try:
            deadline = t0 + 900  # first start profiles each model; slow under emulation
            while ready_s is None and time.monotonic() < deadline and daemon.poll() is None:
                try:
                    msg = notify.recv(4096).decode(errors="replace")
                except socket.timeout:
                    continue
                if "READY=1" in msg.split("\n"):
                    ready_s = time.monotonic() - t0
            if ready_s is None:
                err = daemon.stderr.read() if daemon.poll() is not None and daemon.stderr else ""
                raise RuntimeError(f"{name}: edged run did not send READY=1 (exit {daemon.poll()}): {err[-2000:]}")
            peak = _status(daemon.pid)
            sim = subprocess.Popen([sys.executable, "-m", "edged", "sim", "--zmq", f"tcp://127.0.0.1:{port}",
                                    "--model", sim_models, "--rate", str(rate), "--progress", "0"], cwd=str(REPO),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # the window starts with the first decision (edged sim itself takes a while to start under qemu)
            log = tmp / "logs" / "decisions.jsonl"
            first = time.monotonic() + 300
            while time.monotonic() < first and daemon.poll() is None and not (log.exists() and log.stat().st_size):
                now = _status(daemon.pid)
                for k, v in now.items():
                    peak[k] = max(peak.get(k, 0.0), v)
                time.sleep(0.2)
            end = time.monotonic() + seconds
            while time.monotonic() < end and daemon.poll() is None:
                now = _status(daemon.pid)
                for k, v in now.items():
                    peak[k] = max(peak.get(k, 0.0), v)
                time.sleep(0.5)
        finally:
            if sim is not None:
                sim.send_signal(signal.SIGTERM)
                try:
                    sim.wait(30)
                except subprocess.TimeoutExpired:
                    sim.kill()
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
            notify.close()
        decided = 0
        log = tmp / "logs" / "decisions.jsonl"
        if log.exists():
            decided = sum(1 for _ in log.open("rb"))
        return {"config": name, "ready_s": round(ready_s, 1), "decided": decided,
                **{k: round(v, 1) for k, v in peak.items()}}


def baseline() -> Dict[str, float]:
    """Peak memory of a bare interpreter that imported numpy (what any Python process costs here)."""
    proc = subprocess.Popen([sys.executable, "-c", "import numpy, time; print(1, flush=True); time.sleep(3)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    time.sleep(0.5)
    st = _status(proc.pid)
    proc.wait(30)
    return {k: round(v, 1) for k, v in st.items()}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of traffic per configuration")
    p.add_argument("--rate", type=float, default=50.0, help="inputs per second from edged sim")
    p.add_argument("--only", action="append", default=[], help="measure only these configurations")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    emulated = os.environ.get("EDGED_EMULATED", "")
    where = f"{platform.machine()}{' under ' + emulated if emulated else ''}, Python {platform.python_version()}"
    rows: List[Dict[str, object]] = []
    base = baseline()
    print(f"daemon memory ({where}; MiB; {args.seconds:.0f} s at {args.rate:.0f} inputs/s after READY=1)")
    print(f"{'configuration':<22} {'VmRSS':>7} {'VmHWM':>7} {'RssAnon':>8} {'RssFile':>8} {'ready s':>8} {'decided':>8}")
    print(f"{'python3 + numpy':<22} {base.get('VmRSS', 0):>7.1f} {base.get('VmHWM', 0):>7.1f} "
          f"{base.get('RssAnon', 0):>8.1f} {base.get('RssFile', 0):>8.1f} {'-':>8} {'-':>8}")
    failed = 0
    for name, (models, sim_models) in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        try:
            row = measure(name, models, sim_models, args.seconds, args.rate)
        except RuntimeError as exc:
            print(f"{name:<22} failed: {exc}")
            failed += 1
            continue
        rows.append(row)
        print(f"{name:<22} {row.get('VmRSS', 0):>7.1f} {row.get('VmHWM', 0):>7.1f} {row.get('RssAnon', 0):>8.1f} "
              f"{row.get('RssFile', 0):>8.1f} {row['ready_s']:>8} {row['decided']:>8}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"where": where, "baseline": base, "configs": rows}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
