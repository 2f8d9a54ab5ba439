"""edged.logs under real storage faults: RLIMIT_FSIZE (EFBIG), a full tmpfs (ENOSPC), a file replaced by a
directory (EISDIR on reopen), a removed directory, a read-only file system; ensure_writable_dir; stats.json.

Invariant checked everywhere: every record is in exactly one of the file (``written``), the in-memory spool
(``spooled``) or the loss counter (``lost``), the file holds only complete lines, and after recovery the
spool is in the file in the order the records were written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from edged.errors import LogStorageError
from edged.logs import JsonlWriter, ensure_writable_dir, read_stats_file, write_stats_file

PAD = "x" * 100


def _file_seqs(path: Path) -> List[int]:
    """The seq of every line; asserts the file holds only complete JSON lines."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends with a torn line: {data[-40:]!r}"
    return [json.loads(line)["seq"] for line in data.splitlines()]


def _accounted(st: Dict[str, Any]) -> int:
    return int(st["written"] + st["spooled"] + st["lost"])


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, *opts: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    options = ",".join((f"size={size}", *opts))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root in a permissive container")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _remount(where: Path, *opts: str) -> None:
    subprocess.run(["mount", "-o", ",".join(("remount", *opts)), str(where)], check=True, capture_output=True)


# ---------------------------------------------------------------------------------------------
# RLIMIT_FSIZE: EFBIG (with SIGXFSZ ignored, as the daemon does)
# ---------------------------------------------------------------------------------------------
_FSIZE_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from edged.logs import JsonlWriter
    path, n, spool, limit, ignore = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    # CPython already ignores SIGXFSZ at start-up (as it does SIGPIPE); the daemon sets it again explicitly
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN if ignore == "ignore" else signal.SIG_DFL)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    w = JsonlWriter(path, max_bytes=0, spool_records=spool)
    pad = "x" * 100
    i = 0
    while i < n:  # single records and batches, as the dispatcher writes them
        if i % 3 == 0:
            batch = [{"seq": j, "pad": pad} for j in range(i, min(n, i + 7))]
            w.write_many(batch)
            i += len(batch)
        else:
            w.write({"seq": i, "pad": pad})
            i += 1
    faulted = w.stats()
    retry_while_broken = w.retry(force=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the operator fixes it
    recovered = w.retry(force=True)
    after = w.stats()
    w.write({"seq": n, "pad": pad})
    w.close()
    print(json.dumps({"faulted": faulted, "retry_while_broken": retry_while_broken, "recovered": recovered,
                      "after": after, "closed": w.stats()}))
""")


@pytest.mark.timeout(60)
def test_rlimit_fsize_spools_counts_and_recovers_in_order(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    n, spool, limit = 2000, 300, 64 * 1024
    out = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(path), str(n), str(spool), str(limit), "ignore"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    faulted = res["faulted"]
    assert faulted["degraded"] is True and "EFBIG" in faulted["last_error"]
    assert _accounted(faulted) == n  # written + spooled + lost == N exactly
    assert faulted["spooled"] == spool and faulted["lost"] == n - faulted["written"] - spool
    assert 0 < faulted["written"] * 120 <= limit
    assert res["retry_while_broken"] is False
    assert res["recovered"] is True
    after = res["after"]
    assert after["degraded"] is False and after["spooled"] == 0 and after["since"] is None
    assert after["written"] == faulted["written"] + spool and after["lost"] == faulted["lost"]
    closed = res["closed"]
    assert closed["written"] == after["written"] + 1 and closed["lost"] == faulted["lost"]
    # the file: the records written before the fault, then the spool in order (the oldest kept), then the new one
    assert _file_seqs(path) == list(range(after["written"])) + [n]
    errs = out.stderr.splitlines()
    assert sum("records wait in memory" in e for e in errs) == 1  # one error when degraded begins
    assert sum("spool full" in e for e in errs) == 1
    assert sum("writing again after" in e and f"{spool} record(s) kept in memory were written" in e
               and f"{faulted['lost']} lost" in e for e in errs) == 1


@pytest.mark.timeout(60)
def test_rlimit_fsize_without_ignoring_sigxfsz_kills_the_process(tmp_path: Path) -> None:
    """Why SIGXFSZ must stay ignored (CPython's default, which the daemon re-asserts): with the default action
    the kernel kills the process at the limit instead of returning EFBIG."""
    path = tmp_path / "decisions.jsonl"
    out = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(path), "2000", "100", str(16 * 1024), "default"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGXFSZ


# ---------------------------------------------------------------------------------------------
# a full file system (tmpfs): ENOSPC
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_full_tmpfs_spools_then_recovers_in_order_after_space_is_freed(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    with _tmpfs(tmp_path / "fs", "64k") as fs:
        path = fs / "decisions.jsonl"
        w = JsonlWriter(path, max_bytes=0, spool_records=5000)
        n = 1500  # ~180 KB: about a third fits
        with caplog.at_level(logging.WARNING, logger="edged.logs"):
            for i in range(n):
                w.write({"seq": i, "pad": PAD})
            st = w.stats()
            assert st["degraded"] and "ENOSPC" in st["last_error"]
            assert st["lost"] == 0 and st["written"] + st["spooled"] == n and st["written"] > 0
            assert _file_seqs(path) == list(range(st["written"]))  # complete lines only, no torn tail
            waiting = st["spooled"]
            assert w.retry(force=True) is False  # still full
            _remount(fs, "size=1m")  # the operator frees space
            assert w.retry(force=True) is True
        st = w.stats()
        assert st["written"] == n and st["spooled"] == 0 and st["lost"] == 0 and not st["degraded"]
        assert _file_seqs(path) == list(range(n))
        assert st["recoveries"] == 1
        assert w.close() == 0
        msgs = [r.getMessage() for r in caplog.records]
        assert sum("No space left on device (ENOSPC)" in m and "records wait in memory" in m for m in msgs) == 1
        assert any("writing again" in m and f"{waiting} record(s) kept in memory were written, 0 lost" in m for m in msgs)


@pytest.mark.timeout(60)
def test_ensure_writable_dir_on_a_full_and_a_read_only_file_system(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "full", "16k") as fs:
        fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
        os.close(fd)
        with pytest.raises(LogStorageError) as exc:
            ensure_writable_dir(fs)
        msg = str(exc.value)
        assert f"logs dir {fs} is not writable" in msg and "(ENOSPC)" in msg and "free space" in msg
        assert not [p for p in os.listdir(fs) if p != "filler"]  # the probe is not left behind
    with _tmpfs(tmp_path / "ro", "16k", "ro") as fs:
        with pytest.raises(LogStorageError) as exc:
            ensure_writable_dir(fs)
        assert f"logs dir {fs} is not writable" in str(exc.value) and "(EROFS)" in str(exc.value)
        with pytest.raises(LogStorageError) as exc:
            ensure_writable_dir(fs / "edged")  # cannot even create it
        assert f"logs dir {fs / 'edged'} cannot be created or reached" in str(exc.value) and "(EROFS)" in str(exc.value)


# ---------------------------------------------------------------------------------------------
# reopen failures, a removed directory, the spool bound
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_reopen_onto_a_directory_spools_until_the_path_is_usable_again(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    w = JsonlWriter(path, max_bytes=0, spool_records=100)
    for i in range(5):
        w.write({"seq": i})
    os.replace(path, tmp_path / "decisions.jsonl.1")  # logrotate renames ...
    path.mkdir()  # ... and something else now sits at the path
    w.reopen()  # SIGHUP
    st = w.stats()
    assert st["degraded"] and "EISDIR" in st["last_error"] and st["since"] is not None
    w.write_many([{"seq": i} for i in range(5, 25)])
    assert w.retry(force=True) is False
    st = w.stats()
    assert (st["written"], st["spooled"], st["lost"]) == (5, 20, 0)
    path.rmdir()
    assert w.retry(force=True) is True
    w.write({"seq": 25})
    w.close()
    assert _file_seqs(tmp_path / "decisions.jsonl.1") == list(range(5))
    assert _file_seqs(path) == list(range(5, 26))
    assert w.stats()["written"] == 26 and w.stats()["lost"] == 0


def test_rotation_never_renames_a_directory_that_took_the_logs_path(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    w = JsonlWriter(path, max_bytes=1_000, backups=3, spool_records=100)
    w.write({"seq": 0, "pad": PAD})
    os.replace(path, tmp_path / "elsewhere")
    path.mkdir()
    (path / "keep").write_text("someone's data")
    for i in range(1, 20):  # the rotation that comes due fails with EISDIR instead of moving the directory
        w.write({"seq": i, "pad": PAD})
    st = w.stats()
    assert st["degraded"] and "EISDIR" in st["last_error"] and st["written"] + st["spooled"] == 20
    assert (path / "keep").read_text() == "someone's data" and not (tmp_path / "decisions.jsonl.1").exists()
    w.close()


@pytest.mark.timeout(60)
def test_removed_directory_is_recreated_with_the_lines_written_since_the_last_check(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    path = d / "decisions.jsonl"
    w = JsonlWriter(path, max_bytes=0)
    for i in range(3):
        w.write({"seq": i})
    assert w.retry() is True  # a healthy tick: the file is known to be linked up to here
    shutil.rmtree(d)  # e.g. a tmpfiles clean-up
    for i in range(3, 13):
        w.write({"seq": i})  # land in the deleted inode
    assert w.retry() is True
    assert _file_seqs(path) == list(range(3, 13))
    w.write({"seq": 13})
    w.close()
    assert _file_seqs(path) == list(range(3, 14))
    # 14 written: 3 before the deletion (removed by whoever deleted the directory), 11 in the recreated file
    assert w.stats()["written"] == 14 and w.stats()["lost"] == 0 and w.stats()["reopens"] == 1


@pytest.mark.timeout(60)
def test_spool_bound_keeps_the_oldest_and_close_counts_the_rest_as_lost(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.mkdir()  # unopenable from the start
    w = JsonlWriter(path, max_bytes=0, spool_records=10)
    assert w.stats()["degraded"]
    for i in range(25):
        w.write({"seq": i})
    st = w.stats()
    assert (st["written"], st["spooled"], st["lost"], st["errors"]) == (0, 10, 15, 25)
    assert w.close(timeout_s=0.3) == 25  # retried until the timeout, then counted
    st = w.stats()
    assert (st["written"], st["spooled"], st["lost"]) == (0, 0, 25) and st["retries"] >= 1
    w.write({"seq": 99})
    assert w.stats()["lost"] == 26


@pytest.mark.timeout(60)
def test_close_flushes_the_spool_when_the_fault_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.mkdir()
    w = JsonlWriter(path, max_bytes=0, spool_records=100)
    w.write_many([{"seq": i} for i in range(30)])
    path.rmdir()
    assert w.close() == 0
    assert _file_seqs(path) == list(range(30))
    assert w.stats()["written"] == 30 and w.stats()["spooled"] == 0


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_retries_back_off_exponentially_and_never_in_the_callers_write(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.mkdir()
    clock = FakeClock()
    w = JsonlWriter(path, max_bytes=0, retry_min_s=0.125, retry_max_s=1.0, clock=clock)  # binary fractions: exact
    assert w.stats()["since"] == 1000.0 and w.stats()["degraded_for_s"] == 0.0
    for i in range(50):
        w.write({"seq": i})  # no time passes: no retry attempt on the hot path
    assert w.stats()["retries"] == 0
    waits = []
    for _ in range(6):
        before = w.stats()["retries"]
        step = 0
        while w.stats()["retries"] == before:
            clock.t += 0.0625
            step += 1
            w.retry()
        waits.append(step * 0.0625)
    assert waits == [0.125, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert w.stats()["degraded_for_s"] == clock.t - 1000.0
    path.rmdir()
    clock.t += 1.0
    w.write({"seq": 50})  # the due retry happens in this write: spool first, then the new record
    assert not w.stats()["degraded"] and w.stats()["degraded_for_s"] is None
    w.close()
    assert _file_seqs(path) == list(range(51))


def test_concurrent_writers_during_a_fault_account_for_every_record(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    w = JsonlWriter(path, max_bytes=0, spool_records=100_000)  # no rotation: it could race the break below
    n_threads, per_thread = 4, 800
    broken = threading.Event()

    def work(t: int) -> None:
        for i in range(per_thread):
            w.write({"seq": t * per_thread + i, "pad": PAD})
            if t == 0 and i == 200:
                os.replace(path, str(path) + ".moved")
                path.mkdir()  # the next rotation / reopen fails with EISDIR
                w.reopen()
                broken.set()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert broken.is_set()
    st = w.stats()
    assert st["degraded"] and _accounted(st) == n_threads * per_thread and st["lost"] == 0
    path.rmdir()
    assert w.close() == 0
    seqs: List[int] = []
    for f in sorted(tmp_path.iterdir()):
        if f.is_file():
            seqs.extend(_file_seqs(f))
    assert sorted(seqs) == list(range(n_threads * per_thread))  # each record exactly once
    assert w.stats()["written"] == n_threads * per_thread


# ---------------------------------------------------------------------------------------------
# ensure_writable_dir, stats.json
# ---------------------------------------------------------------------------------------------
def test_ensure_writable_dir_creates_checks_and_names_the_problem(tmp_path: Path) -> None:
    d = tmp_path / "a" / "logs"
    ensure_writable_dir(d)
    assert d.is_dir() and list(d.iterdir()) == []
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(LogStorageError, match=f"logs dir {f}"):
        ensure_writable_dir(f)
    (d / "decisions.jsonl").mkdir()  # an existing log that cannot be appended to
    with pytest.raises(LogStorageError) as exc:
        ensure_writable_dir(d)
    assert f"log file {d / 'decisions.jsonl'} is not writable" in str(exc.value) and "(EISDIR)" in str(exc.value)


_DROP_PRIVILEGES = textwrap.dedent("""
    import os, sys
    from edged.errors import LogStorageError
    from edged.logs import ensure_writable_dir
    os.setgid(65534); os.setuid(65534)  # the service user, not root (root ignores the mode bits)
    try:
        ensure_writable_dir(sys.argv[1])
    except LogStorageError as exc:
        print(exc); sys.exit(1)
""")


@pytest.mark.timeout(60)
def test_ensure_writable_dir_as_an_unprivileged_user_names_eacces(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="edged-eacces-", dir="/tmp"))  # pytest's tmp root is 0700: not reachable
    base.chmod(0o755)
    d = base / "logs"
    d.mkdir(mode=0o755)
    try:
        _check_eacces(d)
    finally:
        shutil.rmtree(base)


def _check_eacces(d: Path) -> None:
    if os.geteuid() != 0:
        d.chmod(0o500)
        with pytest.raises(LogStorageError) as exc:
            ensure_writable_dir(d)
        msg = str(exc.value)
    else:
        out = subprocess.run([sys.executable, "-c", _DROP_PRIVILEGES, str(d)], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 1, out.stderr
        msg = out.stdout.strip()
    assert msg.startswith(f"logs dir {d} is not writable: Permission denied (EACCES); set logs.dir or fix the permissions")


def test_write_stats_file_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: List[int] = []
    bad: List[str] = []
    write_stats_file(tmp_path, {"n": -1})

    def read() -> None:
        while not stop.is_set():
            obj = read_stats_file(tmp_path)
            if obj is None:
                bad.append("unreadable")
            else:
                seen.append(obj["n"])

    t = threading.Thread(target=read)
    t.start()
    try:
        for i in range(400):
            assert write_stats_file(tmp_path, {"n": i, "pad": "y" * 20_000, "nan": float("nan")})
    finally:
        stop.set()
        t.join(10)
    assert not bad and seen
    assert read_stats_file(tmp_path) == {"n": 399, "pad": "y" * 20_000, "nan": None}
    assert sorted(os.listdir(tmp_path)) == ["stats.json"]  # no temporary files left
    assert write_stats_file(tmp_path / "missing", {"n": 1}) is False  # never raises
    assert read_stats_file(tmp_path / "missing") is None
