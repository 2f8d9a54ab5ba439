"""The tolerant JSON-lines reader: :func:`iter_records`, :class:`LogReader`, :func:`read_records`.

Yields one dict per complete line, skips and counts unparsable lines and a torn last line (without
a trailing newline), and in follow mode continues across rotation (the path now names a new inode:
the old file is drained first), across a SIGHUP reopen and across truncation. Rotated files
(``.1``…, logrotate's ``-DATE``, optionally ``.gz``) are read oldest first.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

log = logging.getLogger("edged.logs")

Record = Dict[str, Any]
PathLike = Union[str, "os.PathLike[str]"]

_READ_CHUNK = 1 << 16


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
