"""CPU cost of the power sampler at 10, 50 and 100 Hz, against an idle loop in the same run.

Sources: an in-memory fake (pure sampler overhead) and a fake hwmon tree in a temp dir (real
open/read/close syscalls per attribute, like /sys/class/hwmon). Each run samples for
``--seconds`` s while the main thread sleeps; CPU is the process CPU time (``time.process_time``,
all threads) minus the idle baseline measured the same way, and the sampler thread's own
``time.thread_time``. Target: ≤ 1 % of one core at 50 Hz.

    .venv/bin/python bench/power.py [--seconds 10] [--out bench/results/power.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from edged.power.hwmon import HwmonSource  # noqa: E402
from edged.power.sampler import PowerSampler  # noqa: E402
from tests.fakes.power import FakePowerSource  # noqa: E402
from tests.fakes.sysfs import ina219_hwmon  # noqa: E402


def _cpu() -> float:
    return time.process_time()


def idle_loop(seconds: float) -> Dict[str, float]:
    """The same process doing nothing for ``seconds`` (its CPU is the noise floor)."""
    c0, w0 = _cpu(), time.monotonic()
    time.sleep(seconds)
    return {"cpu_s": _cpu() - c0, "wall_s": time.monotonic() - w0}


def run_sampler(source: Any, rate_hz: float, seconds: float) -> Dict[str, float]:
    lines: List[str] = []

    def sink(record: Dict[str, Any]) -> None:  # encode like the log writer will, keep only the count
        lines.append(json.dumps(record))
        if len(lines) > 1000:
            lines.clear()

    sampler = PowerSampler(source, rate_hz=rate_hz, sink=sink)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    c0, w0 = _cpu(), time.monotonic()
    sampler.start()
    time.sleep(seconds)
    sampler.close()
    wall = time.monotonic() - w0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = sampler.stats()
    return {
        "cpu_s": _cpu() - c0,
        "wall_s": wall,
        "rusage_cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "thread_cpu_s": stats["thread_cpu_s"],
        "samples": stats["samples"],
        "records": stats["records"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each run (s)")
    parser.add_argument("--rates", type=float, nargs="+", default=[10.0, 50.0, 100.0], help="sample rates (Hz)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "power.json"))
    args = parser.parse_args()

    idle = idle_loop(args.seconds)
    idle_pct = 100.0 * idle["cpu_s"] / idle["wall_s"]
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ina219_hwmon(tmp)
        sources = {"memory": lambda: FakePowerSource(), "hwmon": lambda: HwmonSource(root=tmp, min_interval=0.001)}
        for name, make in sources.items():
            for rate in args.rates:
                r = run_sampler(make(), rate, args.seconds)
                process_pct = 100.0 * r["cpu_s"] / r["wall_s"]
                rows.append({
                    "source": name,
                    "rate_hz": rate,
                    "achieved_hz": round(r["samples"] / r["wall_s"], 2),
                    "process_cpu_pct": round(process_pct, 3),
                    "over_idle_pct": round(process_pct - idle_pct, 3),
                    "thread_cpu_pct": round(100.0 * r["thread_cpu_s"] / r["wall_s"], 3),
                    "us_per_sample": round(1e6 * r["thread_cpu_s"] / max(r["samples"], 1), 1),
                    "samples": r["samples"],
                    "records": r["records"],
                })

    print(f"idle loop: {idle_pct:.3f} % of one core over {idle['wall_s']:.1f} s")
    header = f"{'source':<8} {'rate Hz':>8} {'got Hz':>8} {'proc %':>8} {'over idle %':>12} " \
             f"{'thread %':>9} {'µs/sample':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['source']:<8} {row['rate_hz']:>8.0f} {row['achieved_hz']:>8.2f} {row['process_cpu_pct']:>8.3f} "
              f"{row['over_idle_pct']:>12.3f} {row['thread_cpu_pct']:>9.3f} {row['us_per_sample']:>10.1f}")
    at50 = [r["thread_cpu_pct"] for r in rows if r["rate_hz"] == 50.0]
    verdict = "PASS" if at50 and max(at50) <= 1.0 else "FAIL"
    print(f"target ≤ 1 % of one core at 50 Hz (sampler thread): {verdict}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    result = {
        "benchmark": "power sampler CPU cost",
        "seconds_per_run": args.seconds,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "idle_cpu_pct": round(idle_pct, 3),
        "target": "<= 1 % of one core at 50 Hz",
        "verdict": verdict,
        "rows": rows,
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
