"""``edged compare``: the N models x M devices table from ``edged profile --export`` files.

Each export (:func:`write_export`) is one device's table: its fingerprint and software
versions, and per model x backend x threads the WCET, p50/p99, peak RSS increase, accuracy,
macro-F1, FLOPs, GFLOPS achieved (FLOPs / p50) and the energy per inference where a power
sensor measured it (and the per-cut head/tail times of ``--layers``).

``edged compare A.json B.json ...`` merges them: for each model and device the best
configuration (backend x threads) under the objective, the N x M table in Markdown (stdout,
or ``--out DIR``: ``compare.md``, ``compare.json`` and ``compare.png`` with latency and
energy per model per device), and the best device per model.

Objectives: ``p50`` (median latency, default), ``wcet`` (worst case), ``p99``, ``energy``
(mJ per inference; devices without a power sensor cannot win it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from edged.errors import EdgedError

EXPORT_FORMAT = "edged-profile-export/1"
OBJECTIVES: Dict[str, Tuple[str, str]] = {  # name -> (row field, unit)
    "p50": ("p50_us", "us"),
    "wcet": ("wcet_us", "us"),
    "p99": ("p99_us", "us"),
    "energy": ("energy_mj", "mJ"),
}
ROW_FIELDS = ("wcet_us", "p50_us", "p99_us", "peak_rss_increase_kb", "accuracy", "macro_f1", "load_ms")


def _num(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def export_rows(results: Sequence[Mapping[str, Any]], flops: Optional[Mapping[str, Any]] = None,
                energy_mj: Optional[Mapping[str, float]] = None) -> List[Dict[str, Any]]:
    """One export row per profile result (``model/backend/threads``)."""
    rows = []
    for r in sorted(results, key=lambda r: (r["model"], r["backend"], int(r["threads"]))):
        row: Dict[str, Any] = {"model": r["model"], "backend": r["backend"], "threads": int(r["threads"])}
        row.update({k: r.get(k) for k in ROW_FIELDS})
        f = _num((flops or {}).get(r["model"]))
        p50 = _num(r.get("p50_us"))
        row["flops"] = int(f) if f is not None else None
        row["gflops"] = round(f / (p50 * 1e-6) / 1e9, 4) if f is not None and p50 else None
        row["energy_mj"] = (energy_mj or {}).get(f"{r['model']}/{r['backend']}/{int(r['threads'])}")
        if isinstance(r.get("cuts"), list):
            row["cuts"] = [{k: c.get(k) for k in ("name", "k", "bytes", "head_p50_us", "tail_p50_us")}
                           for c in r["cuts"]]
        rows.append(row)
    return rows


def write_export(path: Union[str, os.PathLike], fingerprint: Mapping[str, Any],
                 results: Sequence[Mapping[str, Any]], label: Optional[str] = None,
                 flops: Optional[Mapping[str, Any]] = None, energy_mj: Optional[Mapping[str, float]] = None) -> Path:
    """Write one device's table (atomically). ``flops``: model -> FLOPs per input (default: the manifests')."""
    from edged import __version__
    from edged.profile import fingerprint_id

    if flops is None:
        flops = _manifest_flops([r["model"] for r in results])
    data = {
        "format": EXPORT_FORMAT,
        "label": label or socket.gethostname(),
        "device_id": fingerprint_id(dict(fingerprint)),
        "fingerprint": dict(fingerprint),
        "edged": __version__,
        "exported_at": round(time.time(), 3),
        "power_measured": bool(energy_mj),
        "rows": export_rows(results, flops, energy_mj),
    }
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, p)
    return p


def _manifest_flops(models: Sequence[str]) -> Dict[str, Any]:
    from edged.models import Catalogue

    try:
        cat = Catalogue.discover()
    except EdgedError:
        return {}
    return {m: cat.get(m).manifest.get("flops") for m in models if m in cat}


def load_export(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read and check one export; errors name the file and what was expected."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise EdgedError(f"cannot read {p}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise EdgedError(f"{p} is not JSON ({exc}); expected a file from 'edged profile --export'") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise EdgedError(f"{p}: format is {got!r}, expected {EXPORT_FORMAT!r} (a file from 'edged profile --export')")
    rows = data.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "model" in r for r in rows):
        raise EdgedError(f"{p}: 'rows' must be a list of objects with a 'model' (one per model x backend x threads)")
    return data


# ---- merging ------------------------------------------------------------------------------------------
def device_names(exports: Sequence[Mapping[str, Any]], paths: Sequence[Union[str, os.PathLike]]) -> List[str]:
    """A unique name per export: its label, else the file's stem; repeats get the file stem appended."""
    names = [str(e.get("label") or Path(p).stem) for e, p in zip(exports, paths)]
    out = []
    for n, p in zip(names, paths):
        out.append(n if names.count(n) == 1 else f"{n} ({Path(p).stem})")
    seen: Dict[str, int] = {}
    final = []
    for n in out:
        seen[n] = seen.get(n, 0) + 1
        final.append(n if seen[n] == 1 else f"{n} #{seen[n]}")
    return final


