"""The line-atomic JSON-lines writer (:class:`JsonlWriter`) with rotation, a bounded spool and retry.

Every record is encoded with orjson, or the real :mod:`json` encoder where orjson would differ
(:func:`encode_record`: numpy
scalars/arrays become numbers/lists, NaN/inf become ``null``, anything else its ``repr``) and
written with ONE ``os.write`` of the whole line including ``\\n`` on an ``O_APPEND`` descriptor,
under a lock. A crash (kill -9, power cut) can therefore tear at most the line being written; on
the next open the writer terminates such a torn tail with ``\\n`` so it never swallows the next
record. Size-based rotation renames ``decisions.jsonl`` → ``.1`` → ``.2`` … under the same lock,
so no line is lost or split across files. :meth:`JsonlWriter.reopen` (the daemon calls it on
SIGHUP) closes and reopens the same path, so ``logrotate`` can rename the file without
``copytruncate``.

Storage faults (disk full ``ENOSPC``, file-size limit ``EFBIG``, ``EIO``, ``EACCES``/``EISDIR`` on
reopen, a deleted file or directory) never raise into the caller and never lose a record
silently: see :class:`JsonlWriter` for the spool / retry / loss policy (also in ``docs/logs.md``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import enum
import errno
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from edged._json import HAVE_ORJSON
from edged.errors import LogStorageError, describe_os_error

log = logging.getLogger("edged.logs")

Record = Dict[str, Any]
PathLike = Union[str, "os.PathLike[str]"]

#: default rotation threshold of :class:`JsonlWriter` (bytes)
DEFAULT_MAX_BYTES = 50_000_000
#: default number of rotated files kept (``.1`` … ``.5``)
DEFAULT_BACKUPS = 5
#: default bound of the in-memory spool (records; a decision line is ~0.5–1 KB, so ≈ 5–10 MB)
DEFAULT_SPOOL_RECORDS = 10_000
#: first and longest wait between two retries of a failing log (s); doubles after each failure
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
#: while degraded, a reminder is logged at most this often (s)
REMINDER_INTERVAL_S = 30.0
#: how deep nested containers are encoded before the rest becomes its ``repr``
_MAX_DEPTH = 32


# ---------------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    """``json.dumps(default=...)``: numpy scalars/arrays, paths, sets, bytes, datetimes, else repr."""
    item = getattr(obj, "item", None)
    tolist = getattr(obj, "tolist", None)
    module = type(obj).__module__
    if module == "numpy" or module.startswith("numpy."):
        if tolist is not None and getattr(obj, "ndim", 0) > 0:
            return tolist()  # ndarray
        if item is not None:
            return item()  # numpy scalar -> Python scalar
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", "backslashreplace")
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return repr(obj)


def _sanitize(obj: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of ``obj``: NaN/inf → None, non-str keys → str, unknown objects → default()."""
    if depth > _MAX_DEPTH:
        return repr(obj)
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = k if isinstance(k, str) else (str(k) if isinstance(k, (int, float, bool)) or k is None else repr(k))
            out[key] = _sanitize(v, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v, depth + 1) for v in obj]
    try:
        converted = _json_default(obj)
    except Exception:
        return _safe_repr(obj)
    if isinstance(converted, str) or converted is obj:
        return converted if isinstance(converted, str) else _safe_repr(obj)
    return _sanitize(converted, depth + 1)


def _safe_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception as exc:  # a broken __repr__ must not lose the record
        return f"<unrepresentable {type(obj).__name__}: {exc}>"


#: one encoder for every line (json.dumps with options would build a new one per call)
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=False)


def _orjson_default(obj: Any) -> Any:
    """:func:`_json_default` for orjson, plus float subclasses (json encodes them as floats)."""
    if isinstance(obj, float):
        return float(obj)
    return _json_default(obj)


if HAVE_ORJSON:
    import orjson as _orjson

    #: dataclasses are encoded natively (same fields as ``dataclasses.asdict``); datetimes go to
    #: ``default`` (``isoformat()``, as json); numpy goes to ``default`` too (``item()``/``tolist()``,
    #: as json: OPT_SERIALIZE_NUMPY would write float32 as its shortest float32 text, ``0.1``
    #: instead of json's ``0.10000000149011612``, a different value once parsed).
    _ORJSON_OPTS = _orjson.OPT_PASSTHROUGH_DATETIME | _orjson.OPT_APPEND_NEWLINE
    _orjson_dumps: Optional[Callable[..., bytes]] = _orjson.dumps
