"""``edged tail``: the decision or power log as readable lines, with a running summary.

::

    edged tail                      # every decision so far, then a summary (stderr)
    edged tail -f                   # the last 10, then follow; summary every 5 s and at Ctrl-C
    edged tail power -f --dir /var/log/edged
    edged tail --json --model cnn --since 10m | jq .latency_us

One line per record — decisions: time (HH:MM:SS.mmm), model, decision (coloured on a terminal),
latency, label (score), reason (a rejected input: its reason, seq and sender); power: time, source,
rail, W, V, A, °C, throttled. The summary (:class:`Summary`, also printed at the end of ``make run``)
has inputs/s, decision shares, rejections by reason, p50/p99 latency per model, mean board power
(from ``power.jsonl`` beside the decision log), mean energy per model × decision and, from the
daemon's ``stats.json`` beside the log, the unattributable input counted only at the sources and
whether the log writer is degraded or lost records. Torn and unparsable lines are skipped (and
counted). ``--json`` passes the records through, one per line. A closed pipe (``| head``), Ctrl-C
and SIGTERM all exit 0.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as _dt
import errno
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, TextIO, Tuple

from edged.errors import EdgedError
from edged.logs import LogReader, ReadStats, default_log_dir, log_files, read_records
from edged.logs.stats import log_health, read_stats_file, unattributable_input
from edged.signals import stop_on_signals

Record = Dict[str, Any]

DECISIONS = ("local", "offload", "fallback", "rejected")
_COLOURS = {"local": "\033[32m", "offload": "\033[36m", "fallback": "\033[33m", "rejected": "\033[31m"}
_RESET = "\033[0m"
_DIM = "\033[2m"


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile (0..100) with linear interpolation (numpy's default); None if empty."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def fmt_us(us: Optional[float]) -> str:
    """A duration given in µs: ``"812 µs"`` below 1 ms, else ``"1.23 ms"``; ``"-"`` for None."""
    if us is None:
        return "-"
    if abs(us) < 1000:
        return f"{us:.0f} µs"
    return f"{us / 1000.0:.2f} ms"


def _num(value: Any) -> Optional[float]:
    """A finite float, or None (missing, null, a string, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def is_decision(record: Record) -> bool:
    return "decision" in record


def is_power(record: Record) -> bool:
    return not is_decision(record) and ("watts" in record or "rails" in record or "rail" in record)


def power_rails(record: Record) -> List[Tuple[str, Optional[float], bool]]:
    """``(rail, W, is_total)`` for each rail of a power record.

    Handles the sampler's one-record-per-rail form (``rail``, ``watts``, ``total``) and a
    ``rails`` list form (items with ``rail``/``name``, ``watts``, ``total``/``is_total``). A
    flat record without a ``total`` key is a single-rail source, taken as the board total.
    """
    rails = record.get("rails")
    if isinstance(rails, list):
        out: List[Tuple[str, Optional[float], bool]] = []
        for item in rails:
            if isinstance(item, dict):
                name = str(item.get("rail") or item.get("name") or "?")
                total = bool(item.get("total") or item.get("is_total"))
                out.append((name, _num(item.get("watts")), total))
        if out and not any(t for _, _, t in out):
            total_w = _num(record.get("total_w"))
            if total_w is not None:
                out.append(("total", total_w, True))
            elif len(out) == 1:
                out[0] = (out[0][0], out[0][1], True)
        return out
    name = str(record.get("rail") or record.get("source") or "board")
    total = bool(record["total"]) if "total" in record else True
    return [(name, _num(record.get("watts")), total)]


def board_watts(record: Record) -> Optional[float]:
    """The whole-board power (W) in a power record, or None if this record has no total rail."""
    for _name, watts, total in power_rails(record):
        if total and watts is not None:
            return watts
    return None


def fmt_time(ts: Any) -> str:
    """Local wall time HH:MM:SS.mmm of a unix timestamp (``--:--:--.---`` if missing)."""
    t = _num(ts)
    if t is None:
        return "--:--:--.---"
    return _dt.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------
class Summary:
    """Running statistics over decision and power records (feed them in any order).

    ``window``: latencies kept per model for the percentiles (the newest ``window``); counts,
    shares and means cover everything fed. Rates use the records' own ``ts``:
    ``inputs_per_s = (n - 1) / (max ts - min ts)``.
    """

    def __init__(self, window: int = 100_000) -> None:
        self.window = window
        self.inputs = 0
        self.errors = 0
        self.counts: Dict[str, int] = {d: 0 for d in DECISIONS}
        self.per_model: Dict[str, int] = {}
        self.per_model_decision: Dict[Tuple[str, str], int] = {}
        self.latency: Dict[str, Deque[float]] = {}
        self.energy: Dict[Tuple[str, str], List[float]] = {}  # (model, decision) -> [sum mJ, count]
        self.ts_min: Optional[float] = None
        self.ts_max: Optional[float] = None
        self.power_samples = 0
        self.power_sum_w = 0.0
        self.power_max_w: Optional[float] = None
        self.rail_w: Dict[str, List[float]] = {}  # rail -> [sum W, count, max W]
        self.temp_max_c: Optional[float] = None
        self.throttled_seen = False
        self.rejected_reasons: Dict[str, int] = {}  # reason -> rejected records
        self.stats_file: Optional[Dict[str, Any]] = None  # the daemon's stats.json, see set_stats_file

    def set_stats_file(self, stats: Optional[Dict[str, Any]]) -> None:
        """The daemon's ``stats.json`` object (or None): adds unattributable input and log health."""
        self.stats_file = stats

    # -- feeding ------------------------------------------------------------------------------
    def feed(self, record: Record) -> None:
        """Add one decision or power record (other records are ignored)."""
        if is_decision(record):
            self._feed_decision(record)
        elif is_power(record):
            self.feed_power(record)

    def _feed_decision(self, r: Record) -> None:
        self.inputs += 1
        model = str(r.get("model") or "?")
        decision = str(r.get("decision") or "?")
        self.counts[decision] = self.counts.get(decision, 0) + 1
        self.per_model[model] = self.per_model.get(model, 0) + 1
        key = (model, decision)
        self.per_model_decision[key] = self.per_model_decision.get(key, 0) + 1
        if r.get("error"):
            self.errors += 1
        if decision == "rejected":
            why = rejection_reason(r)
            self.rejected_reasons[why] = self.rejected_reasons.get(why, 0) + 1
        lat = _num(r.get("latency_us"))
        if lat is not None:
            self.latency.setdefault(model, collections.deque(maxlen=self.window)).append(lat)
        energy = _num(r.get("energy_mj"))
        if energy is not None:
            acc = self.energy.setdefault(key, [0.0, 0.0])
            acc[0] += energy
            acc[1] += 1
        ts = _num(r.get("ts"))
        if ts is not None:
            self.ts_min = ts if self.ts_min is None else min(self.ts_min, ts)
            self.ts_max = ts if self.ts_max is None else max(self.ts_max, ts)

    def feed_power(self, r: Record) -> None:
        """Add one power record (per-rail or ``rails``-list form)."""
        for name, watts, total in power_rails(r):
            if watts is None:
                continue
            acc = self.rail_w.setdefault(name, [0.0, 0.0, watts])
            acc[0] += watts
            acc[1] += 1
            acc[2] = max(acc[2], watts)
            if total:
                self.power_samples += 1
                self.power_sum_w += watts
                self.power_max_w = watts if self.power_max_w is None else max(self.power_max_w, watts)
        temp = _num(r.get("temp_c"))
        if temp is not None:
            self.temp_max_c = temp if self.temp_max_c is None else max(self.temp_max_c, temp)
        if is_throttled(r.get("throttled")):
            self.throttled_seen = True

    # -- results ------------------------------------------------------------------------------
    def inputs_per_s(self) -> Optional[float]:
        if self.inputs < 2 or self.ts_min is None or self.ts_max is None or self.ts_max <= self.ts_min:
            return None
        return (self.inputs - 1) / (self.ts_max - self.ts_min)

    def shares(self) -> Dict[str, float]:
        """Share (0..1) of each decision among all inputs."""
        n = self.inputs
        return {d: (c / n if n else 0.0) for d, c in self.counts.items()}

    def mean_power_w(self) -> Optional[float]:
        return self.power_sum_w / self.power_samples if self.power_samples else None

    def as_dict(self) -> Dict[str, Any]:
        """Everything :meth:`render` shows, as JSON-ready numbers (latencies in µs, power in W, energy in mJ)."""
        latency = {}
        for model in sorted(self.latency):
            vals = list(self.latency[model])
            latency[model] = {"count": len(vals), "p50_us": percentile(vals, 50), "p99_us": percentile(vals, 99)}
        energy: Dict[str, Dict[str, float]] = {}
        for (model, decision), (total, count) in sorted(self.energy.items()):
            energy.setdefault(model, {})[decision] = total / count
        return {
            "inputs": self.inputs,
            "errors": self.errors,
            "inputs_per_s": self.inputs_per_s(),
            "counts": dict(self.counts),
            "shares": self.shares(),
            "per_model": dict(sorted(self.per_model.items())),
            "latency": latency,
            "energy_mj_mean": energy,
            "rejected_reasons": dict(sorted(self.rejected_reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            "unattributable": unattributable_input(self.stats_file),
            "log_health": log_health(self.stats_file),
            "power": {
                "samples": self.power_samples,
                "mean_w": self.mean_power_w(),
                "max_w": self.power_max_w,
                "rails": {k: {"mean_w": v[0] / v[1], "max_w": v[2]} for k, v in sorted(self.rail_w.items()) if v[1]},
                "temp_max_c": self.temp_max_c,
                "throttled_seen": self.throttled_seen,
            },
        }

    def render(self) -> str:
        """One line: inputs, inputs/s, shares, p50/p99 per model, mean power, energy per model/decision."""
        parts: List[str] = []
        if self.inputs or not self.power_samples:
            rate = self.inputs_per_s()
            head = f"{self.inputs} inputs"
            if rate is not None:
                head += f" {rate:.1f}/s"
            shares = self.shares()
            head += "  " + "  ".join(f"{d} {shares.get(d, 0.0):.1%}" for d in DECISIONS if d in self.counts)
            others = [d for d in self.counts if d not in DECISIONS and self.counts[d]]
            if others:
                head += "  " + "  ".join(f"{d} {shares[d]:.1%}" for d in others)
            if self.errors:
                head += f"  errors {self.errors}"
            parts.append(head)
            if self.rejected_reasons:
                parts.append("rejected: " + fmt_counts(self.rejected_reasons))
            for model in sorted(self.latency):
                vals = list(self.latency[model])
                parts.append(f"{model} p50 {fmt_us(percentile(vals, 50))} p99 {fmt_us(percentile(vals, 99))}")
        if self.power_samples:
            power = f"power {self.mean_power_w():.2f} W mean"
            if not self.inputs:
                power = f"{self.power_samples} power samples, " + power
            if self.power_max_w is not None:
                power += f" (max {self.power_max_w:.2f} W)"
            if self.temp_max_c is not None:
                power += f" {self.temp_max_c:.1f}°C max"
            if self.throttled_seen:
                power += " THROTTLED"
            parts.append(power)
        if self.energy:
            parts.append("energy " + " ".join(f"{m}/{d} {t / c:.3g} mJ"
                                              for (m, d), (t, c) in sorted(self.energy.items())))
        parts.extend(stats_file_lines(self.stats_file))
        return " | ".join(parts)


def rejection_reason(r: Record) -> str:
    """The reason a ``rejected`` record gives (``reason``, else ``error``), shortened for a summary."""
    why = str(r.get("reason") or r.get("error") or "?")
    return why if len(why) <= 40 else why[:39] + "…"


def fmt_counts(counts: Dict[str, int], limit: int = 6) -> str:
    """``"non_finite 3, wrong_size 1"``: largest first, at most ``limit`` then ``+N more``."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", +{len(items) - limit} more"
    return text


def stats_file_lines(stats: Optional[Dict[str, Any]]) -> List[str]:
    """Summary parts from the daemon's ``stats.json``: unattributable input, log writer trouble."""
    out: List[str] = []
    un = unattributable_input(stats)
    if un is not None:
        text = f"unattributable input: {un['total']}"
        if un["reasons"]:
            text += f" ({fmt_counts(un['reasons'])})"
        if un["garbage_bytes"]:
            text += f", {un['garbage_bytes']} garbage bytes"
        out.append(text)
    health = log_health(stats)
    if health is not None and (health["degraded"] or health["lost"]):
        if health["degraded"]:
            text = (f"LOG DEGRADED: {', '.join(health['degraded'])} {health['spooled']} records waiting in memory, "
                    f"{health['lost']} lost")
        else:
            text = f"log writer lost {health['lost']} records"
        if health["last_error"]:
            text += f" ({health['last_error']})"
        out.append(text)
    return out


def is_throttled(value: Any) -> bool:
    """True for a throttle flag that says throttling happened (True, non-zero int or hex string)."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, (int, float)):
        return value != 0
    try:
        return int(str(value), 0) != 0
    except ValueError:
        return str(value).strip().lower() not in ("", "0", "no", "false", "none")


# ---------------------------------------------------------------------------------------------
# line formatting
# ---------------------------------------------------------------------------------------------
class LineFormatter:
    """Readable one-line renderings of decision and power records."""

    def __init__(self, colour: bool = False, width: Optional[int] = None) -> None:
        self.colour = colour
        self.width = width

    def format(self, r: Record) -> str:
        line = self.decision(r) if is_decision(r) else self.power(r) if is_power(r) else self.other(r)
        return line

    def _fit(self, plain_len: int, text: str, tail: str) -> str:
        if self.width is None or plain_len + len(tail) <= self.width:
            return text + tail
        room = max(0, self.width - plain_len - 1)
        return text + tail[:room] + "…"

    def decision(self, r: Record) -> str:
        decision = str(r.get("decision") or "?")
        model = str(r.get("model") or "?")
        result = r.get("result")
        label = "-"
        if isinstance(result, dict):
            score = _num(result.get("score"))
            label = f"{result.get('label', '?')}" + (f" ({score:.3f})" if score is not None else "")
        head_plain = f"{fmt_time(r.get('ts'))}  {model:<6} {decision:<8} {fmt_us(_num(r.get('latency_us'))):>10}  " \
                     f"{label:<10} "
        dec = f"{decision:<8}"
        if self.colour:
            dec = f"{_COLOURS.get(decision, '')}{dec}{_RESET}"
        head = f"{fmt_time(r.get('ts'))}  {model:<6} {dec} {fmt_us(_num(r.get('latency_us'))):>10}  {label:<10} "
        reason = str(r.get("reason") or "")
        if decision == "rejected":
            return self._fit(len(head_plain), head, self.rejection(r))
        if r.get("error"):
            reason = f"{reason}; error: {r['error']}" if reason else f"error: {r['error']}"
        return self._fit(len(head_plain), head, reason)

    @staticmethod
    def rejection(r: Record) -> str:
        """``non_finite (seq 42 from sensor-1); error: ...``: why, and which input, when known."""
        reason = str(r.get("reason") or "")
        error = str(r.get("error") or "")
        text = reason or error or "?"
        who = []
        if r.get("seq") is not None:
            who.append(f"seq {r['seq']}")
        if r.get("sender") not in (None, ""):
            who.append(f"from {r['sender']}")
        if who:
            text += f" ({' '.join(who)})"
        detail = str(r.get("detail") or "")
        if detail and detail not in (reason, error):
            text += f": {detail}"
        if error and error != reason and reason:
            text += f"; error: {error}"
        return text

    def power(self, r: Record) -> str:
        rails = power_rails(r)
        source = str(r.get("source") or "?")
        if "rails" in r and isinstance(r.get("rails"), list):
            body = "  ".join(f"{n}{'*' if t else ''} {_w(w)}" for n, w, t in rails)
        else:
            name, watts, total = rails[0] if rails else ("?", None, False)
            body = (f"{name + ('*' if total else ''):<10} {_w(watts):>8}  {_fmt(r.get('volts'), 'V', 2):>7}  "
                    f"{_fmt(r.get('amps'), 'A', 3):>8}")
        temp = _num(r.get("temp_c"))
        extra = f"  {temp:.1f}°C" if temp is not None else ""
        thr = r.get("throttled")
        if thr is not None:
            flag = f"throttled {thr}"
            if self.colour and is_throttled(thr):
                flag = f"\033[31m{flag}{_RESET}"
            extra += f"  {flag}"
        return f"{fmt_time(r.get('ts'))}  {source:<7} {body}{extra}"

    def other(self, r: Record) -> str:
        text = json.dumps(r, separators=(",", ":"), default=repr)
        return self._fit(0, "", text)


def _w(watts: Optional[float]) -> str:
    return "- W" if watts is None else f"{watts:.2f} W"


def _fmt(value: Any, unit: str, digits: int) -> str:
    v = _num(value)
    return f"- {unit}" if v is None else f"{v:.{digits}f} {unit}"


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
_REL_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now: Optional[float] = None) -> float:
    """``--since``: ``90``/``90s``/``5m``/``2h``/``1d`` ago, a unix timestamp, ``HH:MM[:SS]`` today or an
    ISO date-time (local time if it has no zone). Returns a unix timestamp (s)."""
    now = time.time() if now is None else now
    s = text.strip()
    m = _REL_RE.match(s)
    if m:
        value = float(m.group(1))
        if not m.group(2) and value > 1e9:
            return value  # an absolute unix timestamp
        return now - value * _UNIT_S[m.group(2)]
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?", s):
            t = _dt.time.fromisoformat(s if s.count(":") == 2 or len(s) > 5 else s + ":00")
            day = _dt.datetime.fromtimestamp(now).date()
            return _dt.datetime.combine(day, t).timestamp()
        return _dt.datetime.fromisoformat(s).timestamp()
    except ValueError:
        raise EdgedError(f"--since {text!r}: expected seconds ago (90, 90s, 5m, 2h, 1d), a unix timestamp, "
                         "HH:MM[:SS] or an ISO date-time like 2024-06-01T12:00") from None


def resolve_log(which: str, directory: Optional[str]) -> Tuple[Path, str]:
    """(path, kind) for the positional ``decisions``/``power``/FILE/DIR and ``--dir``."""
    base = Path(directory).expanduser() if directory else _default_dir(which)
    if which in ("decisions", "power"):
        _require_access(base)
        return base / f"{which}.jsonl", which
    p = Path(which).expanduser()
    if p.is_dir():
        _require_access(p)
        return p / "decisions.jsonl", "decisions"
    _require_access(p.parent)
    return p, "power" if p.name.startswith("power") else "decisions"


#: where edged.service writes (LogsDirectory=edged)
SERVICE_LOG_DIR = Path("/var/log/edged")


def _default_dir(which: str) -> Path:
    """:func:`default_log_dir`, except that a directory holding this log wins over one that does not.

    ``~/.local/state/edged/logs`` comes first, but an empty one (``sudo edged check-config`` creates
    root's) must not hide the service's logs: ``sudo edged tail`` then read nothing. With
    ``$LOGS_DIRECTORY`` (inside the service) that directory is used as it is.
    """
    base = default_log_dir()
    if os.environ.get("LOGS_DIRECTORY") or which not in ("decisions", "power"):
        return base
    user = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "edged" / "logs"
    for cand in (user, SERVICE_LOG_DIR):
        try:
            if any(cand.glob(f"{which}.jsonl*")):
                return cand
        except OSError:
            continue
    return base


def _require_access(directory: Path) -> None:
    """PermissionError if ``directory`` exists but this user may not list and read it.

    Without this an unreadable log directory looks empty to the reader (its glob finds nothing)
    and the user is told "no log at ...", which is wrong; a missing one is left to that message.
    """
    try:
        directory.stat()
    except FileNotFoundError:
        return
    if not os.access(directory, os.R_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(directory))


#: the group that edged.service (Group=edged-log, LogsDirectoryMode=0750, UMask=0027) lets read its logs
LOG_GROUP = "edged-log"


def permission_hint(exc: PermissionError, path: Optional[Path] = None) -> EdgedError:
    """What to do when the log directory is not readable by this user, instead of a traceback.

    The service's logs (/var/log/edged) are readable by root and the group ``edged-log``. The
    advice depends on this user: not in the group, in it but not in this login session yet, or on a
    system installed before the group existed (DynamicUser=yes: /var/log/private, root only).
    """
    import grp

    where = exc.filename or (str(path) if path else "the log directory")
    cmd = "edged tail " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["tail"] else "edged tail"
    head = f"cannot read {where}: permission denied."
    try:
        members = grp.getgrnam(LOG_GROUP)
    except KeyError:
        return EdgedError(f"{head} The service's logs are readable by root only here: run `sudo {cmd.strip()}` "
                          f"(or re-run hw/install.sh, which creates the group {LOG_GROUP!r} for readers)")
    user = ""
    try:
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        pass
    in_session = members.gr_gid in os.getgroups() or members.gr_gid == os.getgid()
    if user and user in members.gr_mem and not in_session:
        return EdgedError(f"{head} You are in the group {LOG_GROUP!r} but this login session predates that: log in "
                          f"again (or run `newgrp {LOG_GROUP}`), or use `sudo {cmd.strip()}`")
    if in_session:
        return EdgedError(f"{head} You are in the group {LOG_GROUP!r}, but {where} is not readable by it: is it the "
                          f"service's log directory (--dir DIR)? Otherwise use `sudo {cmd.strip()}`")
    return EdgedError(f"{head} The service's logs are readable by root and the group {LOG_GROUP!r}: run "
                      f"`sudo {cmd.strip()}`, or once `sudo usermod -aG {LOG_GROUP} {user or '$USER'}` "
                      "and log in again")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", nargs="?", default="decisions", metavar="decisions|power|FILE",
                   help="which log (default decisions), or a .jsonl file / log directory")
    p.add_argument("-f", "--follow", action="store_true", help="keep following new records (across rotation)")
    p.add_argument("--json", action="store_true", help="pass the records through as JSON lines")
    p.add_argument("--dir", metavar="DIR",
                   help="log directory (default $LOGS_DIRECTORY, else ~/.local/state/edged/logs or /var/log/edged)")
    p.add_argument("--model", action="append", default=[], metavar="M", help="only this model (repeatable)")
    p.add_argument("--since", metavar="S", help="only records newer than S: 90s, 5m, 2h, 1d, HH:MM or ISO time")
    p.add_argument("-n", "--lines", type=int, default=None, metavar="N",
                   help="show only the last N existing records (default: all; 10 with -f)")
    p.add_argument("--interval", type=float, default=5.0, metavar="S",
                   help="with -f, print the summary to stderr every S seconds (default 5; 0 = only at the end)")
    p.add_argument("--no-summary", action="store_true", help="do not print the summary line")
    p.add_argument("--no-color", "--no-colour", dest="no_color", action="store_true", help="never colour")
    p.add_argument("--poll", type=float, default=0.2, metavar="S", help=argparse.SUPPRESS)


class _Tail:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.path, self.kind = resolve_log(args.log, args.dir)
        self.models = {m for spec in args.model for m in spec.split(",") if m}
        self.since = parse_since(args.since) if args.since else None
        tty = _isatty(out)
        colour = tty and not args.no_color and "NO_COLOR" not in os.environ and not args.json
        self.fmt = LineFormatter(colour=colour, width=shutil.get_terminal_size().columns if tty else None)
        self.summary = Summary()
        self.stats = ReadStats()
        self.power_path = self.path.parent / "power.jsonl" if self.kind == "decisions" else None

    def keep(self, r: Record) -> bool:
        if self.models and is_decision(r) and str(r.get("model")) not in self.models:
            return False
        if self.since is not None:
            ts = _num(r.get("ts"))
            if ts is not None and ts < self.since:
                return False
        return True

    def emit(self, r: Record) -> None:
        if self.args.json:
            self.out.write(json.dumps(r, separators=(",", ":")) + "\n")
        else:
            self.out.write(self.fmt.format(r) + "\n")

    def print_summary(self) -> None:
        if self.args.no_summary:
            return
        if self.kind == "decisions":  # the daemon's counters beside the log (unattributable input)
            self.summary.set_stats_file(read_stats_file(self.path.parent))
        line = self.summary.render()
        skipped = []
        if self.stats.torn:
            skipped.append(f"{self.stats.torn} torn")
        if self.stats.bad:
            skipped.append(f"{self.stats.bad} unparsable")
        if skipped:
            line += f" | skipped {', '.join(skipped)} line(s)"
        self.err.write(f"== {line}\n")
        self.err.flush()

    def run_once(self) -> None:
        try:
            records = [r for r in read_records(self.path, stats=self.stats) if self.keep(r)]
        except FileNotFoundError:
            raise EdgedError(f"no log at {self.path} (use --dir DIR, or set LOGS_DIRECTORY)") from None
        for r in records:
            self.summary.feed(r)
        shown = records if self.args.lines is None else records[-self.args.lines:] if self.args.lines > 0 else []
        for r in shown:
            self.emit(r)
        self.out.flush()
        if self.power_path is not None and self.power_path.exists() and records:
            t0, t1 = self.summary.ts_min, self.summary.ts_max
            for p in read_records(self.power_path):
                ts = _num(p.get("ts"))
                if t0 is None or t1 is None or ts is None or t0 <= ts <= t1:
                    self.summary.feed_power(p)

    def run_follow(self, stop: threading.Event) -> None:
        reader = LogReader(self.path, follow=True, stats=self.stats)
        power: Optional[LogReader] = None
        if self.power_path is not None:
            power = LogReader(self.path.parent / "power.jsonl", follow=True, from_end=True)
        try:
            backlog = [r for r in reader.read_available() if self.keep(r)]
            n = 10 if self.args.lines is None else max(0, self.args.lines)
            rotated = [f for f in log_files(self.path) if f != str(self.path)]
            for older in reversed(rotated):  # fill the backlog from rotated files
                if len(backlog) >= n:
                    break
                backlog = [r for r in read_records(older, stats=self.stats) if self.keep(r)] + backlog
            for r in backlog[-n:] if n else []:
                self.summary.feed(r)
                self.emit(r)
            self.out.flush()
            interval = self.args.interval
            next_summary = time.monotonic() + interval if interval > 0 else math.inf
            while not stop.is_set():
                batch = reader.read_available()
                for r in batch:
                    if self.keep(r):
                        self.summary.feed(r)
                        self.emit(r)
                if batch:
                    self.out.flush()
                if power is not None:
                    for p in power.read_available():
                        self.summary.feed_power(p)
                if time.monotonic() >= next_summary:
                    self.print_summary()
                    next_summary = time.monotonic() + interval
                if not batch:
                    stop.wait(self.args.poll)
        finally:
            reader.close()
            if power is not None:
                power.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def main(args: argparse.Namespace) -> int:
    """Run ``edged tail``; 0 on success, Ctrl-C, SIGTERM and a closed pipe."""
    try:
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    try:
        return _run(args)
    except PermissionError as exc:  # e.g. /var/log/edged as a user outside the group edged-log
        raise permission_hint(exc) from None


def _run(args: argparse.Namespace) -> int:
    tail = _Tail(args, sys.stdout, sys.stderr)
    stop = threading.Event()
    guard = (stop_on_signals(stop) if args.follow and threading.current_thread() is threading.main_thread()
             else contextlib.nullcontext())
    try:
        with guard:  # never Event.set() inside a signal handler (see edged/signals.py)
            if args.follow:
                tail.run_follow(stop)
            else:
                tail.run_once()
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        pass
    tail.print_summary()
    return 0


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
