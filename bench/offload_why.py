"""Where ``adaptive`` gains and loses against ``threshold``, per phase, from the records of a bench run.

``python bench/offload.py ... --dump records.jsonl`` writes every decision record of every pass (with
``bench_policy``, ``bench_stream`` and ``bench_repeat``); this reads them, pairs each input's ``adaptive``
record with its ``threshold`` record from the same repeat, and prints per stream and phase the mean latency of
both, adaptive's decisions per model, and the groups (model, adaptive's decision, threshold's) that cost or
saved the most, with one of adaptive's reasons as it was logged.

Usage: ``python bench/offload_why.py records.jsonl --phase-s 6 [--schedule five]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.offload import SCHEDULES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("records", help="the --dump file of bench/offload.py")
    ap.add_argument("--phase-s", type=float, required=True, help="the run's seconds per phase")
    ap.add_argument("--schedule", choices=sorted(SCHEDULES), default="five")
    ap.add_argument("--top", type=int, default=3, help="groups shown per phase (default 3)")
    args = ap.parse_args()
    names = [n for n, _ in SCHEDULES[args.schedule]]
    by: Dict[Tuple[str, int, str], Dict[int, Dict[str, Any]]] = collections.defaultdict(dict)
    with open(args.records) as fh:
        for line in fh:
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a torn last line
            by[(r["bench_stream"], r["bench_repeat"], r["bench_policy"])][r["seq"]] = r

    def phase(r: Dict[str, Any]) -> str:
        return names[min(len(names) - 1, int(r["meta"]["t_rel"] // args.phase_s))]

    for stream in sorted({k[0] for k in by}):
        repeats = sorted({k[1] for k in by if k[0] == stream})
        print(f"== {stream} stream, {len(repeats)} repeat(s)")
        for ph in names:
            a_ms: List[float] = []
            t_ms: List[float] = []
            decisions: Dict[Tuple[str, str], int] = collections.Counter()
            delta: Dict[Tuple[str, str, str], List[float]] = collections.defaultdict(list)
            example: Dict[Tuple[str, str, str], str] = {}
            for rep in repeats:
                threshold = by.get((stream, rep, "threshold"), {})
                for seq, a in by.get((stream, rep, "adaptive"), {}).items():
                    t = threshold.get(seq)
                    if t is None or phase(a) != ph:
                        continue
                    a_ms.append(a["latency_us"] / 1e3)
                    t_ms.append(t["latency_us"] / 1e3)
                    decisions[(a["model"], a["decision"])] += 1
                    key = (a["model"], a["decision"], t["decision"])
                    delta[key].append((a["latency_us"] - t["latency_us"]) / 1e3)
                    example.setdefault(key, a["reason"])
            if not a_ms:
                continue
            a_mean, t_mean = sum(a_ms) / len(a_ms), sum(t_ms) / len(t_ms)
            print(f"  {ph:<10} adaptive {a_mean:8.2f} ms mean, threshold {t_mean:8.2f} ms; adaptive decided "
                  + ", ".join(f"{m} {d} {n}" for (m, d), n in sorted(decisions.items())))
            ranked = sorted(delta.items(), key=lambda kv: -sum(kv[1]))
            for key, v in [kv for kv in ranked if sum(kv[1]) > 0][:args.top]:
                print(f"    loses {sum(v) / 1e3:7.2f} s on {len(v):4d} {key[0]:<7} (adaptive {key[1]}, threshold "
                      f"{key[2]}), {sum(v) / len(v):+8.1f} ms each; e.g. \"{example[key][:150]}\"")
            for key, v in [kv for kv in reversed(ranked) if sum(kv[1]) < 0][:args.top]:
                print(f"    gains {-sum(v) / 1e3:7.2f} s on {len(v):4d} {key[0]:<7} (adaptive {key[1]}, threshold "
                      f"{key[2]}), {sum(v) / len(v):+8.1f} ms each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