else:  # pragma: no cover - orjson is in install_requires; edged._json logged the fallback
    _ORJSON_OPTS = 0
    _orjson_dumps = None


def encode_record(record: Any) -> bytes:
    """One JSON line (UTF-8, ASCII-escaped, ending in ``\\n``) for ``record``. Never raises.

    Fastest path: orjson with :func:`_orjson_default` (NaN/inf become ``null`` natively). Its line
    is kept only if it is ASCII (json escapes non-ASCII; a raw U+2028 could split a line for a
    reader); anything orjson refuses (non-str keys, integers beyond 64 bits, lone surrogates,
    circular or 255+ deep nesting) takes the json path: the stock encoder with
    :func:`_json_default`; if that fails (NaN/inf, odd keys, a circular reference, a failing
    ``default``), the record is sanitised first.
    """
    if _orjson_dumps is not None:
        try:
            line = _orjson_dumps(record, default=_orjson_default, option=_ORJSON_OPTS)
        except Exception:  # noqa: BLE001 - orjson.JSONEncodeError, or a failing default: json decides
            pass
        else:
            if line.isascii():
                return line
    try:
        text = _ENCODER.encode(record)
    except Exception:
        try:
            text = json.dumps(_sanitize(record), separators=(",", ":"), default=_safe_repr, allow_nan=False)
        except Exception as exc:  # last resort: the record's repr as a string field
            text = json.dumps({"unencodable": _safe_repr(record), "encode_error": _safe_repr(exc)})
    return (text + "\n").encode("ascii")


