"""JSON-lines logs: the line-atomic writer with rotation, the tolerant reader, operational logging.

Writer (:class:`JsonlWriter`): every record is encoded with the real :mod:`json` encoder (numpy
scalars/arrays become numbers/lists, NaN/inf become ``null``, anything else its ``repr``) and
written with ONE ``os.write`` of the whole line including ``\\n`` on an ``O_APPEND`` descriptor,
under a lock. A crash (kill -9, power cut) can therefore tear at most the line being written; on
the next open the writer terminates such a torn tail with ``\\n`` so it never swallows the next
record. Size-based rotation renames ``decisions.jsonl`` → ``.1`` → ``.2`` … under the same lock,
so no line is lost or split across files. :meth:`JsonlWriter.reopen` (the daemon calls it on
SIGHUP) closes and reopens the same path, so ``logrotate`` can rename the file without
``copytruncate``. A write error (disk full, …) is counted and logged once per outage; it is never
raised into the caller's thread.

Reader (:func:`iter_records`, :class:`LogReader`, :func:`read_records`): yields one dict per
complete line, skips and counts unparsable lines and a torn last line (without a trailing
newline), and in follow mode continues across rotation (the path now names a new inode: the old
file is drained first), across a SIGHUP reopen and across truncation.

Operational messages (:func:`setup_logging`) go to journald with structured fields when
systemd-python is importable and the process runs under journald, else to stderr (which journald
captures for a service). ``journal.send`` fails *silently* without a running journald, so the
decision and power records are always written to the JSON-lines files, never only to the journal.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import glob
import gzip
import importlib
import json
import logging
import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

log = logging.getLogger("edged.logs")

Record = Dict[str, Any]
PathLike = Union[str, "os.PathLike[str]"]

#: default rotation threshold of :class:`JsonlWriter` (bytes)
DEFAULT_MAX_BYTES = 50_000_000
#: default number of rotated files kept (``.1`` … ``.5``)
DEFAULT_BACKUPS = 5
#: how deep nested containers are encoded before the rest becomes its ``repr``
_MAX_DEPTH = 32
_READ_CHUNK = 1 << 16


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


def encode_record(record: Any) -> bytes:
    """One JSON line (UTF-8, ASCII-escaped, ending in ``\\n``) for ``record``. Never raises.

    Fast path: the stock encoder with :func:`_json_default`. If that fails (NaN/inf, odd keys,
    a circular reference, a failing ``default``), the record is sanitised first.
    """
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
    """Thread-safe, line-atomic JSON-lines writer with size-based rotation and SIGHUP reopen.

    Args:
        path: the log file (its directory is created if missing).
        max_bytes: rotate before a line would make the file larger than this (bytes);
            ``0``/``None`` disables the built-in rotation (e.g. when logrotate owns it).
        backups: rotated files kept (``path.1`` newest … ``path.<backups>`` oldest); with 0 the
            full file is deleted at rotation.
        fsync: ``os.fsync`` after every line (survives power loss; costs one flush per record).
        mode: permission bits for a created file.

    Invariants: one ``os.write`` per line on an ``O_APPEND`` fd; rotation happens between lines
    under the same lock as writes, so each line lives whole in exactly one file.
    """

    def __init__(self, path: PathLike, max_bytes: Optional[int] = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS, fsync: bool = False, mode: int = 0o644) -> None:
        if backups < 0:
            raise ValueError(f"backups {backups!r}: must be >= 0")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes {max_bytes!r}: must be >= 0 (0 disables rotation)")
        self.path = Path(path)
        self.max_bytes = int(max_bytes or 0)
        self.backups = int(backups)
        self.fsync = bool(fsync)
        self.mode = mode
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self._size = 0
        self._closed = False
        self._failing = False
        self._torn = False  # a partial write left an unterminated line behind
        self._lines = 0
        self._bytes = 0
        self._rotations = 0
        self._reopens = 0
        self._errors = 0
        self._last_error: Optional[str] = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            try:
                self._open_locked()
            except OSError as exc:  # e.g. a read-only dir: counted; every write retries the open
                self._on_error_locked(exc, "opening")

    # -- public ---------------------------------------------------------------------------------
    def write(self, record: Record) -> None:
        """Encode and append one record as one line. Never raises (errors are counted)."""
        data = encode_record(record)
        with self._lock:
            if self._closed:
                self._on_error_locked(ValueError("write after close"), "writing")
                return
            try:
                if self._fd is None:
                    self._open_locked()
                if self.max_bytes and self._size > 0 and self._size + len(data) > self.max_bytes:
                    self._rotate_locked()
                self._write_locked(data)
            except OSError as exc:
                self._on_error_locked(exc, "writing")
                return
            self._lines += 1
            self._bytes += len(data)
            if self._failing:
                self._failing = False
                log.warning("log %s: writing again after %d failed records", self.path, self._errors)

    def write_many(self, records: List[Record]) -> None:
        """Append several records with as few ``os.write`` calls as rotation allows. Never raises.

        Lines are grouped into one write up to the rotation limit, so every line still lands whole
        in exactly one file; a crash can tear at most the last line of the group being written.
        """
        if not records:
            return
        lines = [encode_record(r) for r in records]
        with self._lock:
            if self._closed:
                self._on_error_locked(ValueError("write after close"), "writing")
                return
            i = 0
            while i < len(lines):
                group: List[bytes] = []
                size = 0
                try:
                    if self._fd is None:
                        self._open_locked()
                    if self.max_bytes and self._size > 0 and self._size + len(lines[i]) > self.max_bytes:
                        self._rotate_locked()
                    room = (self.max_bytes - self._size) if self.max_bytes else None
                    while i < len(lines) and (not group or room is None or size + len(lines[i]) <= room):
                        group.append(lines[i])
                        size += len(lines[i])
                        i += 1
                    self._write_locked(b"".join(group))
                except OSError as exc:
                    self._on_error_locked(exc, "writing")
                    return
                self._lines += len(group)
                self._bytes += size
            if self._failing:
                self._failing = False
                log.warning("log %s: writing again after %d failed records", self.path, self._errors)

    def __call__(self, record: Record) -> None:
        """Alias of :meth:`write`, so the writer can be passed as a ``sink``."""
        self.write(record)

    def reopen(self) -> None:
        """Close and reopen ``path`` (call on SIGHUP after logrotate renamed the file). Never raises."""
        with self._lock:
            if self._closed:
                return
            self._close_fd_locked()
            try:
                self._open_locked()
                self._reopens += 1
            except OSError as exc:
                self._on_error_locked(exc, "reopening")

    def flush(self) -> None:
        """``fsync`` the file (lines are already in the kernel after each write)."""
        with self._lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    log.debug("log %s: fsync: %s", self.path, exc)

    def close(self) -> None:
        """Flush and close; later writes are counted as errors. Idempotent."""
        with self._lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass
            self._close_fd_locked()
            self._closed = True

    def stats(self) -> Dict[str, Any]:
        """Counters: ``lines`` and ``bytes`` written, ``rotations``, ``reopens``, ``errors`` (records lost)."""
        with self._lock:
            return {"path": str(self.path), "lines": self._lines, "bytes": self._bytes,
                    "rotations": self._rotations, "reopens": self._reopens, "errors": self._errors,
                    "size": self._size, "last_error": self._last_error}

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals (caller holds the lock) ------------------------------------------------------
    def _open_locked(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), self.mode)
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
        self._torn = False

    def _close_fd_locked(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError as exc:
                log.debug("log %s: close: %s", self.path, exc)
            self._fd = None

    def _write_locked(self, data: bytes) -> None:
        assert self._fd is not None
        if self._torn:  # an earlier partial write: start a fresh line first
            os.write(self._fd, b"\n")
            self._size += 1
            self._torn = False
        view = memoryview(data)
        written = 0
        while written < len(data):
            try:
                n = os.write(self._fd, view[written:])
            except OSError:
                if written:
                    self._torn = True
                    self._size += written
                raise
            if n <= 0:  # pragma: no cover - regular files do not return 0
                self._torn = True
                self._size += written
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            written += n
        self._size += written
        if self.fsync:
            os.fsync(self._fd)

    def _rotate_locked(self) -> None:
        self._close_fd_locked()
        base = str(self.path)
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

    def _on_error_locked(self, exc: BaseException, what: str) -> None:
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if not self._failing:
            self._failing = True
            log.error("log %s: %s failed (%s); records are dropped and counted until it works again",
                      self.path, what, self._last_error)


def _ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


# ---------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ReadStats:
    """What a reader skipped: ``bad`` unparsable/non-object lines, ``torn`` unterminated last lines;
    ``records`` yielded, ``files`` opened (> 1 after following a rotation), ``truncations`` seen."""

    records: int = 0
    bad: int = 0
    torn: int = 0
    files: int = 0
    truncations: int = 0


def parse_line(line: bytes, stats: ReadStats) -> Optional[Record]:
    """The dict on one line, or None for a blank line; unparsable/non-object lines count as ``bad``."""
    line = line.strip()
    if not line:
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        stats.bad += 1
        return None
    if not isinstance(rec, dict):
        stats.bad += 1
        return None
    stats.records += 1
    return rec


class LogReader:
    """Incremental reader of one JSON-lines path (see :func:`iter_records` for the semantics).

    :meth:`read_available` returns the complete records appended since the last call and never
    blocks; the follow loop around it is the caller's (or :func:`iter_records`'). ``follow=True``
    keeps an unterminated last line buffered (the writer may be in the middle of it) and watches
    the path for rotation; ``follow=False`` treats it as torn at :meth:`finish`.
    """

    def __init__(self, path: PathLike, follow: bool = False, from_end: bool = False,
                 stats: Optional[ReadStats] = None) -> None:
        self.path = Path(path)
        self.follow = follow
        self.stats = stats if stats is not None else ReadStats()
        self._f: Optional[Any] = None
        self._ino: Optional[Tuple[int, int]] = None
        self._buf = b""
        self._skip_partial = False
        self._from_end = from_end
        self._open(at_end=from_end)

    def _open(self, at_end: bool = False) -> bool:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - held open across calls
        except FileNotFoundError:
            if not self.follow:
                raise
            return False
        st = os.fstat(f.fileno())
        self._f = f
        self._ino = (st.st_dev, st.st_ino)
        self._buf = b""
        self.stats.files += 1
        if at_end and st.st_size > 0:
            f.seek(st.st_size - 1)
            self._skip_partial = f.read(1) != b"\n"  # started inside a line: drop its rest
        return True

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _drain(self) -> List[Record]:
        """Read the open file to EOF and parse every complete line."""
        out: List[Record] = []
        if self._f is None:
            return out
        pos = self._f.tell()
        try:
            size = os.fstat(self._f.fileno()).st_size
        except OSError:
            size = pos
        if size < pos:  # truncated in place (copytruncate): start over
            self.stats.truncations += 1
            self._f.seek(0)
            self._buf = b""
            self._skip_partial = False
        while True:
            chunk = self._f.read(_READ_CHUNK)
            if not chunk:
                break
            data = self._buf + chunk
            lines = data.split(b"\n")
            self._buf = lines.pop()
            for line in lines:
                if self._skip_partial:
                    self._skip_partial = False
                    continue
                rec = self._parse(line)
                if rec is not None:
                    out.append(rec)
        return out

    def _parse(self, line: bytes) -> Optional[Record]:
        return parse_line(line, self.stats)

    def _path_identity(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_size

    def read_available(self) -> List[Record]:
        """Complete records available now; in follow mode switches to a new file after rotation."""
        if self._f is None and (not self.follow or not self._open()):
            return []
        out = self._drain()
        if not self.follow:
            return out
        ident = self._path_identity()
        if ident is None or (ident[0], ident[1]) == self._ino:
            return out
        # The path names another file now (rotated or recreated). A single writer only writes to the
        # new file after it stopped writing the old one, so once the new file has data, or the old
        # one is gone, draining the old file once more gets all of it.
        if ident[2] == 0:
            return out  # not yet written: the writer may still append to the old file (logrotate before HUP)
        out.extend(self._drain())
        if self._buf:
            self.stats.torn += 1
        out.extend(self._read_skipped_rotations())
        self.close()
        if self._open():
            out.extend(self._drain())
        return out

    def _read_skipped_rotations(self) -> List[Record]:
        """Records of rotated files newer than the one just finished (several rotations between two
        polls): found by the old file's inode among the rotated siblings, read whole, oldest first."""
        out: List[Record] = []
        files = log_files(self.path)[:-1] if self.path.exists() else log_files(self.path)
        idents = []
        for f in files:
            try:
                st = os.stat(f)
            except OSError:
                continue
            idents.append((f, (st.st_dev, st.st_ino)))
        names = [i for i, (_, ino) in enumerate(idents) if ino == self._ino]
        if not names:
            return out  # the old file is gone (out of backups): nothing to place it against
        for f, ino in idents[names[0] + 1:]:
            if f.endswith(".gz"):
                continue
            try:
                with open(f, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    if (st.st_dev, st.st_ino) != ino:
                        continue  # renamed again since the listing
                    data = fh.read()
            except OSError:
                continue
            self.stats.files += 1
            *lines, tail = data.split(b"\n")
            for line in lines:
                rec = parse_line(line, self.stats)
                if rec is not None:
                    out.append(rec)
            if tail.strip():
                self.stats.torn += 1
        return out

    def finish(self) -> None:
        """Count an unterminated last line as torn (end of a non-follow read) and close."""
        if self._buf.strip():
            self.stats.torn += 1
        self._buf = b""
        self.close()


def iter_records(path: PathLike, follow: bool = False, stop: Optional[threading.Event] = None,
                 poll_s: float = 0.2, from_end: bool = False,
                 stats: Optional[ReadStats] = None) -> Iterator[Record]:
    """Yield one dict per complete JSON line of ``path``.

    * a torn last line (no trailing ``\\n``): without ``follow`` it is skipped and counted in
      ``stats.torn``; with ``follow`` the reader waits for the rest of it;
    * unparsable lines and lines that are not JSON objects are skipped and counted (``stats.bad``);
    * ``follow``: polls every ``poll_s`` s until ``stop`` is set (forever without ``stop``); waits
      for a missing file to appear; follows rotation (the path names a new inode: the old file is
      finished first), SIGHUP-style reopen and in-place truncation;
    * ``from_end``: start at the current end of the file (only new records).

    Without ``follow`` a missing file raises :class:`FileNotFoundError`.
    """
    reader = LogReader(path, follow=follow, from_end=from_end, stats=stats)
    try:
        while True:
            batch = reader.read_available()
            yield from batch
            if not follow:
                reader.finish()
                return
            if stop is not None and stop.is_set():
                return
            if not batch:
                if stop is not None:
                    if stop.wait(poll_s):
                        return
                else:
                    time.sleep(poll_s)
    finally:
        reader.close()


def _rotation_key(path: str) -> Tuple[float, int]:
    """Sort key for rotated files, oldest first.

    A logrotate name with an epoch (``-%Y%m%d-%s``: the rotation time) uses it, since compressing
    resets a ``.gz`` file's mtime; otherwise the mtime (the last write); then a higher ``.N`` is older.
    """
    name = os.path.basename(path)
    epoch = re.search(r"-(\d{10})(?:\.gz)?$", name)
    if epoch:
        when = float(epoch.group(1))
    else:
        try:
            when = os.stat(path).st_mtime
        except OSError:
            when = 0.0
    m = re.search(r"\.(\d+)(?:\.gz)?$", name)
    return when, -(int(m.group(1)) if m else 0)


def log_files(path: PathLike) -> List[str]:
    """``path``'s rotated files (ours ``.1``…, logrotate's ``-DATE``, optionally ``.gz``), oldest first,
    then ``path`` itself if it exists."""
    base = os.fspath(path)
    backups = [p for p in glob.glob(glob.escape(base) + "[.-]*") if p != base and _is_rotation_of(p, base)]
    backups.sort(key=_rotation_key)
    return backups + ([base] if os.path.exists(base) else [])


def _is_rotation_of(candidate: str, base: str) -> bool:
    rest = candidate[len(base):]
    return bool(re.fullmatch(r"(?:[.-][0-9]+)+(?:\.gz)?", rest))


def read_records(path_or_dir_glob: PathLike, stats: Optional[ReadStats] = None,
                 name: str = "decisions.jsonl") -> List[Record]:
    """All records of a log, oldest first, across its rotated files (plain or ``.gz``).

    ``path_or_dir_glob``: a log file (its rotated siblings are included), a directory (``name``
    inside it), or a glob pattern (every match, grouped per log, each log oldest first).
    Torn and unparsable lines are skipped and counted in ``stats``.
    """
    st = stats if stats is not None else ReadStats()
    spec = os.fspath(path_or_dir_glob)
    if os.path.isdir(spec):
        files = log_files(os.path.join(spec, name))
    elif glob.has_magic(spec):
        bases = sorted({_base_of(m) for m in glob.glob(spec)})
        files = [f for b in bases for f in log_files(b)]
    else:
        files = log_files(spec)
        if not files:
            raise FileNotFoundError(spec)
    out: List[Record] = []
    for f in files:
        out.extend(_read_file(f, st))
    return out


def _base_of(path: str) -> str:
    m = re.match(r"^(.+?\.jsonl)(?:[.-][0-9]+)*(?:\.gz)?$", path)
    return m.group(1) if m else path


def _read_file(path: str, stats: ReadStats) -> List[Record]:
    if path.endswith(".gz"):
        out: List[Record] = []
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (OSError, EOFError) as exc:  # a half-written .gz: count it and go on
            log.warning("skipping %s: %s", path, exc)
            stats.bad += 1
            return out
        stats.files += 1
        *lines, tail = data.split(b"\n")
        for line in lines:
            rec = parse_line(line, stats)
            if rec is not None:
                out.append(rec)
        if tail.strip():
            stats.torn += 1
        return out
    r = LogReader(path, follow=False, stats=stats)
    try:
        return r.read_available()
    finally:
        r.finish()


def default_log_dir() -> Path:
    """Where the logs are: ``$LOGS_DIRECTORY`` (set by systemd's ``LogsDirectory=``), else
    ``~/.local/state/edged/logs`` if it exists, else ``/var/log/edged`` if it exists (the service),
    else ``~/.local/state/edged/logs``."""
    env = os.environ.get("LOGS_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    user = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "edged" / "logs"
    if user.is_dir():
        return user
    service = Path("/var/log/edged")
    if service.is_dir():
        return service
    return user


# ---------------------------------------------------------------------------------------------
# operational logging
# ---------------------------------------------------------------------------------------------
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


def make_sink(writer: JsonlWriter) -> Callable[[Record], None]:
    """The writer's ``write`` as a plain callable (for ``Dispatcher(sink=...)``, ``PowerSampler(sink=...)``)."""
    return writer.write
