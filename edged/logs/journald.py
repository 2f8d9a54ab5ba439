"""Operational logging: journald with structured fields, else stderr (which journald captures).

:func:`setup_logging` sends operational messages to journald with structured fields when
systemd-python is importable and the process runs under journald, else to stderr. ``journal.send``
fails *silently* without a running journald, so the decision and power records are always written
to the JSON-lines files, never only to the journal.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from typing import Any, Dict, Optional, Union

log = logging.getLogger("edged.logs")

#: Python level -> syslog priority (journald PRIORITY=)
_SYSLOG_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_FIELD_RE = re.compile(r"[^A-Z0-9_]")


def syslog_priority(levelno: int) -> int:
    """The syslog priority (0 emerg … 7 debug) of a :mod:`logging` level."""
    for level, prio in _SYSLOG_PRIORITY:
        if levelno >= level:
            return prio
    return 7


def journal_field_name(key: str) -> str:
    """A valid journald field name: upper case, ``[A-Z0-9_]``, not starting with ``_`` or a digit."""
    name = _FIELD_RE.sub("_", str(key).upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "F_" + name
    return name[:64]


def _record_fields(record: logging.LogRecord) -> Dict[str, str]:
    fields = getattr(record, "journal_fields", None) or {}
    out: Dict[str, str] = {}
    if isinstance(fields, dict):
        for k, v in fields.items():
            out[journal_field_name(k)] = "" if v is None else str(v)
    return out


class JournalHandler(logging.Handler):
    """Sends each log record to journald via ``systemd.journal.send`` with structured fields.

    Fields: ``PRIORITY`` (syslog level), ``SYSLOG_IDENTIFIER``, ``LOGGER``, ``CODE_FILE``,
    ``CODE_LINE``, ``CODE_FUNC``, ``THREAD_NAME``, plus ``extra={"journal_fields": {...}}`` from the
    log call (keys upper-cased, e.g. ``MODEL=cnn DECISION=fallback``). ``journal.send`` is looked up
    at every emit, and it fails silently when journald is not running: never use this handler as
    the only home of data that matters.
    """

    def __init__(self, identifier: str = "edged", level: int = logging.NOTSET) -> None:
        super().__init__(level)
        # raises ImportError without systemd-python ('pip install edged[systemd]')
        self._journal: Any = importlib.import_module("systemd.journal")
        self.identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                formatter = self.formatter or logging.Formatter()
                message = message + "\n" + formatter.formatException(record.exc_info)
            fields: Dict[str, Any] = {
                "PRIORITY": str(syslog_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": int(record.lineno),  # journal.send formats it with {:d}
                "CODE_FUNC": record.funcName,
                "THREAD_NAME": record.threadName or "",
            }
            extra = _record_fields(record)
            extra.pop("MESSAGE", None)  # the message itself is positional
            fields.update(extra)
            self._journal.send(message, **fields)
        except Exception:
            self.handleError(record)


class StderrFormatter(logging.Formatter):
    """Plain stderr lines; appends ``journal_fields`` as ``KEY=value``.

    ``under_journal``: stderr is a journald stream (``$JOURNAL_STREAM``): the line starts with the
    ``<N>`` syslog priority prefix journald understands, and without a timestamp (journald adds one).
    """

    def __init__(self, under_journal: bool = False) -> None:
        fmt = "%(name)s: %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)
        self.under_journal = under_journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _record_fields(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if self.under_journal:
            prefix = f"<{syslog_priority(record.levelno)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


def stderr_is_journal() -> bool:
    """True when stderr is the journald stream systemd connected (``$JOURNAL_STREAM`` = dev:ino of fd 2)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":", 1))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def setup_logging(level: Union[int, str] = logging.INFO, journal: str = "auto",
                  identifier: str = "edged") -> logging.Handler:
    """Configure the root logger for operational messages; returns the installed handler.

    ``journal``: ``"on"`` — journald via systemd-python (stderr with a warning if it is not
    installed: ``pip install 'edged[systemd]'``); ``"auto"`` — journald only when systemd-python is
    importable AND stderr is a journald stream (running as a service), so a terminal still sees
    messages; ``"off"`` — stderr. Replaces handlers already on the root logger.
    """
    if journal not in ("auto", "on", "off"):
        raise ValueError(f"journal {journal!r}: expected auto, on or off")
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            level = logging.INFO
    handler: Optional[logging.Handler] = None
    missing = False
    if journal == "on" or (journal == "auto" and stderr_is_journal()):
        try:
            handler = JournalHandler(identifier)
        except ImportError:
            missing = journal == "on"
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter(under_journal=stderr_is_journal()))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    if missing:
        log.warning("journal = \"on\" but systemd-python is not installed: pip install 'edged[systemd]'; "
                    "logging to stderr")
    return handler