# ---------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------
class JsonlWriter:
    """Thread-safe, line-atomic JSON-lines writer with rotation, SIGHUP reopen, spool and retry.

    Args:
        path: the log file (its directory is created if missing).
        max_bytes: rotate before a line would make the file larger than this (bytes);
            ``0``/``None`` disables the built-in rotation (e.g. when logrotate owns it).
        backups: rotated files kept (``path.1`` newest … ``path.<backups>`` oldest); with 0 the
            full file is deleted at rotation.
        fsync: ``os.fsync`` after every write (survives power loss; costs one flush per write call).
        mode: permission bits for a created file.
        spool_records: records kept in memory while the file cannot be written (0: none).
        retry_min_s, retry_max_s: first and longest wait between retries (s); doubles per failure.
        clock: monotonic clock (s), for tests.

    Invariants: one ``os.write`` per line (or group of lines) on an ``O_APPEND`` fd; rotation happens
    between lines under the same lock as writes, so each line lives whole in exactly one file; a
    write that fails midway is cut back to the last complete line (``ftruncate``), so the file holds
    only complete lines and every record is in exactly one of: the file (``written``), the spool
    (``spooled``) or the loss counter (``lost``).

    Fault policy: when a write (or open, rotation, reopen) fails with an ``OSError`` the writer is
    *degraded*: the record and every later one go to a FIFO spool of at most ``spool_records``
    records, and an error is logged once. Retries never sleep in the caller: the next :meth:`write`
    after the backoff delay, or :meth:`retry` (the daemon calls it every main-loop tick), closes and
    reopens the file and writes the spool first, in order; the delay doubles from ``retry_min_s`` up
    to ``retry_max_s`` while it keeps failing. When the spool has been written the writer recovers
    and logs one line with the counts. While degraded a reminder is logged at most every 30 s. When
    the spool is full, *new* records are dropped and counted in ``lost`` (the spool keeps the oldest:
    the file stays a gap-free prefix plus one contiguous gap that starts where the spool filled, and
    the records kept are the ones already promised the longest). :meth:`close` makes one last
    attempt (more within ``timeout_s``); what still cannot be written is counted in ``lost``.
    :meth:`retry` also notices a log file that was deleted under the writer (``st_nlink == 0``, e.g.
    its directory removed): it recreates it and rewrites the lines written since the previous check.
    """

    def __init__(self, path: PathLike, max_bytes: Optional[int] = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS, fsync: bool = False, mode: int = 0o644,
                 spool_records: int = DEFAULT_SPOOL_RECORDS, retry_min_s: float = RETRY_MIN_S,
                 retry_max_s: float = RETRY_MAX_S, clock: Callable[[], float] = time.monotonic) -> None:
        if backups < 0:
            raise ValueError(f"backups {backups!r}: must be >= 0")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes {max_bytes!r}: must be >= 0 (0 disables rotation)")
        if spool_records < 0:
            raise ValueError(f"spool_records {spool_records!r}: must be >= 0 (0 keeps nothing in memory)")
        if not 0 < retry_min_s <= retry_max_s:
            raise ValueError(f"retry_min_s {retry_min_s!r}, retry_max_s {retry_max_s!r}: need 0 < min <= max")
        self.path = Path(path)
        self.max_bytes = int(max_bytes or 0)
        self.backups = int(backups)
        self.fsync = bool(fsync)
        self.mode = mode
        self.spool_records = int(spool_records)
        self.retry_min_s = float(retry_min_s)
        self.retry_max_s = float(retry_max_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self._size = 0
        self._checked_size = 0  # file offset up to which the file was known to be linked
        self._closed = False
        self._torn = False  # a partial write left an unterminated line behind
        self._lines = 0
        self._bytes = 0
        self._rotations = 0
        self._reopens = 0
        self._errors = 0
        self._lost = 0
        self._retries = 0
        self._recoveries = 0
        self._last_error: Optional[str] = None
        self._spool: Deque[bytes] = collections.deque()
        self._degraded = False
        self._since: Optional[float] = None
        self._next_retry = 0.0
        self._backoff = self.retry_min_s
        self._last_reminder = 0.0
        self._last_alarm = -math.inf
        self._outage_lost0 = 0
        self._outage_spooled = 0
        self._spool_full_logged = False
        self._closed_logged = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            try:
                self._open_locked()
            except OSError as exc:  # e.g. a read-only dir: degraded; records spool until it opens
                self._degrade_locked(exc, "opening", self._clock())

    # -- public ---------------------------------------------------------------------------------
    def write(self, record: Record) -> None:
        """Encode and append one record as one line. Never raises (see the class fault policy)."""
        self._submit([encode_record(record)])

    def write_many(self, records: List[Record]) -> None:
        """Append several records with as few ``os.write`` calls as rotation allows. Never raises.

        Lines are grouped into one write up to the rotation limit, so every line still lands whole
        in exactly one file; a crash can tear at most the last line of the group being written.
        """
        if records:
            self._submit([encode_record(r) for r in records])

    def __call__(self, record: Record) -> None:
        """Alias of :meth:`write`, so the writer can be passed as a ``sink``."""
        self.write(record)

    def retry(self, force: bool = False) -> bool:
        """Housekeeping for the daemon's main loop (call every tick; never sleeps, never raises).

        Degraded: when the backoff delay has passed (or ``force``), reopen and write the spool.
        Healthy: check the open file still has a name (``st_nlink > 0``); if it was deleted (its
        directory removed), recreate it and rewrite the lines written since the last check.
        Returns True when the writer is healthy afterwards.
        """
        now = self._clock()
        with self._lock:
            if self._closed:
                return not self._spool and not self._degraded
            if self._degraded:
                if force or now >= self._next_retry:
                    self._attempt_locked(now)
                if self._degraded:
                    self._remind_locked(now)
            else:
                self._check_linked_locked(now)
            return not self._degraded

    def reopen(self) -> None:
        """Close and reopen ``path`` (call on SIGHUP after logrotate renamed the file). Never raises.

        A failing reopen makes the writer degraded (records spool, retries follow); on a degraded
        writer this is an immediate retry.
        """
        now = self._clock()
        with self._lock:
            if self._closed:
                return
            if self._degraded:
                self._attempt_locked(now)
                return
            self._close_fd_locked()
            try:
                self._open_locked()
                self._reopens += 1
            except OSError as exc:
                self._degrade_locked(exc, "reopening", now)

    def flush(self) -> None:
        """``fsync`` the file (lines are already in the kernel after each write)."""
        with self._lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    log.debug("log %s: fsync: %s", self.path, exc)

    def close(self, timeout_s: float = 0.0) -> int:
        """Write what is spooled (one attempt, more until ``timeout_s`` s), fsync and close. Idempotent.

        Records still spooled afterwards are counted in ``lost`` (and logged); later writes are
        counted as errors and lost. Returns the total of lost records (``stats()["lost"]``).
        """
        deadline = time.monotonic() + max(0.0, timeout_s)  # real time: this one sleeps
        while True:
            with self._lock:
                if self._closed:
                    return self._lost
                if not (self._degraded and self._spool):
                    break
                self._attempt_locked(self._clock())
                if not self._degraded:
                    break
                wait = min(self._backoff, deadline - time.monotonic())
            if wait <= 0:
                break
            time.sleep(wait)  # not under the lock: writers keep spooling meanwhile
        with self._lock:
            if self._closed:
                return self._lost
            if self._spool:
                n = len(self._spool)
                self._lost += n
                self._spool.clear()
                log.error("log %s: closed with %d record(s) that could not be written (%s); %d lost in total",
                          self.path, n, self._last_error, self._lost)
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass
            self._close_fd_locked()
            self._closed = True
            return self._lost

    def stats(self) -> Dict[str, Any]:
        """Counters (JSON-ready).

        ``written`` records in the file (``lines`` is the same number, kept for old readers),
        ``bytes`` written, ``spooled`` records waiting in memory, ``lost`` records that could not
        be kept (spool full, or still spooled at close, or written after close), ``degraded``
        (writes are failing), ``since`` (``time.monotonic()`` when the degraded spell began, else
        None), ``degraded_for_s`` (how long it has lasted, s, else None), ``last_error`` (the
        latest failure, kept after recovery), ``errors`` (records not written when they arrived:
        spooled or lost), ``retries``, ``recoveries``, ``rotations``, ``reopens``, ``size`` of the
        current file, ``spool_records`` (the bound).
        """
        now = self._clock()
        with self._lock:
            since = self._since
            return {"path": str(self.path), "written": self._lines, "lines": self._lines, "bytes": self._bytes,
                    "spooled": len(self._spool), "lost": self._lost, "degraded": self._degraded,
                    "since": since, "degraded_for_s": None if since is None else max(0.0, now - since),
                    "last_error": self._last_error, "errors": self._errors,
                    "retries": self._retries, "recoveries": self._recoveries, "rotations": self._rotations,
                    "reopens": self._reopens, "size": self._size, "spool_records": self.spool_records}

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals (caller holds the lock) ------------------------------------------------------
    def _submit(self, lines: List[bytes]) -> None:
        now = self._clock()
        with self._lock:
            if self._closed:
                self._errors += len(lines)
                self._lost += len(lines)
                self._last_error = "write after close"
                if not self._closed_logged:
                    self._closed_logged = True
                    log.error("log %s: write after close: record(s) lost and counted", self.path)
                return
            if self._degraded:
                if now >= self._next_retry:
                    self._attempt_locked(now)
                if self._degraded:
                    self._errors += len(lines)
                    self._keep_locked(lines)
                    self._remind_locked(now)
                    return
            n, exc = self._append_locked(lines)
            if exc is not None:
                self._errors += len(lines) - n
                self._degrade_locked(exc, "writing", now)
                self._keep_locked(lines[n:])

    def _keep_locked(self, lines: Sequence[bytes]) -> None:
        """Spool ``lines`` (oldest kept: what does not fit is lost and counted)."""
        room = max(0, self.spool_records - len(self._spool))
        keep = lines if len(lines) <= room else lines[:room]
        self._spool.extend(keep)
        self._outage_spooled += len(keep)
        dropped = len(lines) - len(keep)
        if dropped:
            self._lost += dropped
            if not self._spool_full_logged:
                self._spool_full_logged = True
                log.error("log %s: spool full (%d records): newer records are lost and counted until the log "
                          "can be written again", self.path, self.spool_records)

    def _degrade_locked(self, exc: BaseException, what: str, now: float) -> None:
        self._last_error = f"{what} {self.path}: {describe_os_error(exc)}"
        self._backoff = self.retry_min_s
        self._next_retry = now + self._backoff
        self._close_fd_locked()
        if self._degraded:
            return
        self._degraded = True
        self._since = now
        self._last_reminder = now
        self._outage_lost0 = self._lost
        self._outage_spooled = 0
        self._spool_full_logged = False
        if now - self._last_alarm >= REMINDER_INTERVAL_S:
            self._last_alarm = now
            log.error("log %s: %s failed (%s); records wait in memory (up to %d) and writing is retried",
                      self.path, what, describe_os_error(exc), self.spool_records)
        else:  # flapping: fold into a warning so the journal is not flooded
            log.warning("log %s: %s failed again (%s)", self.path, what, describe_os_error(exc))

    def _remind_locked(self, now: float) -> None:
        if now - self._last_reminder >= REMINDER_INTERVAL_S:
            self._last_reminder = now
            log.warning("log %s: still failing after %.0fs (%s): %d record(s) waiting in memory, %d lost so far",
                        self.path, now - (self._since or now), self._last_error, len(self._spool), self._lost)

    def _attempt_locked(self, now: float) -> None:
        """Reopen and write the spool in order; recover when it is empty, else back off."""
        self._retries += 1
        self._close_fd_locked()
        try:
            self._open_locked()  # proves the path opens even with nothing spooled
        except OSError as exc:
            self._retry_failed_locked(exc, now)
            return
        n, err = self._append_locked(list(self._spool))
        for _ in range(n):
            self._spool.popleft()
        if err is None:
            since = self._since if self._since is not None else now
            self._degraded = False
            self._since = None
            self._backoff = self.retry_min_s
            self._recoveries += 1
            self._reopens += 1
            log.warning("log %s: writing again after %.1fs degraded: %d record(s) kept in memory were written, "
                        "%d lost", self.path, now - since, self._outage_spooled, self._lost - self._outage_lost0)
            return
        self._retry_failed_locked(err, now)

    def _retry_failed_locked(self, exc: BaseException, now: float) -> None:
        self._last_error = f"retrying {self.path}: {describe_os_error(exc)}"
        self._close_fd_locked()
        self._backoff = min(self._backoff * 2.0, self.retry_max_s)
        self._next_retry = now + self._backoff

    def _check_linked_locked(self, now: float) -> None:
        """Recreate a log file deleted under us; rewrite the lines written since the last check."""
        if self._fd is None:
            return
        try:
            st = os.fstat(self._fd)
        except OSError as exc:
            self._degrade_locked(exc, "checking", now)
            return
        if st.st_nlink > 0:
            self._checked_size = self._size
            return
        salvage = b""
        if self._size > self._checked_size:
            try:
                salvage = os.pread(self._fd, self._size - self._checked_size, self._checked_size)
            except OSError:
                salvage = b""
        lines = [x + b"\n" for x in salvage.split(b"\n")[:-1] if x.strip()]
        log.error("log %s: the file was deleted while open (its directory removed?): recreating it and "
                  "rewriting %d line(s) written since the last check", self.path, len(lines))
        self._lines -= len(lines)
        self._bytes -= sum(len(x) for x in lines)
        self._close_fd_locked()
        try:
            self._open_locked()
        except OSError as exc:
            self._degrade_locked(exc, "recreating", now)
            self._keep_locked(lines)
            return
        n, err = self._append_locked(lines)
        if err is not None:
            self._degrade_locked(err, "recreating", now)
            self._keep_locked(lines[n:])
        else:
            self._reopens += 1

    def _append_locked(self, lines: Sequence[bytes]) -> Tuple[int, Optional[OSError]]:
        """Write ``lines`` in order (opening and rotating as needed): (lines written, error or None)."""
        n = 0
        total = len(lines)
        while n < total:
            try:
                if self._fd is None:
                    self._open_locked()
                if self.max_bytes and self._size > 0 and self._size + len(lines[n]) > self.max_bytes:
                    self._rotate_locked()
                if self._torn:  # an earlier partial write we could not cut back: start a fresh line
                    assert self._fd is not None
                    os.write(self._fd, b"\n")
                    self._size += 1
                    self._torn = False
            except OSError as exc:
                return n, exc
            room = (self.max_bytes - self._size) if self.max_bytes else None
            j = n + 1
            size = len(lines[n])
            while j < total and (room is None or size + len(lines[j]) <= room):
                size += len(lines[j])
                j += 1
            done, err = self._write_group_locked(lines[n:j])
            n += done
            if err is not None:
                return n, err
        return n, None

    def _write_group_locked(self, group: Sequence[bytes]) -> Tuple[int, Optional[OSError]]:
        """One ``os.write`` (continued after short writes) of ``group``: (complete lines written, error).

        A failure midway cuts the file back to the last complete line, so no torn line is left
        behind (if the cut fails too, the next write starts with a newline instead).
        """
        fd = self._fd
        assert fd is not None
        data = group[0] if len(group) == 1 else b"".join(group)
        view = memoryview(data)
        written = 0
        error: Optional[OSError] = None
        while written < len(data):
            try:
                k = os.write(fd, view[written:])
            except OSError as exc:
                error = exc
                break
            if k <= 0:  # pragma: no cover - regular files do not return 0
                error = OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
                break
            written += k
        if error is None:
            self._size += written
            self._bytes += written
            self._lines += len(group)
            if self.fsync:
                try:
                    os.fsync(fd)
                except OSError as exc:  # the lines are in the kernel; the disk reports trouble
                    return len(group), exc
            return len(group), None
        complete = 0
        kept = 0
        for line in group:
            if kept + len(line) > written:
                break
            kept += len(line)
            complete += 1
        partial = written - kept
        self._size += kept
        self._bytes += kept
        self._lines += complete
        if partial:
            try:
                os.ftruncate(fd, os.fstat(fd).st_size - partial)
            except OSError:
                self._size += partial
                self._torn = True
        return complete, error

    def _open_locked(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:  # read access too, so lines written to a file deleted under us can be salvaged
            fd = os.open(self.path, os.O_RDWR | flags, self.mode)
        except PermissionError:
            fd = os.open(self.path, os.O_WRONLY | flags, self.mode)
        try:
            size = os.fstat(fd).st_size
            if size > 0 and not _ends_with_newline(self.path, size):
                # a crash tore the last line: terminate it so the next record starts on its own line
                os.write(fd, b"\n")
                size += 1
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._size = size
        self._checked_size = size
        self._torn = False

    def _close_fd_locked(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError as exc:
                log.debug("log %s: close: %s", self.path, exc)
            self._fd = None

    def _rotate_locked(self) -> None:
        self._close_fd_locked()
        base = str(self.path)
        if os.path.isdir(base):  # something else took the path: never rotate it away as if it were a log
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), base)
        if self.backups == 0:
            try:
                os.unlink(base)
            except FileNotFoundError:
                pass
        else:
            for i in range(self.backups - 1, 0, -1):
                src = f"{base}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{base}.{i + 1}")
            if os.path.exists(base):
                os.replace(base, f"{base}.1")
        self._rotations += 1
        self._open_locked()