def best_rows(rows: Sequence[Mapping[str, Any]], objective: str) -> Dict[str, Dict[str, Any]]:
    """model -> its best row (backend x threads) under ``objective``; rows without the value lose (a model whose
    rows all lack it keeps its best p50 row, its objective value None)."""
    field = OBJECTIVES[objective][0]
    out: Dict[str, Dict[str, Any]] = {}
    for r in rows:
        m = str(r["model"])
        cur = out.get(m)
        key = (_num(r.get(field)) is None, _num(r.get(field)) or 0.0, _num(r.get("p50_us")) or math.inf)
        if cur is None or key < (_num(cur.get(field)) is None, _num(cur.get(field)) or 0.0,
                                 _num(cur.get("p50_us")) or math.inf):
            out[m] = dict(r)
    return out


def compare(exports: Sequence[Mapping[str, Any]], names: Sequence[str], objective: str = "p50") -> Dict[str, Any]:
    """The merged N x M table: ``{"objective", "devices", "models", "cells": {model: {device: row}},
    "best": {model: {"device", "value"}}}``."""
    if objective not in OBJECTIVES:
        raise EdgedError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    field, unit = OBJECTIVES[objective]
    cells: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for e, name in zip(exports, names):
        for model, row in best_rows(e["rows"], objective).items():
            cells.setdefault(model, {})[name] = row
    best: Dict[str, Dict[str, Any]] = {}
    for model, per_dev in cells.items():
        cands = [(v, d) for d, r in per_dev.items() if (v := _num(r.get(field))) is not None]
        if cands:
            v, d = min(cands)
            best[model] = {"device": d, "value": v, "unit": unit}
        else:
            best[model] = {"device": None, "value": None, "unit": unit,
                           "why": f"no device measured {field}" + (" (no power sensor)" if objective == "energy"
                                                                     else "")}
    devices = [{"name": n, "device_id": e.get("device_id"), "label": e.get("label"),
                "cpu": (e.get("fingerprint") or {}).get("cpu"), "cores": (e.get("fingerprint") or {}).get("cores"),
                "machine": (e.get("fingerprint") or {}).get("machine"),
                "runtimes": (e.get("fingerprint") or {}).get("runtimes"), "edged": e.get("edged"),
                "power_measured": bool(e.get("power_measured"))} for e, n in zip(exports, names)]
    return {"objective": objective, "field": field, "unit": unit, "devices": devices,
            "models": sorted(cells), "cells": cells, "best": best}


# ---- rendering ----------------------------------------------------------------------------------------
def _f(v: Any, nd: int = 1) -> str:
    x = _num(v)
    return "-" if x is None else f"{x:.{nd}f}"


