"""JSON-lines logs: the line-atomic writer with rotation and spool, the tolerant reader, journald.

* :mod:`edged.logs.writer` — :class:`JsonlWriter` (one ``os.write`` per line on ``O_APPEND``,
  size-based rotation, SIGHUP reopen; storage faults spool records in memory, retry with backoff and
  count what cannot be kept), :func:`encode_record`, :func:`ensure_writable_dir`;
* :mod:`edged.logs.reader` — :func:`iter_records`, :class:`LogReader`, :func:`read_records`,
  :func:`log_files` (torn last lines and unparsable lines skipped and counted; follows rotation);
* :mod:`edged.logs.journald` — :func:`setup_logging`, :class:`JournalHandler`, :class:`StderrFormatter`;
* :mod:`edged.logs.stats` — ``stats.json``: :func:`write_stats_file`, :func:`read_stats_file`.

Every name is re-exported here, so ``from edged.logs import X`` keeps working.
"""

from __future__ import annotations

from edged.logs.journald import (
    JournalHandler,
    StderrFormatter,
    journal_field_name,
    setup_logging,
    stderr_is_journal,
    syslog_priority,
)
from edged.logs.reader import (
    LogReader,
    ReadStats,
    default_log_dir,
    iter_records,
    log_files,
    parse_line,
    read_records,
)
from edged.logs.stats import (
    STATS_FILE,
    log_health,
    read_stats_file,
    unattributable_input,
    write_stats_file,
)
from edged.logs.writer import (
    DEFAULT_BACKUPS,
    DEFAULT_MAX_BYTES,
    DEFAULT_SPOOL_RECORDS,
    JsonlWriter,
    PathLike,
    Record,
    describe_os_error,
    encode_record,
    ensure_writable_dir,
    make_sink,
)

__all__ = [
    "DEFAULT_BACKUPS", "DEFAULT_MAX_BYTES", "DEFAULT_SPOOL_RECORDS", "STATS_FILE",
    "JournalHandler", "JsonlWriter", "LogReader", "PathLike", "ReadStats", "Record", "StderrFormatter",
    "default_log_dir", "describe_os_error", "encode_record", "ensure_writable_dir", "iter_records",
    "journal_field_name", "log_files", "log_health", "make_sink", "parse_line", "read_records",
    "read_stats_file", "setup_logging", "stderr_is_journal", "syslog_priority", "unattributable_input",
    "write_stats_file",
]