def _ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


# ---------------------------------------------------------------------------------------------
# storage checks
# ---------------------------------------------------------------------------------------------
def _storage_hint(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free space on that file system or set logs.dir to another one"
    if code == errno.EFBIG:
        return "raise the file-size limit (ulimit -f, LimitFSIZE= in the unit) or lower logs.max_bytes"
    if code in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return "remove what is in the way or set logs.dir"
    if code == errno.EROFS:
        return "the file system is read-only: set logs.dir to a writable one"
    return ("set logs.dir or fix the permissions (the service user must own it; "
            "systemd's LogsDirectory=edged creates /var/log/edged for it)")


def ensure_writable_dir(path: PathLike, files: Sequence[str] = ("decisions.jsonl", "power.jsonl")) -> None:
    """Create the log directory if missing and prove it is writable, or raise :class:`LogStorageError`.

    Proof: a probe file is created (``O_EXCL``), one byte is written to it and it is removed; each
    of ``files`` that already exists is opened for appending (a root-owned ``decisions.jsonl`` left by
    an earlier run fails here, not at the first record). The message names the path, the errno
    name and what to do, e.g. ``logs dir /var/log/edged is not writable: Permission denied
    (EACCES); set logs.dir or fix the permissions ...``.
    """
    d = Path(path)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LogStorageError(f"logs dir {d} cannot be created or reached: {describe_os_error(exc)}; "
                              f"{_storage_hint(exc)}") from exc
    if not d.is_dir():
        raise LogStorageError(f"logs dir {d} is not a directory; set logs.dir to a directory")
    probe = d / f".edged-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)
            os.unlink(probe)
    except FileExistsError:  # a probe left by a killed process with our pid: remove it and retry once
        try:
            os.unlink(probe)
        except OSError:
            pass
        return ensure_writable_dir(path, files)
    except OSError as exc:
        raise LogStorageError(f"logs dir {d} is not writable: {describe_os_error(exc)}; "
                              f"{_storage_hint(exc)}") from exc
    for name in files:
        f = d / name
        if not os.path.lexists(f):
            continue
        try:
            fd = os.open(f, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
            os.close(fd)
        except OSError as exc:
            raise LogStorageError(f"log file {f} is not writable: {describe_os_error(exc)}; "
                                  f"{_storage_hint(exc)}") from exc
    return None


def make_sink(writer: JsonlWriter) -> Callable[[Record], None]:
    """The writer's ``write`` as a plain callable (for ``Dispatcher(sink=...)``, ``PowerSampler(sink=...)``)."""
    return writer.write
