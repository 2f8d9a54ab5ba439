"""``stats.json``: the daemon's counters beside the logs, for ``edged tail`` and ``edged report``.

The daemon replaces ``<logs dir>/stats.json`` atomically (:func:`write_stats_file`: tmp file +
``os.replace``) every status interval and at stop. Shape::

    {"ts": <unix s>,
     "sources": {"<name>": {"accepted": N, "rejected": {"<reason>": N, ...}, "lost_in_transit": N,
                            "garbage_bytes": N, "unattributed": {"<reason>": N, ...}, ...}},
     "logs": {"decisions": {<JsonlWriter.stats()>}, "power": {...}}}

Input that could not be attributed to a model (a frame whose CRC fails, a header that does not
parse, …) has no decision record: it lives only in these counters. Per source, ``unattributed``
(reason → count) holds exactly those; without it, ``rejected`` is taken (a daemon that writes a
record for every attributable rejection counts only the unattributable ones there).
``logs`` may also be a single writer's stats.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

from edged.logs.writer import describe_os_error, encode_record

log = logging.getLogger("edged.logs")

PathLike = Union[str, "os.PathLike[str]"]
STATS_FILE = "stats.json"

_stats_warned_at: Dict[str, float] = {}


def write_stats_file(directory: PathLike, obj: Any, name: str = STATS_FILE) -> bool:
    """Atomically replace ``<directory>/<name>`` with ``obj`` as JSON (tmp file + ``os.replace``).

    Readers (``edged tail``, ``edged report``) therefore see the old or the new file, never half
    of one. Never raises: returns False (and logs a warning at most once a minute per path) when
    the file could not be written; the decision log's own state is in the writer's stats.
    """
    d = Path(directory)
    target = d / name
    tmp = d / f".{name}.{os.getpid()}.tmp"
    data = encode_record(obj)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)
        os.replace(tmp, target)
        return True
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        now = time.monotonic()
        if now - _stats_warned_at.get(str(target), -math.inf) >= 60.0:
            _stats_warned_at[str(target)] = now
            log.warning("could not write %s: %s", target, describe_os_error(exc))
        return False


def read_stats_file(directory: PathLike, name: str = STATS_FILE) -> Optional[Dict[str, Any]]:
    """The object in ``<directory>/<name>``, or None if it is missing, unreadable or not a JSON object."""
    try:
        with open(Path(directory) / name, "rb") as f:
            obj = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return int(value)


def _reasons(value: Any) -> Dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): _count(v) for k, v in value.items() if _count(v)}


def unattributable_input(stats: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Input counted only at the sources (no decision record), from a ``stats.json`` object.

    Returns ``{"ts", "total", "reasons": {reason: N} (largest first), "garbage_bytes",
    "lost_in_transit", "per_source": {name: {"accepted", "total", "reasons", "garbage_bytes",
    "lost_in_transit"}}}``, or None without a ``sources`` object.
    """
    if not stats or not isinstance(stats.get("sources"), dict):
        return None
    per_source: Dict[str, Dict[str, Any]] = {}
    reasons: Dict[str, int] = {}
    garbage = lost = 0
    for name, src in sorted(stats["sources"].items()):
        if not isinstance(src, dict):
            continue
        mine = _reasons(src["unattributed"]) if "unattributed" in src else _reasons(src.get("rejected"))
        for k, v in mine.items():
            reasons[k] = reasons.get(k, 0) + v
        g, t = _count(src.get("garbage_bytes")), _count(src.get("lost_in_transit"))
        garbage += g
        lost += t
        per_source[str(name)] = {"accepted": _count(src.get("accepted")), "total": sum(mine.values()),
                                 "reasons": dict(sorted(mine.items(), key=lambda kv: (-kv[1], kv[0]))),
                                 "garbage_bytes": g, "lost_in_transit": t}
    ts = stats.get("ts")
    return {"ts": ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None,
            "total": sum(reasons.values()),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            "garbage_bytes": garbage, "lost_in_transit": lost, "per_source": per_source}


def log_health(stats: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The writers' state from a ``stats.json`` object: ``{"degraded": [names], "spooled", "lost",
    "last_error", "per_log": {name: writer stats}}``, or None without a ``logs`` object."""
    logs = stats.get("logs") if stats else None
    if not isinstance(logs, dict):
        return None
    writers = {"log": logs} if "written" in logs or "lost" in logs else \
        {str(k): v for k, v in logs.items() if isinstance(v, dict)}
    degraded = sorted(k for k, w in writers.items() if w.get("degraded"))
    errors = [str(w["last_error"]) for _k, w in sorted(writers.items()) if w.get("degraded") and w.get("last_error")]
    return {"degraded": degraded, "spooled": sum(_count(w.get("spooled")) for w in writers.values()),
            "lost": sum(_count(w.get("lost")) for w in writers.values()),
            "last_error": errors[0] if errors else None, "per_log": writers}
