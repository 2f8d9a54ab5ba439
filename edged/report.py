"""``edged report LOGDIR``: summary tables of a log directory, and a PNG with matplotlib.

Reads ``decisions.jsonl`` and ``power.jsonl`` with all their rotated files (oldest first; torn
and unparsable lines skipped and counted) and prints:

* per model, per model × decision and per decision: count, share, latency p50/p95/p99/max,
  mean exec and transfer time, mean energy per inference (mJ, where recorded), errors;
* rejected inputs per model (every model, 0 included) with the reasons broken down;
* from the daemon's ``stats.json`` beside the logs (when present): the unattributable input counted
  only at the sources (no record: bad CRC, unparsable header, …) per source and reason, and the log
  writers' health (records waiting in memory, lost);
* power per rail: samples, mean and max W; the hottest temperature and whether throttling was seen.

``--json`` prints the same numbers as one JSON object (latencies in µs, power in W, energy in mJ).
``--png FILE`` (needs the ``report`` extra: ``pip install 'edged[report]'``) draws latency over
time coloured by decision, with power over time beneath on the same time axis. Without matplotlib
the tables are still printed and the exit status is 1 (the PNG asked for was not written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edged.errors import EdgedError
from edged.logs import ReadStats, read_records
from edged.logs.stats import log_health, read_stats_file, unattributable_input
from edged.tail import (
    DECISIONS,
    _num,
    board_watts,
    fmt_counts,
    fmt_time,
    fmt_us,
    is_throttled,
    percentile,
    power_rails,
    rejection_reason,
)

Record = Dict[str, Any]
MATPLOTLIB_HINT = "PNG needs matplotlib: pip install 'edged[report]'"


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def group_stats(records: Sequence[Record], total: int) -> Dict[str, Any]:
    """Count, share of ``total``, latency percentiles (µs), mean exec/transfer (µs), mean mJ, errors."""
    lat = [v for v in (_num(r.get("latency_us")) for r in records) if v is not None]
    exe = [v for v in (_num(r.get("exec_us")) for r in records) if v is not None]
    tra = [v for v in (_num(r.get("transfer_us")) for r in records) if v is not None]
    energy = [v for v in (_num(r.get("energy_mj")) for r in records) if v is not None]
    return {
        "count": len(records),
        "share": len(records) / total if total else 0.0,
        "latency_p50_us": percentile(lat, 50),
        "latency_p95_us": percentile(lat, 95),
        "latency_p99_us": percentile(lat, 99),
        "latency_max_us": max(lat) if lat else None,
        "exec_mean_us": _mean(exe),
        "transfer_mean_us": _mean(tra),
        "energy_mean_mj": _mean(energy),
        "energy_records": len(energy),
        "errors": sum(1 for r in records if r.get("error")),
    }


def build_report(decisions: Sequence[Record], power: Sequence[Record]) -> Dict[str, Any]:
    """The report as JSON-ready numbers (see the module docstring)."""
    by_model: Dict[str, List[Record]] = {}
    by_decision: Dict[str, List[Record]] = {}
    by_pair: Dict[Tuple[str, str], List[Record]] = {}
    for r in decisions:
        model = str(r.get("model") or "?")
        decision = str(r.get("decision") or "?")
        by_model.setdefault(model, []).append(r)
        by_decision.setdefault(decision, []).append(r)
        by_pair.setdefault((model, decision), []).append(r)
    n = len(decisions)
    rejected: Dict[str, Dict[str, Any]] = {}
    for model, recs in sorted(by_model.items()):
        reasons: Dict[str, int] = {}
        for r in recs:
            if r.get("decision") == "rejected":
                why = rejection_reason(r)
                reasons[why] = reasons.get(why, 0) + 1
        count = sum(reasons.values())
        rejected[model] = {"count": count, "share": count / len(recs) if recs else 0.0,
                           "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))}
    ts = [v for v in (_num(r.get("ts")) for r in decisions) if v is not None]
    order = {d: i for i, d in enumerate(DECISIONS)}
    per_pair = []
    for (model, decision), recs in sorted(by_pair.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        row = group_stats(recs, len(by_model[model]))
        row.update(model=model, decision=decision)
        per_pair.append(row)
    rails: Dict[str, List[float]] = {}
    temps: List[float] = []
    throttled = False
    board: List[float] = []
    for p in power:
        for name, watts, _total in power_rails(p):
            if watts is not None:
                rails.setdefault(name, []).append(watts)
        w = board_watts(p)
        if w is not None:
            board.append(w)
        t = _num(p.get("temp_c"))
        if t is not None:
            temps.append(t)
        throttled = throttled or is_throttled(p.get("throttled"))
    return {
        "inputs": n,
        "span_s": (max(ts) - min(ts)) if len(ts) > 1 else None,
        "overall": group_stats(list(decisions), n),
        "per_model": {m: group_stats(recs, n) for m, recs in sorted(by_model.items())},
        "per_decision": {d: group_stats(recs, n)
                         for d, recs in sorted(by_decision.items(), key=lambda kv: order.get(kv[0], 99))},
        "per_model_decision": per_pair,
        "rejected": rejected,
        "power": {
            "samples": len(board),
            "board_mean_w": _mean(board),
            "board_max_w": max(board) if board else None,
            "rails": {name: {"samples": len(v), "mean_w": sum(v) / len(v), "max_w": max(v)}
                      for name, v in sorted(rails.items())},
            "temp_max_c": max(temps) if temps else None,
            "throttled_seen": throttled,
        },
    }


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
_COLS = ("count", "share", "p50", "p95", "p99", "max", "exec", "transfer", "mJ/inf", "errors")


def _row(label: Sequence[str], s: Dict[str, Any]) -> List[str]:
    energy = s["energy_mean_mj"]
    return [*label, str(s["count"]), f"{s['share']:.1%}", fmt_us(s["latency_p50_us"]), fmt_us(s["latency_p95_us"]),
            fmt_us(s["latency_p99_us"]), fmt_us(s["latency_max_us"]), fmt_us(s["exec_mean_us"]),
            fmt_us(s["transfer_mean_us"]), "-" if energy is None else f"{energy:.3g}", str(s["errors"])]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = ()) -> str:
    """A plain text table: first column (and the ``left`` ones) left-aligned, the rest right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = []
    for i, row in enumerate([list(header), *[list(r) for r in rows]]):
        cells = [c.ljust(w) if j == 0 or j in left or (j == 1 and header[1] == "decision") else c.rjust(w)
                 for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_tables(rep: Dict[str, Any], source: str = "") -> str:
    out: List[str] = []
    span = rep["span_s"]
    head = f"{rep['inputs']} inputs" + (f" over {span:.1f} s" if span else "") + (f" from {source}" if source else "")
    out.append(head)
    if rep["inputs"]:
        out += ["", "per model (share of all inputs)",
                table(("model", *_COLS), [_row((m,), s) for m, s in rep["per_model"].items()]
                      + [_row(("all",), rep["overall"])])]
        out += ["", "per model and decision (share within the model)",
                table(("model", "decision", *_COLS),
                      [_row((r["model"], r["decision"]), r) for r in rep["per_model_decision"]])]
        out += ["", "per decision (share of all inputs)",
                table(("decision", *_COLS), [_row((d,), s) for d, s in rep["per_decision"].items()])]
        out += ["", "rejected inputs per model (share within the model)",
                table(("model", "rejected", "share", "reasons"),
                      [[m, str(r["count"]), f"{r['share']:.1%}", fmt_counts(r["reasons"]) or "-"]
                       for m, r in rep["rejected"].items()], left=(3,))]
    out += _stats_file_tables(rep.get("unattributable"), rep.get("log_health"))
    pw = rep["power"]
    if pw["rails"]:
        rows = [[name, str(r["samples"]), f"{r['mean_w']:.3f}", f"{r['max_w']:.3f}"] for name, r in pw["rails"].items()]
        out += ["", "power", table(("rail", "samples", "mean W", "max W"), rows)]
        extra = []
        if pw["board_mean_w"] is not None:
            extra.append(f"board {pw['board_mean_w']:.3f} W mean, {pw['board_max_w']:.3f} W max")
        if pw["temp_max_c"] is not None:
            extra.append(f"temperature max {pw['temp_max_c']:.1f} °C")
        extra.append("throttling seen" if pw["throttled_seen"] else "no throttling seen")
        out.append("; ".join(extra))
    return "\n".join(out)


def _stats_file_tables(un: Optional[Dict[str, Any]], health: Optional[Dict[str, Any]]) -> List[str]:
    """The ``stats.json`` sections: unattributable input per source, log writers' health."""
    out: List[str] = []
    if un is not None:
        when = f", stats.json of {fmt_time(un['ts'])}" if un.get("ts") is not None else ""
        head = f"unattributable input: {un['total']}"
        if un["reasons"]:
            head += f" ({fmt_counts(un['reasons'], limit=20)})"
        out += ["", f"{head} — counted only at the sources, no decision record{when}"]
        if un["per_source"]:
            out.append(table(("source", "accepted", "unattributable", "lost in transit", "garbage bytes", "reasons"),
                             [[name, str(s["accepted"]), str(s["total"]), str(s["lost_in_transit"]),
                               str(s["garbage_bytes"]), fmt_counts(s["reasons"], limit=20) or "-"]
                              for name, s in un["per_source"].items()], left=(5,)))
    if health is not None:
        rows = [[name, "DEGRADED" if w.get("degraded") else "ok", str(w.get("written", "-")),
                 str(w.get("spooled", 0)), str(w.get("lost", 0)), str(w.get("last_error") or "-")]
                for name, w in health["per_log"].items()]
        if rows:
            out += ["", "log writers",
                    table(("log", "state", "written", "in memory", "lost", "last error"), rows, left=(1, 5))]
    return out


# ---------------------------------------------------------------------------------------------
# PNG
# ---------------------------------------------------------------------------------------------
_PLOT_COLOURS = {"local": "tab:green", "offload": "tab:blue", "fallback": "tab:orange", "rejected": "tab:red"}


def plot_layout(decisions: Sequence[Record], power: Sequence[Record]) -> Tuple[List[str], bool, bool]:
    """What the PNG shows: one row per model (sorted), an energy column if any record has ``energy_mj``,
    and a power row if there are power samples."""
    models = sorted({str(r.get("model")) for r in decisions if r.get("model") is not None})
    energy = any(_num(r.get("energy_mj")) is not None for r in decisions)
    return models, energy, bool(power)


def write_png(path: Path, decisions: Sequence[Record], power: Sequence[Record]) -> None:
    """One panel per model: latency over time coloured by decision, with that model's energy per inference
    beside it when measured; power per rail in a last row (shared time axis, s)."""
    import logging

    import matplotlib  # lazily: the 'report' extra

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font-cache chatter
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [t for t in (_num(r.get("ts")) for r in [*decisions, *power]) if t is not None]
    t0 = min(times) if times else 0.0
    models, energy, has_power = plot_layout(decisions, power)
    rows = max(1, len(models)) + (1 if has_power else 0)
    cols = 2 if energy else 1
    fig, axes = plt.subplots(rows, cols, sharex=True, squeeze=False, figsize=(11 if cols == 1 else 15, 2.6 * rows))
    order = {d: i for i, d in enumerate(DECISIONS)}
    for row, model in enumerate(models or ["(no decisions)"]):
        series: Dict[str, Tuple[List[float], List[float], List[float]]] = {}
        for r in decisions:
            if str(r.get("model")) != model:
                continue
            ts, lat = _num(r.get("ts")), _num(r.get("latency_us"))
            if ts is None or lat is None:
                continue
            xs, ys, es = series.setdefault(str(r.get("decision") or "?"), ([], [], []))
            xs.append(ts - t0)
            ys.append(lat / 1000.0)
            es.append(_num(r.get("energy_mj")) if energy else None)  # type: ignore[arg-type]
        ax = axes[row][0]
        for decision, (xs, ys, _) in sorted(series.items(), key=lambda kv: order.get(kv[0], 99)):
            ax.scatter(xs, ys, s=6, alpha=0.6, label=f"{decision} ({len(xs)})", color=_PLOT_COLOURS.get(decision))
        all_y = [y for _, ys, _ in series.values() for y in ys if y > 0]
        if all_y and max(all_y) / max(min(all_y), 1e-9) > 100:
            ax.set_yscale("log")
        ax.set_ylabel(f"{model}\nlatency (ms)")
        if series:
            ax.legend(loc="upper right", markerscale=3, fontsize="small")
        ax.grid(True, alpha=0.3)
        if energy:
            eax = axes[row][1]
            for decision, (xs, _, es) in sorted(series.items(), key=lambda kv: order.get(kv[0], 99)):
                pts = [(x, e) for x, e in zip(xs, es) if e is not None]
                if pts:
                    eax.scatter([x for x, _ in pts], [e for _, e in pts], s=6, alpha=0.6,
                                label=f"{decision} ({len(pts)})", color=_PLOT_COLOURS.get(decision))
            eax.set_ylabel("energy (mJ/input)")
            eax.grid(True, alpha=0.3)
    axes[0][0].set_title("edged: latency per input by decision, per model")
    if energy:
        axes[0][1].set_title("energy per input")
    if has_power:
        pax = axes[-1][0]
        rails: Dict[str, Tuple[List[float], List[float], bool]] = {}
        for p in power:
            ts = _num(p.get("ts"))
            if ts is None:
                continue
            for name, watts, total in power_rails(p):
                if watts is not None:
                    xs, ys, _ = rails.setdefault(name, ([], [], total))
                    xs.append(ts - t0)
                    ys.append(watts)
        for name, (xs, ys, total) in sorted(rails.items()):
            pax.plot(xs, ys, linewidth=1.6 if total else 0.8, label=name + (" (board)" if total else ""))
        pax.set_ylabel("power (W)")
        pax.grid(True, alpha=0.3)
        if rails:
            pax.legend(loc="upper right", fontsize="small")
        if energy:  # no power in the energy column: its last model panel carries the time axis
            axes[-1][1].axis("off")
            axes[-2][1].tick_params(labelbottom=True)
            axes[-2][1].set_xlabel("time since first record (s)")
    for c in range(cols):
        if axes[-1][c].axison:
            axes[-1][c].set_xlabel("time since first record (s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("logdir", metavar="LOGDIR", help="log directory (decisions.jsonl, power.jsonl) or a decisions file")
    p.add_argument("--png", metavar="FILE", type=Path, help="also draw latency and power over time (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def load_logs(logdir: Path) -> Tuple[List[Record], List[Record], ReadStats]:
    """(decisions, power, read stats) from a directory or a decisions file; EdgedError if neither log exists."""
    stats = ReadStats()
    if logdir.is_dir():
        dec_path, pow_path = logdir / "decisions.jsonl", logdir / "power.jsonl"
    else:
        dec_path, pow_path = logdir, logdir.parent / "power.jsonl"
    decisions: List[Record] = []
    power: List[Record] = []
    found = False
    try:
        decisions = read_records(dec_path, stats=stats)
        found = True
    except FileNotFoundError:
        pass
    try:
        power = read_records(pow_path, stats=stats)
        found = True
    except FileNotFoundError:
        pass
    if not found:
        raise EdgedError(f"no decisions.jsonl or power.jsonl under {logdir}")
    return [r for r in decisions if "decision" in r], power, stats


def main(args: argparse.Namespace) -> int:
    logdir = Path(args.logdir).expanduser()
    decisions, power, stats = load_logs(logdir)
    rep = build_report(decisions, power)
    rep["skipped_lines"] = {"torn": stats.torn, "unparsable": stats.bad}
    daemon_stats = read_stats_file(logdir if logdir.is_dir() else logdir.parent)
    rep["unattributable"] = unattributable_input(daemon_stats)
    rep["log_health"] = log_health(daemon_stats)
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=False))
    else:
        print(render_tables(rep, str(logdir)))
        if stats.torn or stats.bad:
            print(f"\nskipped {stats.torn} torn and {stats.bad} unparsable line(s)")
    sys.stdout.flush()
    if args.png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(MATPLOTLIB_HINT, file=sys.stderr)
            return 1
        write_png(args.png, decisions, power)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