def to_markdown(table: Mapping[str, Any]) -> str:
    devs = [d["name"] for d in table["devices"]]
    field, unit = table["field"], table["unit"]
    lines = [f"### {table['objective']} ({field}, {unit}) per model x device; best device in bold", "",
             "| model | " + " | ".join(devs) + " | best |", "|---|" + "---:|" * len(devs) + "---|"]
    for m in table["models"]:
        best = table["best"][m]
        cells = []
        for d in devs:
            r = table["cells"][m].get(d)
            if r is None:
                cells.append("-")
                continue
            txt = f"{_f(r.get(field), 3 if unit == 'mJ' else 1)} ({r['backend']}/t{r['threads']})"
            cells.append(f"**{txt}**" if d == best["device"] else txt)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {best['device'] or '-'} |")
    lines += ["", "### every metric (the configuration shown above)", "",
              "| model | device | backend/threads | WCET us | p50 us | p99 us | RSS+ MB | accuracy | macro-F1 | "
              "MFLOPs | GFLOPS | mJ/inference |", "|---|---|---|" + "---:|" * 9]
    for m in table["models"]:
        for d in devs:
            r = table["cells"][m].get(d)
            if r is None:
                continue
            rss = _num(r.get("peak_rss_increase_kb"))
            lines.append(
                f"| {m} | {d} | {r['backend']}/t{r['threads']} | {_f(r.get('wcet_us'))} | {_f(r.get('p50_us'))} | "
                f"{_f(r.get('p99_us'))} | {_f(rss / 1024 if rss is not None else None)} | "
                f"{_f(r.get('accuracy'), 3)} | {_f(r.get('macro_f1'), 3)} | "
                f"{_f((_num(r.get('flops')) or 0) / 1e6 if r.get('flops') is not None else None, 3)} | "
                f"{_f(r.get('gflops'), 2)} | {_f(r.get('energy_mj'), 4)} |")
    lines += ["", "### devices", "", "| device | id | CPU | cores | machine | runtimes |", "|---|---|---|---:|---|---|"]
    for d in table["devices"]:
        rt = ", ".join(f"{k} {v}" for k, v in (d.get("runtimes") or {}).items())
        lines.append(f"| {d['name']} | {d.get('device_id')} | {d.get('cpu')} | {d.get('cores')} | "
                     f"{d.get('machine')} | {rt} |")
    return "\n".join(lines) + "\n"


def render_png(table: Mapping[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Grouped bars: p50 latency (and energy per inference where measured) per model per device."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise EdgedError(f"edged compare --png needs matplotlib ({exc}): pip install 'edged[report]'") from None
    models, devs = table["models"], [d["name"] for d in table["devices"]]
    has_energy = any(_num(r.get("energy_mj")) is not None for m in models for r in table["cells"][m].values())
    fig, axes = plt.subplots(1, 2 if has_energy else 1, figsize=(10 if has_energy else 7, 4), squeeze=False)
    width = 0.8 / max(1, len(devs))
    for ax, (field, label) in zip(axes[0], [("p50_us", "p50 latency (us, log)"), ("energy_mj", "mJ per inference")]):
        for j, d in enumerate(devs):
            vals = [_num(table["cells"][m].get(d, {}).get(field)) for m in models]
            xs = [i + (j - (len(devs) - 1) / 2) * width for i in range(len(models))]
            ax.bar(xs, [v if v is not None else 0.0 for v in vals], width, label=d)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20)
        ax.set_ylabel(label)
        if field == "p50_us":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(f"edged compare: {len(models)} models x {len(devs)} devices (best by {table['objective']})")
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


# ---- CLI ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="exports from 'edged profile --export' (one per device)")
    p.add_argument("--objective", choices=list(OBJECTIVES), default="p50",
                   help="what 'best' means: p50 (default), wcet, p99 latency or energy per inference")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write compare.md, compare.json and compare.png there (default: Markdown to stdout)")
    p.add_argument("--json", action="store_true", help="print the merged table as JSON instead of Markdown")
    p.add_argument("--no-png", action="store_true", help="with --out: skip the PNG (no matplotlib needed)")


def main(args: argparse.Namespace) -> int:
    exports = [load_export(f) for f in args.files]
    names = device_names(exports, args.files)
    table = compare(exports, names, args.objective)
    md = to_markdown(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.md").write_text(md)
        (args.out / "compare.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        if not args.no_png:
            render_png(table, args.out / "compare.png")
        print(f"edged compare: {len(table['models'])} models x {len(names)} devices -> {args.out}", file=sys.stderr)
    if args.json:
        print(json.dumps(table, indent=1, sort_keys=True))
    else:
        sys.stdout.write(md)
        for m in table["models"]:
            b = table["best"][m]
            print(f"best for {m} by {table['objective']}: {b['device'] or 'none'}"
                  + (f" ({b['value']:g} {b['unit']})" if b["value"] is not None else f" ({b.get('why')})"))
    return 0
