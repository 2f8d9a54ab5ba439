#!/usr/bin/env python3
"""Before/after of the per-input overhead in one run: ``bench/overhead.py`` of two revisions, alternated.

Each revision is checked out in a temporary git worktree (so uncommitted edits in this tree never leak
into a measurement) and its own ``bench/overhead.py`` runs there with this interpreter, one repeat at a
time: before, after, before, after, ... so both see the same machine load. The table gives, per row,
the hand-written loop (all its runs, both sides), edged before and after (median [min-max]) and the
ratios edged/loop, each computed within its own run. Writes ``bench/results/overhead_ab.json``.

    python bench/overhead_ab.py --before 66041c2 --after HEAD --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def _worktree(rev: str, where: Path) -> Tuple[Path, str]:
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    path = where / sha[:12]
    if not path.exists():
        _git("worktree", "add", "--detach", "--force", str(path), sha)
    if not (path / "bench" / "overhead.py").exists():
        raise SystemExit(f"revision {rev} ({sha[:12]}) has no bench/overhead.py to run")
    return path, sha


def _stats(xs: Sequence[float]) -> Dict[str, Any]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs), "runs": list(xs)}


def _metrics(row: Dict[str, Any], mode: str) -> Dict[str, List[float]]:
    """throughput (max rows) or p50/p99 (paced rows) of one mode, and its ratio to the loop, per run."""
    out: Dict[str, List[float]] = {}
    m = row.get(mode) or {}
    loop = row.get("loop") or {}
    keys = ("inputs_per_s",) if row["rate"] == "max" else ("p50_us", "p99_us")
    for k in keys:
        if k in m and k in loop:
            mine, theirs = m[k]["runs"], loop[k]["runs"]
            out[k] = list(mine)
            out[f"{k}/loop"] = [a / b for a, b in zip(mine, theirs) if b]
    return out


def _fmt(s: Optional[Dict[str, Any]], ratio: bool = False) -> str:
    if not s:
        return "-"
    f = (lambda v: f"{v:.2f}x") if ratio else (lambda v: f"{v:,.0f}")
    if s["n"] == 1:
        return f(s["median"])
    return f"{f(s['median'])} [{f(s['min'])}-{f(s['max'])}]"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision measured as 'before'")
    ap.add_argument("--after", default="HEAD", help="git revision measured as 'after' (default HEAD)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each revision, alternated (default 3)")
    ap.add_argument("--out", default=str(RESULTS / "overhead_ab.json"))
    ap.add_argument("args", nargs=argparse.REMAINDER,
                    help="after --: arguments for bench/overhead.py (e.g. -- --models mlp --no-fog)")
    a = ap.parse_args(argv)
    extra = [x for x in a.args if x != "--"]
    work = Path(tempfile.mkdtemp(prefix="edged-overhead-ab-"))
    sides = {"before": _worktree(a.before, work), "after": _worktree(a.after, work)}
    runs: Dict[str, List[Dict[str, Any]]] = {"before": [], "after": []}
    t0 = time.time()
    try:
        for r in range(a.repeats):
            for side in ("before", "after"):
                path, sha = sides[side]
                out = work / f"{side}-{r}.json"
                print(f"[{time.strftime('%H:%M:%S')}] run {r + 1}/{a.repeats}: {side} ({sha[:12]})", flush=True)
                env = dict(os.environ, PYTHONPATH=str(path))
                subprocess.run([sys.executable, str(path / "bench" / "overhead.py"), "--repeats", "1",
                                "--out", str(out), *extra], cwd=path, env=env, check=True,
                               stdout=subprocess.DEVNULL)
                runs[side].append(json.loads(out.read_text()))
    finally:
        for path, _ in sides.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)
    # merge: (model, backend, rate, mode) -> metric -> runs, over every repeat of each side
    merged: Dict[Tuple[str, str, str], Dict[str, Dict[str, List[float]]]] = {}
    for side, results in runs.items():
        for res in results:
            for row in res["rows"]:
                key = (row["model"], row["backend"], row["rate"])
                slot = merged.setdefault(key, {})
                for mode in ("edged", "edged+fog"):
                    for k, v in _metrics(row, mode).items():
                        slot.setdefault(f"{side}:{mode}:{k}", []).extend(v)
                loop = row.get("loop") or {}
                for k in ("inputs_per_s", "p50_us", "p99_us"):
                    if k in loop:
                        slot.setdefault(f"loop:{k}", []).extend(loop[k]["runs"])
    rows = []
    for (model, backend, rate), slot in merged.items():
        rows.append({"model": model, "backend": backend, "rate": rate,
                     **{k: _stats(v) for k, v in slot.items() if v}})
    obj = {"bench": "overhead_ab", "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "duration_s": time.time() - t0,
           "before": {"rev": a.before, "sha": sides["before"][1]}, "after": {"rev": a.after, "sha": sides["after"][1]},
           "repeats": a.repeats, "overhead_args": extra, "rows": rows,
           "load_avg": [r.get("machine", {}).get("load_avg") for side in runs.values() for r in side]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(obj, indent=1) + "\n")
    print(f"\nper-input overhead, before {sides['before'][1][:10]} / after {sides['after'][1][:10]}: median "
          f"[min-max] of {a.repeats} alternated run(s) each; ratios to the loop of the same run")
    hdr = ("model", "backend", "rate", "metric", "loop", "before", "after", "before/loop", "after/loop")
    lines = []
    for r in rows:
        metrics = ("inputs_per_s",) if r["rate"] == "max" else ("p50_us", "p99_us")
        for mode in ("edged", "edged+fog"):
            for k in metrics:
                b, af = r.get(f"before:{mode}:{k}"), r.get(f"after:{mode}:{k}")
                if not b and not af:
                    continue
                name = "inputs/s" if k == "inputs_per_s" else k.replace("_us", " us")
                if mode != "edged":
                    name += " (fog on)"
                lines.append((r["model"], r["backend"], r["rate"], name, _fmt(r.get(f"loop:{k}")), _fmt(b), _fmt(af),
                              _fmt(r.get(f"before:{mode}:{k}/loop"), True),
                              _fmt(r.get(f"after:{mode}:{k}/loop"), True)))
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *lines)] if lines else [len(h) for h in hdr]
    for line in (hdr, tuple("-" * w for w in widths), *lines):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
