"""Does ``edged run`` stop on a SIGTERM that arrives right after READY? N tries, each with a fresh daemon.

A daemon that has not exited ``--grace`` seconds after SIGTERM counts as hung: it gets SIGABRT, and
with ``PYTHONFAULTHANDLER=1`` Python prints every thread's stack to its stderr, which is shown here,
then SIGKILL. Under qemu (``make test-arm64`` runs this after the suite) every bytecode is slow, which
widens races that a native run hardly ever hits: run it there to check the daemon's signal handling::

    .venv/bin/python tests/platform/sigterm_probe.py --tries 5 [--grace 60]

Exit status: the number of hung tries (0 = every daemon stopped).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_try(tmp: Path, i: int, grace: float) -> Optional[str]:
    """None if the daemon stopped within ``grace`` s of SIGTERM, else its output with the thread stacks."""
    cfg = tmp / f"edged-{i}.toml"
    cfg.write_text(f"""[daemon]
state_dir = "{tmp / 'state'}"
profile_on_start = false
[logs]
dir = "{tmp / f'logs-{i}'}"
journal = "off"
[fog]
enabled = false
[power]
source = "none"
[[sources]]
type = "zmq"
endpoint = "tcp://127.0.0.1:{_free_port()}"
""")
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)], cwd=str(REPO), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out = ""
    for line in proc.stdout:
        out += line
        if "ready in" in line:
            break
    if proc.poll() is not None:
        return f"edged run exited {proc.returncode} before READY:\n{out}"
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    try:
        rest, _ = proc.communicate(timeout=grace)
        out += rest
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
        return f"not stopped {time.monotonic() - t0:.0f} s after SIGTERM; SIGABRT stacks:\n{out}{rest}"
    if "Logging error" in out:
        return f"stopped, but with a logging error (a log call inside the signal handler?):\n{out}"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tries", type=int, default=5)
    p.add_argument("--grace", type=float, default=60.0, help="seconds a daemon has to exit after SIGTERM")
    args = p.parse_args(argv)
    bad = 0
    with tempfile.TemporaryDirectory(prefix="edged-sigterm-") as d:
        for i in range(args.tries):
            problem = one_try(Path(d), i, args.grace)
            if problem:
                bad += 1
                print(f"try {i + 1}: {problem.rstrip()[-6000:]}\n", flush=True)
    print(f"sigterm probe: {args.tries - bad} of {args.tries} daemons stopped cleanly on a SIGTERM right after READY",
          flush=True)
    return bad


if __name__ == "__main__":
    sys.exit(main())
